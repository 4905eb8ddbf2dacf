"""The dense trainer on streamed Taskonomy splits (generated omnidata files)."""

import jax
import numpy as np
import pytest
from test_data_taskonomy import _fixture

from tgjax import dense
from tgjax.data import taskonomy as tk

SPLIT = {"train": ["hanson", "merom"], "val": ["ihlen"], "test": ["uvalda"]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("omnidata")
    _fixture(path, buildings=("hanson", "merom", "ihlen", "uvalda"))
    return path


@pytest.fixture(scope="module")
def fitted(root):
    """A streamed K = 2 run; records the indices of every training batch."""
    splits = tk.taskonomy_stream(root, buildings=SPLIT, image_size=8)
    cfg = dense.DenseConfig(
        groups=2,
        epochs=1,
        finetune_epochs=1,
        batch_size=2,
        learning_rate=1e-2,
        encoder_widths=(4,),
        stem_width=4,
        decoder_widths=(4,),
        eval_batch_size=2,
    )
    seen: dict = {}
    original = dense.step_batches

    def counting(split, **kw):
        for batch in original(split, **kw):
            seen.setdefault(kw["epoch0"], []).extend(batch["index"].tolist())
            yield batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dense, "step_batches", counting)
        res = dense.fit_dense(splits["train"], splits["val"], splits["test"], cfg)
    return splits, cfg, res, seen


def test_streamed_fit_sees_each_training_record_once_per_epoch(fitted):
    splits, _, res, seen = fitted
    assert len(splits["train"]) == 6 and len(splits["test"]) == 3
    # One search and one fine-tuning epoch of 3 steps of 2 records each.
    assert sorted(seen) == [0, dense.FINETUNE_EPOCH_OFFSET]
    for indices in seen.values():
        assert sorted(indices) == list(range(6))
    assert res.probabilities.shape == (5, 2)
    assert [h["phase"] for h in res.history] == ["search", "finetune"]
    assert np.isfinite(res.test["total_loss"])
    assert set(res.test["tasks"]) == set(tk.TASKONOMY_TASKS)


def test_streamed_evaluation_equals_in_memory_evaluation(fitted, root):
    splits, cfg, res, _ = fitted
    tasks = dense.taskonomy_tasks(cfg.tasks)

    @jax.jit
    def outputs(xb):
        return res.model.apply_pruned(res.params, res.state, xb, res.task_branch)[0]

    src, ops = tk.taskonomy_source("test", root, buildings=SPLIT, image_size=8)
    x, y = dense.stack_records([ops[0].map(src[i]) for i in range(len(src))], cfg.tasks)
    memory = dense.evaluate_dense(outputs, x, y, tasks, batch_size=32)
    # Batches of 2 over 3 records: the last batch holds one record.
    streamed = dense.evaluate_dense_stream(outputs, splits["test"], tasks, 2)
    for metrics in (streamed, res.test):
        assert metrics["total_loss"] == pytest.approx(memory["total_loss"], rel=1e-5)
        for name, m in memory["tasks"].items():
            for k, v in m.items():
                assert metrics["tasks"][name][k] == pytest.approx(v, rel=1e-5), k


def test_max_per_split_and_mixed_splits(root):
    splits = tk.taskonomy_stream(root, buildings=SPLIT, image_size=8, max_per_split=2)
    assert [len(s) for s in splits.values()] == [2, 2, 2]
    batch = splits["train"].read([1])
    assert batch["y"]["targets"]["normal"].shape == (1, 8, 8, 3)
    assert batch["y"]["masks"]["depth_zbuffer"].dtype == bool
    src, ops = tk.taskonomy_source("val", root, buildings=SPLIT, image_size=8)
    records = [ops[0].map(src[i]) for i in range(len(src))]
    with pytest.raises(TypeError, match="not a mix"):
        dense.fit_dense(splits["train"], records, records, dense.DenseConfig())
