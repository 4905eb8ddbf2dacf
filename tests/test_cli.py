"""End-to-end runs of the command line on real data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tgjax import cli
from tgjax.checkpoint import load_checkpoint
from tgjax.config import RunConfig
from tgjax.runio import read_jsonl

SMALL = ["--epochs", "2", "--finetune-epochs", "1", "--hidden", "16", "--quiet"]


def test_train_on_yeast_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", "--groups", "3", "--out", str(out), *SMALL])
    assert rc == 0
    names = sorted(os.listdir(out))
    for expected in (
        "assignment.png",
        "checkpoint",
        "config.json",
        "groups.json",
        "metrics.jsonl",
        "results.json",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith(".tmp")]

    config = json.loads((out / "config.json").read_text())
    assert config["run"]["groups"] == 3
    assert config["run"]["tau"] == 2.5  # defaults are recorded too
    assert len(config["data"]["tasks"]) == 14

    groups = json.loads((out / "groups.json").read_text())
    assert len(groups["tasks"]) == 14
    assert sorted(sum(groups["groups"], [])) == sorted(groups["tasks"])
    assert all(0 <= g < 3 for g in groups["assignment"])
    probs = np.array(groups["probabilities"])
    assert probs.shape == (14, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # The groups are the argmax of the final probabilities.
    np.testing.assert_array_equal(probs.argmax(1), groups["assignment"])

    metrics = read_jsonl(out / "metrics.jsonl")
    logged = [m for m in metrics if "step" in m]
    assert logged and all(m["tau"] == 2.5 for m in logged)
    assert np.array(logged[-1]["probabilities"]).shape == (14, 3)

    results = json.loads((out / "results.json").read_text())
    test = results["test"]
    assert set(test["tasks"]) == set(groups["tasks"])
    assert 0 < test["total_error_percent"] < 14 * 100
    errs = [v["value"] for v in test["tasks"].values()]
    assert abs(sum(errs) - test["total_error_percent"]) < 1e-6

    with Image.open(out / "assignment.png") as img:
        assert img.format == "PNG" and img.size[0] > 200

    ckpt = load_checkpoint(out / "checkpoint")
    np.testing.assert_allclose(
        np.asarray(ckpt["search"]["assignment"]).argmax(1), groups["assignment"]
    )


@pytest.mark.parametrize("baseline,expected_groups", [("mtl", 1), ("stl", 5)])
def test_baselines_run_through_the_same_pipeline(tmp_path, baseline, expected_groups):
    out = tmp_path / baseline
    rc = cli.main(
        [
            "train",
            "--tasks",
            "Class1,Class2,Class3,Class4,Class5",
            "--baseline",
            baseline,
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    groups = json.loads((out / "groups.json").read_text())
    assert len(groups["groups"]) == expected_groups
    if baseline == "stl":
        assert groups["assignment"] == [0, 1, 2, 3, 4]


def test_digits_dataset_runs(tmp_path):
    rc = cli.main(
        [
            "train",
            "--dataset",
            "digits",
            "--groups",
            "2",
            "--out",
            str(tmp_path / "d"),
            *SMALL,
        ]
    )
    assert rc == 0


def test_existing_run_folder_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    rc = cli.main(["train", "--out", str(out), *SMALL])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_bad_settings_exit_cleanly_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--groups", "0", "--out", str(out), *SMALL])
    assert rc == 2
    err = capsys.readouterr().err
    assert "groups must be an integer >= 1" in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_config_key_names_the_closest_setting(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"learning_rte": 0.1}))
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        RunConfig.from_json(path)


def test_help_of_every_command_explains_itself():
    for args in (["--help"], ["train", "--help"], ["datasets", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tgjax", *args], capture_output=True, text=True
        )
        assert proc.returncode == 0
        assert "usage: tgjax" in proc.stdout
    assert (
        "--baseline"
        in subprocess.run(
            [sys.executable, "-m", "tgjax", "train", "--help"],
            capture_output=True,
            text=True,
        ).stdout
    )


def test_train_on_a_user_csv_with_missing_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4))
    lines = ["f1,f2,f3,f4,task:a,task:b,task:r"]
    for r in x:
        b = str(int(r[1] > 0)) if r[2] > -0.5 else ""
        lines.append(
            ",".join(f"{v:.4f}" for v in r) + f",{int(r[0] > 0)},{b},{r[3]:.3f}"
        )
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--data",
            str(path),
            "--groups",
            "2",
            "--batch-size",
            "32",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["tasks"]["r"]["metric"] == "mae"
    assert results["test"]["tasks"]["a"]["metric"] == "error_percent"
    # Missing labels of task b are not counted.
    assert (
        results["test"]["tasks"]["b"]["count"] < results["test"]["tasks"]["a"]["count"]
    )


def test_parity_preset_holds_the_reference_settings():
    from tgjax.config import PRESETS

    cfg = RunConfig.from_dict(PRESETS["celeba9-parity"])
    assert cfg.learning_rate == 8e-4 and cfg.assignment_learning_rate is None
    assert RunConfig().assignment_learning_rate == 0.03
    assert cfg.tau == 2.5 and cfg.tau_schedule == "constant"
    assert cfg.lr_halving_epochs == (15, 30, 45, 60, 75, 90)
    assert cfg.batch_size == 256 and cfg.epochs == 100 and cfg.branch == "celeba"


def test_cosine_tau_schedule_decays_to_its_floor_over_the_search(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--tasks",
            "Class1,Class2",
            "--groups",
            "2",
            "--tau",
            "4",
            "--tau-schedule",
            "cosine",
            "--tau-final",
            "0.5",
            "--log-every",
            "1",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    taus = [m["tau"] for m in read_jsonl(out / "metrics.jsonl") if "step" in m]
    assert taus[0] == 4.0
    assert all(a >= b for a, b in zip(taus[:-1], taus[1:], strict=True))
    assert abs(taus[-1] - 0.5) < 0.05


def test_a_config_file_overrides_only_the_settings_it_names(tmp_path):
    import argparse

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3}))
    args = cli.build_parser().parse_args(
        ["train", "--preset", "celeba9-parity", "--config", str(path)]
    )
    config = cli._config_from_args(args)
    assert isinstance(args, argparse.Namespace)
    assert config.epochs == 3  # from the file
    assert config.lr_halving_epochs == (15, 30, 45, 60, 75, 90)  # from the preset
    assert config.branch == "celeba"
