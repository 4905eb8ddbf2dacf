"""Training from a stream: order, coverage, evaluation, CLI and exact resumes."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import tgjax
from tgjax import cli
from tgjax.checkpoint import Checkpoints
from tgjax.config import RunConfig
from tgjax.data import load_dataset, load_stream, stream_from_memory
from tgjax.data.stream import (
    StreamSplit,
    epoch_order,
    eval_batches,
    shard_range,
    step_batches,
)
from tgjax.distributed import make_mesh, rows_sharding
from tgjax.pipeline import build_model, evaluate, evaluate_stream
from tgjax.runio import read_jsonl
from tgjax.search import place_local_rows, run_search_stream
from tgjax.train import hard_outputs, init_state, make_optimizer
from tgjax.validate import check_stream_settings

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from counting_step import counting_search, per_epoch_counts  # noqa: E402
from test_data_celeba import _write  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _memory(x, y):
    split = tgjax.data.Split(x, y)
    return tgjax.data.MultiTaskData(
        "m", (tgjax.Task("t", "binary"),), split, split, split
    )


def _rows(n=30):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    return stream_from_memory(_memory(x, y)).train


def _keys(batches):
    return [b["index"].tolist() for b in batches]


def test_order_is_a_function_of_seed_and_epoch_and_any_step_is_reachable():
    split = _rows(30)
    kw = dict(seed=3, batch_size=4, stop=21)  # 7 steps an epoch, 3 epochs
    full = _keys(step_batches(split, start=0, **kw))
    assert full == _keys(step_batches(split, start=0, **kw))
    # Resuming at step 9 (inside epoch 1) reads exactly the same batches.
    assert _keys(step_batches(split, start=9, **kw)) == full[9:]
    epochs = [sum(full[e * 7 : (e + 1) * 7], []) for e in range(3)]
    for e, keys in enumerate(epochs):
        assert len(set(keys)) == 28  # each example at most once an epoch
        np.testing.assert_array_equal(keys, epoch_order(3, e, 0, 30)[:28])
    assert epochs[0] != epochs[1]
    other = _keys(step_batches(split, seed=4, batch_size=4, start=0, stop=7))
    assert sum(other, []) != epochs[0]
    # Workers decode in other processes; the batches stay the same.
    assert _keys(step_batches(split, start=5, workers=2, **kw)) == full[5:]
    batch = next(iter(step_batches(split, seed=3, batch_size=4, start=0, stop=1)))
    np.testing.assert_array_equal(batch["x"][:, 0], batch["index"] * 3)


def test_shards_split_the_records_and_eval_keeps_the_last_batch():
    assert [shard_range(11, i, 2) for i in range(2)] == [(0, 5), (5, 10)]
    split = _rows(11)
    seen = [
        sum(
            _keys(step_batches(split, seed=0, batch_size=2, start=0, stop=2, shard=s)),
            [],
        )
        for s in [(0, 5), (5, 10)]
    ]
    assert all(0 <= k < 5 for k in seen[0]) and all(5 <= k < 10 for k in seen[1])
    sizes = [len(b["index"]) for b in eval_batches(split, batch_size=4)]
    assert sizes == [4, 4, 3]


def test_label_fields_stack_nested_labels_of_the_decoded_records():
    class Source:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"x": np.full(2, i), "m": {"a": np.full((2, 2), i), "b": i > 0}}

    split = StreamSplit(Source(), label_fields=("m",))
    batch = split.read([2, 0])
    np.testing.assert_array_equal(batch["x"], [[2, 2], [0, 0]])
    np.testing.assert_array_equal(batch["y"]["m"]["a"][:, 0, 0], [2, 0])
    np.testing.assert_array_equal(batch["y"]["m"]["b"], [True, False])
    with pytest.raises(ValueError, match="not both"):
        StreamSplit(Source(), labels=np.zeros((3, 1)), label_fields=("m",))


@pytest.mark.parametrize("mesh", ["data=1", "data=4,groups=2"])
def test_streamed_search_sees_each_fashion_mnist_example_once_per_epoch(mesh):
    train = load_stream("fashion-mnist").train
    n = len(train)
    init, step, tau = counting_search(n)
    seen = []
    state, history = run_search_stream(
        init,
        step,
        tau,
        split=train,
        seed=5,
        epochs=2,
        batch_size=1000,  # 50 steps cover the 50,000 examples
        mesh=make_mesh(mesh),
        log_every=25,
        epoch_end=lambda st, e, losses: seen.append(np.asarray(st.counts)),
        sync_every=16,
    )
    assert int(state.step) == 100
    for counts in per_epoch_counts(seen):
        np.testing.assert_array_equal(counts, np.ones(n, np.int32))
    assert [h["step"] for h in history] == [0, 25, 49, 50, 75, 99]


def test_a_last_incomplete_batch_of_an_epoch_is_dropped_not_repeated():
    split = _rows(30)
    init, step, tau = counting_search(30)
    seen = []
    run_search_stream(
        init,
        step,
        tau,
        split=split,
        seed=0,
        epochs=3,
        batch_size=8,  # 3 steps, 24 of 30 examples an epoch
        mesh=make_mesh("data=2"),
        epoch_end=lambda st, e, losses: seen.append(np.asarray(st.counts)),
    )
    for counts in per_epoch_counts(seen):
        assert set(counts.tolist()) == {0, 1} and counts.sum() == 24


def test_streamed_evaluation_equals_the_in_memory_evaluation():
    data = load_dataset("fashion-mnist")
    stream = load_stream("fashion-mnist")
    config = RunConfig(groups=2, hidden=(16,))
    model = build_model(config, data.tasks, 2)
    opt = make_optimizer(1e-3)
    state = init_state(model, opt, jax.random.key(0), data.train.x[:2])
    groups = np.array([0, 1] * 5)

    @jax.jit
    def outputs(x):
        return hard_outputs(model, state.params, state.model_state, x, groups)

    for split in ("val", "test"):  # 10,000 each: 9 batches of 1024 and one of 784
        want = evaluate(outputs, getattr(data, split).x, getattr(data, split).y, data)
        got = evaluate_stream(outputs, getattr(stream, split), stream)
        assert got == want
        assert got["tasks"][data.task_names[0]]["count"] == 10000
    np.testing.assert_array_equal(stream.train.labels, data.train.y)
    np.testing.assert_array_equal(stream.train.read([7, 3])["x"], data.train.x[[7, 3]])


def test_batches_are_placed_by_rows_over_the_data_axis():
    mesh = make_mesh("data=4,groups=2")
    batch = {"x": np.arange(24, dtype=np.float32).reshape(8, 3), "y": np.ones((8, 1))}
    placed = place_local_rows(batch, mesh)
    assert placed["x"].sharding == rows_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(placed["x"]), batch["x"])
    shards = {s.device: s.data.shape for s in placed["x"].addressable_shards}
    assert set(shards.values()) == {(2, 3)} and len(shards) == 8


def test_bad_stream_settings_say_what_to_change(capsys):
    config = RunConfig(batch_size=12, stream=True)
    with pytest.raises(ValueError, match="not divisible by 3; use --batch-size 6"):
        check_stream_settings(RunConfig(batch_size=8), 100, 3)
    # 6 examples a step in each of 2 processes, from shards of 5 examples.
    with pytest.raises(ValueError, match=r"shard of the train split \(5 of 11"):
        check_stream_settings(config, 11, 2)
    check_stream_settings(config, 12, 2)
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        RunConfig(workers=-1)
    assert cli.main(["train", "--stream", "--workers", "-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "workers must be an integer >= 0, got -1" in err
    assert "default, 0" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--stream", "--in-memory"])


def _celeba(root, n_train=24):
    partition = [0] * n_train + [1] * 6 + [2] * 6
    rng = np.random.default_rng(2)
    _write(
        root, rng.choice([-1, 1], size=(len(partition), 40)).tolist(), False, partition
    )
    return root


CELEBA = [
    "train",
    "--dataset",
    "celeba",
    "--tasks",
    "Black_Hair,Blond_Hair,No_Beard,Wearing_Hat",
    "--groups",
    "2",
    "--hidden",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "4",  # 6 steps an epoch
    "--checkpoint-every",
    "4",
    "--finetune-epochs",
    "1",
    "--log-every",
    "1",
    "--mesh",
    "data=2",
    "--quiet",
]


def test_celeba_streams_by_default_and_writes_a_complete_run_folder(tmp_path, capsys):
    data_dir = _celeba(tmp_path / "celeba")
    out = tmp_path / "run"
    assert cli.main([*CELEBA, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == [
        "assignment.png",
        "checkpoint",
        "checkpoints",
        "config.json",
        "groups.json",
        "metrics.jsonl",
        "results.json",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["stream"] is True and config["run"]["workers"] == 0
    assert config["data"]["examples"] == {"train": 24, "val": 6, "test": 6}
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log if "step" in r] == list(range(12))
    epochs = [r for r in log if r.get("event") == "epoch"]
    assert [(r["phase"], r["epoch"]) for r in epochs] == [
        ("search", 0),
        ("search", 1),
        ("finetune", 0),
    ]
    assert all(np.isfinite(r["val_total_loss"]) for r in epochs)
    groups = json.loads((out / "groups.json").read_text())
    assert sorted(sum(groups["groups"], [])) == sorted(groups["tasks"])
    assert np.asarray(groups["probabilities"]).shape == (4, 2)
    results = json.loads((out / "results.json").read_text())
    assert results["groups"] == groups["groups"]
    for split, n in (("test", 6), ("val", 6)):
        assert [t["count"] for t in results[split]["tasks"].values()] == [n] * 4
    assert sorted(os.listdir(out / "checkpoints")) == ["12", "4", "8"]
    tree = tgjax.load_checkpoint(out / "checkpoint")
    assert int(tree["search"]["step"]) == 12
    assert (out / "assignment.png").stat().st_size > 0
    # The same inputs in memory: the streamed test metrics come from the
    # weights the run saved, evaluated on the decoded split.
    stream = load_stream("celeba", data_dir=data_dir).select_tasks(groups["tasks"])
    memory = load_dataset("celeba", data_dir=data_dir).select_tasks(groups["tasks"])
    np.testing.assert_array_equal(stream.test.read(range(6))["x"], memory.test.x)


def test_in_memory_flag_keeps_celeba_in_memory(tmp_path):
    data_dir = _celeba(tmp_path / "celeba")
    out = tmp_path / "run"
    args = [*CELEBA, "--epochs", "1", "--finetune-epochs", "0", "--in-memory"]
    assert cli.main([*args, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["run"]["stream"] is False


def test_a_streamed_resume_refuses_checkpoints_of_other_settings(tmp_path):
    init, step, tau = counting_search(24)
    kw = dict(split=_rows(24), seed=0, epochs=1, mesh=make_mesh("data=1"))
    ckpt = Checkpoints(tmp_path / "memory")
    # What an in-memory search records: no stream position.
    ckpt.save(4, jax.jit(init)(), {"stage": "search", "step": 4, "epoch_losses": []})
    with pytest.raises(ValueError, match="in-memory search; resume it in memory"):
        run_search_stream(
            init, step, tau, batch_size=4, checkpoints=ckpt, resume=True, **kw
        )
    ckpt = Checkpoints(tmp_path / "stream")
    run_search_stream(init, step, tau, batch_size=4, checkpoints=ckpt, **kw)
    with pytest.raises(ValueError, match=r"other settings .*'batch_size': \(4, 6\)"):
        run_search_stream(
            init, step, tau, batch_size=6, checkpoints=ckpt, resume=True, **kw
        )


def test_sigkill_mid_epoch_then_streamed_resume_matches_an_uninterrupted_run(
    tmp_path,
):
    data_dir = _celeba(tmp_path / "celeba")
    train = [*CELEBA, "--checkpoint-every", "2", "--data-dir", str(data_dir)]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgjax", *train, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpts = killed / "checkpoints"
    try:
        deadline = time.monotonic() + 600
        while not (ckpts.is_dir() and "4" in os.listdir(ckpts)):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    # Resume from step 4, in the middle of epoch 0 (6 steps an epoch), as if
    # the run had died before its next checkpoint.
    for name in os.listdir(ckpts):
        if name.isdigit() and int(name) > 4:
            shutil.rmtree(ckpts / name)
    meta = json.loads((ckpts / "4" / "meta" / "metadata").read_text())
    assert meta["stream"]["epoch"] == 0 and meta["stream"]["offset"] == 4
    # Decoding workers may change on a resume: the batches do not depend on them.
    assert (
        cli.main(["train", "--resume", str(killed), "--workers", "1", "--quiet"]) == 0
    )

    straight = tmp_path / "straight"
    assert cli.main([*train, "--out", str(straight)]) == 0
    a, b = (tgjax.load_checkpoint(p / "checkpoint") for p in (killed, straight))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)
    logs = [read_jsonl(p / "metrics.jsonl") for p in (killed, straight)]
    assert [r["step"] for r in logs[0] if "step" in r] == list(range(12))
    assert logs[0] == logs[1]
    for name in ("groups.json", "results.json"):
        x, y = (json.loads((p / name).read_text()) for p in (killed, straight))
        x.pop("wall_seconds", None), y.pop("wall_seconds", None)
        assert x == y


@pytest.mark.parametrize("mode", ["--stream", "--in-memory"])
def test_fashion_mnist_trains_streamed_and_in_memory(tmp_path, mode):
    from tgjax.data.mnist import FASHION_MNIST_CLASSES

    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "fashion-mnist",
        mode,
        "--tasks",
        ",".join(FASHION_MNIST_CLASSES[:3]),
        "--groups",
        "2",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "1000",
        "--log-every",
        "10",
        "--out",
        str(out),
        "--quiet",
    ]
    assert cli.main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["stream"] is (mode == "--stream")
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log if "step" in r] == [0, 10, 20, 30, 40, 49]
    results = json.loads((out / "results.json").read_text())
    assert [t["count"] for t in results["test"]["tasks"].values()] == [10000] * 3
    assert results["test"]["total_error_percent"] < 3 * 50
