"""What a comparison reports: the noise band's seed minimum, costs without
compilation and the assignment confidence keys (synthetic scores, no
training unless stated)."""

import types

import numpy as np
import pytest

from tgjax.compare import (
    BAND_NOTE,
    CompareConfig,
    _oracle,
    _paired,
    _summarise,
    render_markdown,
)
from tgjax.partitions import partitions

NAMES = ["a", "b", "c"]


def _scores(val):
    val = np.asarray(val, np.float64)
    return types.SimpleNamespace(val_total=val, test_total=val + 0.1)


def _oracle_of(val):  # val: [partitions, seeds]
    parts = partitions(3, 2)
    cc = CompareConfig(
        groups=2, epochs=1, seeds=tuple(range(val.shape[1])), methods=("exhaustive",)
    )
    return _oracle(parts, [_scores(v) for v in val.T], cc, NAMES), cc


def test_two_seeds_give_ranks_but_no_noise_band():
    # Partition 3 is the worst on average, and with two seeds its paired
    # standard error is so large that it would be "in the band" while the
    # better-ranked partition 2 would not.
    val = np.array([[1.0, 1.0], [1.1, 1.1], [1.3, 1.3], [0.9, 2.0]])
    oracle, cc = _oracle_of(val)
    assert "noise_band_count" not in oracle["at_most_k"]
    assert oracle["bands"] == {}
    assert all("in_noise_band" not in p for p in oracle["partitions"])
    assert [p["rank"] for p in oracle["partitions"]] == [1, 2, 3, 4]
    summary = _summarise([], oracle, cc, NAMES)
    assert summary["oracle"]["noise_band_note"] == BAND_NOTE
    md = render_markdown(
        {
            "settings": {
                "dataset": "toy",
                "tasks": NAMES,
                "groups": 2,
                "epochs": 1,
                "steps_per_epoch": 1,
                "seeds": [0, 1],
                "oneshot_seeds": [0, 1],
                "settle_threshold": 0.9,
            },
            "summary": summary,
        }
    )
    assert "need at least 3 seeds" in md


def test_three_seeds_give_the_noise_band():
    val = np.array([[1.0, 1.0, 1.0], [1.1, 1.1, 1.12], [1.3, 1.3, 1.3], [0, 2, 3.0]])
    oracle, cc = _oracle_of(val)
    assert oracle["at_most_k"]["noise_band_count"] >= 1
    assert isinstance(oracle["partitions"][0]["in_noise_band"], bool)
    assert "noise_band_note" not in _summarise([], oracle, cc, NAMES)["oracle"]


def test_paired_verdict_needs_three_seeds():
    recs = [
        {"method": m, "seed": s, "val_total": v}
        for m, vals in (("x", [1.0, 1.5, 1.2]), ("y", [2.0, 2.6, 2.1]))
        for s, v in enumerate(vals)
    ]
    two = _paired([r for r in recs if r["seed"] < 2], "x", "y")
    assert two["verdict"].startswith("not judged") and two["seeds"] == 2
    assert _paired(recs, "x", "y")["verdict"] == "x better"


def test_assignment_confidence_keys_are_named_for_what_they_are():
    cc = CompareConfig(groups=2, epochs=1, seeds=(0, 1), methods=("dmtg",))
    recs = [
        {
            "method": "dmtg",
            "seed": s,
            "groups": [["a", "b"], ["c"]],
            "num_groups": 2,
            "val_total": 1.0,
            "test_total": 1.0,
            "test_metric_total": 1.0,
            "train_steps": 2,
            "branch_steps": 4,
            "wall_seconds": 0.1,
            "run_seconds": 0.1,
            "compile_seconds": 0.0,
            "search_epochs": 1,
            "assignment_confidence_mean": mean,
            "assignment_confidence_min": lo,
        }
        for s, (mean, lo) in enumerate([(0.8, 0.6), (0.9, 0.7)])
    ]
    m = _summarise(recs, None, cc, NAMES)["methods"]["dmtg"]
    assert m["assignment_confidence_mean"]["mean"] == pytest.approx(0.85)
    assert m["assignment_confidence_min"]["mean"] == pytest.approx(0.65)
    assert "assignment_confidence" not in m


def test_compile_time_is_reported_apart_from_run_time():
    # Training in a program of a new shape compiles; the same grouping again
    # reuses it. Run seconds exclude the compilation either way.
    from tgjax.config import RunConfig
    from tgjax.data import load_dataset
    from tgjax.grouptrain import GroupingTrainer

    data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
    tr = GroupingTrainer(data, RunConfig(hidden=(5,)), epochs=1)
    first = tr.run([[(0, 1)]], seed=0)
    again = tr.run([[(0, 1)]], seed=1)
    assert first.compile_seconds[0] > 0.5 * first.wall_seconds[0]
    assert again.compile_seconds[0] == 0.0
    assert first.compile_seconds[0] <= first.wall_seconds[0]


def test_report_plots_costs_that_do_not_depend_on_method_order(tmp_path):
    import json

    from tgjax.report import summarize_records, write_report

    recs = [
        {
            "method": m,
            "seed": s,
            "groups": [["a", "b"]],
            "val_total": 1.0 + s,
            "test_total": 1.0,
            "train_steps": 10,
            "wall_seconds": wall,
            "compile_seconds": comp,
            "run_seconds": wall - comp,
        }
        for m, s, wall, comp in (
            ("stl", 0, 6.5, 6.4),
            ("stl", 1, 0.2, 0.0),
            ("mtl", 0, 0.1, 0.0),
            ("mtl", 1, 0.1, 0.0),
        )
    ]
    rows = {r["method"]: r for r in summarize_records(recs)}
    assert rows["stl"]["steps_mean"] == 10
    assert rows["stl"]["run_seconds_mean"] == pytest.approx(0.15)
    (tmp_path / "results.json").write_text(json.dumps({"records": recs}))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| run s | compile s | steps |" in md
    assert "run s is wall time without compilation" in md
