"""Grouping comparison: partitions, the multi-grouping trainer, TAG, statistics
and an end-to-end ``tgjax compare`` run."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tgjax import cli
from tgjax.baselines.tag import (
    group_scores,
    lookahead_affinity,
    search_kind,
    select_groups,
)
from tgjax.config import RunConfig
from tgjax.data import load_dataset
from tgjax.grouptrain import GroupingTrainer, membership
from tgjax.model import MLP, GroupedModel, prune
from tgjax.partitions import (
    bell,
    count_partitions,
    partition_from_names,
    partitions,
    stirling2,
)
from tgjax.pipeline import build_model, evaluate, make_pruned_epoch_fn
from tgjax.stats import (
    noise_band,
    rank_of,
    rankdata,
    seed_rank_correlation,
    spearman,
    wilson_interval,
)
from tgjax.tasks import Task, TaskCodes, task_losses

THREE = ["Class1", "Class2", "Class3"]


# Partitions.


def test_bell_and_stirling_numbers():
    assert [bell(n) for n in range(9)] == [1, 1, 2, 5, 15, 52, 203, 877, 4140]
    assert [stirling2(7, k) for k in range(8)] == [0, 1, 63, 301, 350, 140, 21, 1]
    assert stirling2(6, 3) == 90


@pytest.mark.parametrize("n", [1, 2, 4, 6, 7])
def test_partition_enumeration_counts_and_validity(n):
    for k in range(1, n + 1):
        parts = partitions(n, k)
        assert len(parts) == count_partitions(n, k)
        assert len(set(parts)) == len(parts)
        for p in parts:
            assert sorted(i for g in p for i in g) == list(range(n))
            assert len(p) <= k
        exact = partitions(n, exact=k)
        assert len(exact) == stirling2(n, k)
        assert all(len(p) == k for p in exact)
    assert len(partitions(n)) == bell(n)


def test_seven_tasks_into_at_most_three_groups():
    assert len(partitions(7, 3)) == 365
    assert len(partitions(7)) == 877


def test_partition_from_names_is_order_free_and_checks_coverage():
    names = ["a", "b", "c"]
    assert partition_from_names([["c"], ["b", "a"]], names) == ((0, 1), (2,))
    with pytest.raises(ValueError, match="cover"):
        partition_from_names([["a"], ["b"]], names)
    with pytest.raises(ValueError, match="overlap"):
        partition_from_names([["a", "b"], ["b", "c"]], names)


def test_membership_rejects_a_task_in_no_group():
    with pytest.raises(ValueError, match="no group"):
        membership([(0,)], 2, 1)


# The multi-grouping trainer.


@pytest.fixture(scope="module")
def yeast3():
    return load_dataset("yeast").select_tasks(THREE)


def test_vmapped_groupings_equal_one_grouping_alone(yeast3):
    config = RunConfig(hidden=(8,), batch_size=128)
    trainer = GroupingTrainer(yeast3, config, epochs=2)
    parts = partitions(3)
    together = trainer.run(parts, seed=3)
    for i in (1, 4):  # a two-group and the three-group partition
        alone = trainer.run([parts[i]], seed=3)
        np.testing.assert_allclose(
            alone.val_history[:, 0], together.val_history[:, i], rtol=2e-5
        )
    # Different groupings of one seed do train differently.
    assert np.ptp(together.val_history[-1]) > 1e-4


def test_trainer_matches_the_pruned_fine_tuning_epoch(yeast3):
    """One partition trained by the vmapped trainer equals the library's
    fine-tuning of the same pruned network, epoch by epoch."""
    config = RunConfig(hidden=(8,), batch_size=128, init="tied")
    part = ((0, 2), (1,))
    scores = GroupingTrainer(yeast3, config, epochs=2).run([part], seed=5)

    labels = np.array([0, 1, 0])
    model = build_model(config, yeast3.tasks, 2)
    k_init, k_data = jax.random.split(jax.random.key(5))
    x = jnp.asarray(yeast3.train.x)
    y = jnp.asarray(yeast3.train.y)
    params, state = model.init_variables(k_init, x[:2])
    params, state, _, task_branch = prune(params, state, labels)
    opt = optax.adam(config.learning_rate)
    epoch = make_pruned_epoch_fn(model, yeast3.tasks, opt, task_branch, 128)
    carry = (params, state, opt.init(params), jax.random.key(0))
    for e in range(2):
        carry, _ = epoch(carry, x, y, jax.random.fold_in(k_data, e))
        p, s = carry[0], carry[1]
        val = evaluate(
            lambda xb, p=p, s=s: model.apply_pruned(p, s, xb, task_branch)[0],
            yeast3.val.x,
            yeast3.val.y,
            yeast3,
        )
        np.testing.assert_allclose(
            scores.val_history[e, 0], val["total_loss"], rtol=2e-5
        )


def test_overlapping_groups_serve_each_task_from_its_best_group(yeast3):
    trainer = GroupingTrainer(yeast3, RunConfig(hidden=(8,)), epochs=1)
    s = trainer.run([((0, 1), (1, 2))], seed=0)
    assert s.served_by[0, 0] == 0 and s.served_by[0, 2] == 1
    assert s.served_by[0, 1] in (0, 1)
    np.testing.assert_allclose(s.val_total[0], s.val_loss[0].sum())


# Task affinity grouping.


def test_lookahead_affinity_matches_a_naive_loop():
    tasks = [Task(f"t{i}", "binary") for i in range(3)]
    codes = TaskCodes.from_tasks(tasks)
    model = GroupedModel(MLP((5,)), nn.Dense(2), num_groups=1, num_tasks=3)
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (16, 4))
    y = jax.random.bernoulli(ky, 0.5, (16, 3)).astype(jnp.float32)
    params, state = model.init_variables(kp, x)
    lr = 0.5

    def losses(p):
        out, _ = model.apply(p, state, x)
        labels, mask = jnp.asarray(y), jnp.ones_like(y, bool)
        return task_losses(out[0], labels, mask, codes)

    before = np.asarray(losses(params))
    naive = np.zeros((3, 3))
    for i in range(3):
        g = jax.grad(lambda p, i=i: losses(p)[i])(params)
        moved = dict(params)
        moved["branches"] = jax.tree.map(
            lambda a, b: a - lr * b, params["branches"], g["branches"]
        )
        after = np.asarray(losses(moved))
        naive[i] = 1.0 - after / before
    z, valid = lookahead_affinity(model, params, state, x, y, codes, lr)
    assert bool(jnp.all(valid))
    np.testing.assert_allclose(np.asarray(z), naive, rtol=1e-4, atol=1e-6)
    assert np.abs(naive).max() > 1e-3  # the lookahead moved the losses


def test_group_selection_on_a_hand_made_affinity_matrix():
    # 0 and 1 help each other, 1 and 2 help each other, 0 and 2 hurt.
    a = np.array([[0.0, 1.0, -5.0], [1.0, 0.0, 1.0], [-5.0, 1.0, 0.0]])
    assert group_scores(a, (0, 1, 2)) == {0: -2.0, 1: 1.0, 2: -2.0}
    groups, total = select_groups(a, 2, overlap=True)
    assert groups == [(0, 1), (1, 2)] and total == pytest.approx(3.0)
    groups, total = select_groups(a, 2, overlap=False)
    assert groups == [(0, 1), (2,)] and total == pytest.approx(2.0)
    groups, total = select_groups(a, 1)
    assert groups == [(0, 1, 2)] and total == pytest.approx(-3.0)


def test_group_selection_finds_two_blocks():
    a = -np.ones((4, 4))
    a[:2, :2] = a[2:, 2:] = 2.0
    groups, total = select_groups(a, 3, overlap=True)
    assert groups == [(0, 1), (2, 3)] and total == pytest.approx(8.0)


def _blocks(sizes, inside=1.0, across=-1.0):
    n = sum(sizes)
    a = np.full((n, n), across)
    start = 0
    for s in sizes:
        a[start : start + s, start : start + s] = inside
        start += s
    np.fill_diagonal(a, 0.0)
    return a


def test_bounded_search_matches_exact_on_a_hand_made_matrix():
    # Seven tasks, K = 3: blocks {0,1,2} {3,4} {5,6}; task 2 also helps 0
    # and 1 (by 2) and is helped by 3 and 4 (by 3), so the overlapping
    # optimum uses task 2 twice and the partition optimum moves it.
    a = _blocks([3, 2, 2])
    a[3, 2] = a[4, 2] = 3.0
    a[2, 3] = a[2, 4] = 1.0
    a[2, 0] = a[2, 1] = 2.0
    # Overlap: 0, 1 score 1.5 in {0,1,2}; 2 scores 3, 3 and 4 score 1 in
    # {2,3,4}; 5, 6 score 1: total 10. Partition: {0,1} 2, {2,3,4} 5, {5,6} 2.
    want = {
        True: ([(0, 1, 2), (2, 3, 4), (5, 6)], 10.0),
        False: ([(0, 1), (2, 3, 4), (5, 6)], 9.0),
    }
    for overlap, (groups, total) in want.items():
        exact = select_groups(a, 3, overlap=overlap, search="exact")
        assert exact[0] == groups and exact[1] == pytest.approx(total)
        for seed in range(3):
            bounded = select_groups(a, 3, overlap=overlap, search="bounded", seed=seed)
            assert bounded[0] == groups and bounded[1] == pytest.approx(total)


def test_bounded_search_finds_planted_blocks_of_fourteen_tasks():
    a = _blocks([4, 4, 3, 3])
    assert search_kind(14, 4, overlap=True) == "bounded"
    assert search_kind(14, 4, overlap=False) == "bounded"
    assert search_kind(6, 3, overlap=False) == "exact"
    want = [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10), (11, 12, 13)]
    for overlap in (True, False):
        first = select_groups(a, 4, overlap=overlap, seed=5)
        assert first == select_groups(a, 4, overlap=overlap, seed=5)  # determinism
        groups, total = first
        assert groups == want and total == pytest.approx(14.0)
    with pytest.raises(ValueError, match="too large"):
        select_groups(a, 4, search="exact")


# Statistics.


def test_noise_band_paired_and_unpaired_by_hand():
    v = np.array([[1.0, 1.2, 1.1], [1.1, 1.3, 1.2], [2.0, 2.5, 1.5]])
    paired = noise_band(v)
    # Row 1 is worse by exactly 0.1 on every seed: the paired SE is 0.
    assert paired["best"] == 0
    assert paired["inside"].tolist() == [True, False, False]
    # Unpaired: se = sqrt(2) * 0.1 / sqrt(3) = 0.0816, 2 se = 0.163 > 0.1.
    unpaired = noise_band(v, paired=False)
    np.testing.assert_allclose(unpaired["se"][1], math.sqrt(2) * 0.1 / math.sqrt(3))
    assert unpaired["inside"].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="seeds"):
        noise_band(v[:, :1])


def test_rank_percentile_and_wilson_by_hand():
    assert rank_of(1.0, [1.0, 2.0, 3.0, 4.0]) == (1, 100.0)
    assert rank_of(4.0, [1.0, 2.0, 3.0, 4.0]) == (4, 25.0)
    lo, hi = wilson_interval(5, 20)
    # p = 0.25, z^2 = 3.8415: centre 0.29029, half-width 0.17843.
    assert lo == pytest.approx(0.1119, abs=1e-4)
    assert hi == pytest.approx(0.4687, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_spearman_and_seed_rank_correlation():
    assert rankdata([3.0, 1.0, 3.0]).tolist() == [2.5, 1.0, 2.5]
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    v = np.array([[1.0, 1.0, 3.0], [2.0, 3.0, 2.0], [3.0, 2.0, 1.0]])
    rc = seed_rank_correlation(v)
    assert rc["pairs"] == 3
    assert rc["mean"] == pytest.approx((0.5 - 1.0 - 0.5) / 3)


# End to end.


def test_compare_end_to_end_on_three_yeast_tasks(tmp_path):
    out = tmp_path / "cmp"
    methods = "stl,mtl,random,dmtg,dmtg-settled,tag,tag-partition,exhaustive"
    rc = cli.main(
        [
            "compare",
            "--dataset",
            "yeast",
            "--tasks",
            ",".join(THREE),
            "--groups",
            "2",
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--methods",
            methods + ",exhaustive-exact",
            "--hidden",
            "8",
            "--settle-max-epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    files = sorted(os.listdir(out))
    assert files == ["cost.png", "oracle.json", "results.json", "results.md"]
    assert (out / "cost.png").stat().st_size > 1000

    results = json.loads((out / "results.json").read_text())
    oracle = json.loads((out / "oracle.json").read_text())
    records = results["records"]
    assert len(records) == 9 * 2
    assert len(oracle["partitions"]) == 4  # S(3,1) + S(3,2)
    for p in oracle["partitions"]:
        assert len(p["val_total"]) == 2
        assert sorted(t for g in p["groups"] for t in g) == sorted(THREE)

    by_groups = {
        partition_from_names(p["groups"], THREE): p for p in oracle["partitions"]
    }
    for r in records:
        assert r["train_steps"] > 0 and r["wall_seconds"] >= 0
        assert r["run_seconds"] >= 0 and r["compile_seconds"] >= 0
        split = r["run_seconds"] + r["compile_seconds"]
        assert split == pytest.approx(r["wall_seconds"], abs=2e-3)
        assert set(r["test_metric"]) == set(THREE)
        if r["method"] in ("exhaustive", "mtl", "random", "dmtg", "tag-partition"):
            assert 1 <= r["oracle_rank"] <= 4
            assert r["in_noise_band"] is None  # 2 seeds: ranks, no noise band
        if r["method"] == "exhaustive":
            # The seed's pick is the partition with that seed's lowest total.
            best = min(oracle["partitions"], key=lambda p: p["val_total"][r["seed"]])
            assert r["val_total"] == pytest.approx(best["val_total"][r["seed"]])
        if r["method"] == "mtl":
            # Common randomness: the MTL run equals the oracle's MTL partition.
            p = by_groups[((0, 1, 2),)]
            assert r["val_total"] == pytest.approx(p["val_total"][r["seed"]], 1e-5)
        if r["method"].startswith("dmtg"):
            # The mean over tasks of the largest probability, as 'tgjax train'
            # writes it, and the smallest over tasks; no ambiguous key.
            assert "assignment_confidence" not in r
            lo, mean = r["assignment_confidence_min"], r["assignment_confidence_mean"]
            assert 0.5 <= lo <= mean <= 1.0  # K = 2
        if r["method"] == "stl":
            assert r["oracle_rank"] is None  # 3 groups are more than K = 2
    steps = results["settings"]["steps_per_epoch"]
    exhaustive = [r for r in records if r["method"] == "exhaustive"][0]
    assert exhaustive["train_steps"] == 4 * steps
    summary = results["summary"]
    assert summary["oracle"]["at_most_k"]["count"] == 4
    assert summary["oracle"]["exact_k"]["count"] == 3
    lo, hi = summary["methods"]["dmtg"]["top_hits"]["wilson95"]
    assert 0.0 <= lo <= hi <= 1.0
    md = (out / "results.md").read_text()
    assert "| dmtg |" in md and "need at least 3 seeds" in md
    assert "| run s | compile s |" in md and "run s is wall time without" in md
