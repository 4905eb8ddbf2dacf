"""Checkpoints of the search and exact resumes, also after a real SIGKILL."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tgjax
from tgjax import cli
from tgjax.checkpoint import Checkpoints
from tgjax.distributed import make_mesh
from tgjax.runio import read_jsonl
from tgjax.search import run_search
from tgjax.tasks import Task

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _search(checkpoints=None, *, resume=False, every=5, events=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0], 1).astype(np.float32)
    tasks = [Task("a", "binary"), Task("b", "binary")]
    model = tgjax.GroupedModel(tgjax.MLP((8,)), nn.Dense(2), num_groups=2, num_tasks=2)
    opt = tgjax.make_optimizer(1e-2)
    step = tgjax.make_train_step(model, tasks, opt)
    tau = tgjax.temperature_schedule(
        "exponential", 2.0, final_value=0.5, decay_steps=24
    )

    def init():
        return tgjax.init_state(model, opt, jax.random.key(1), jnp.asarray(x[:2]))

    return run_search(
        init,
        step.core,
        tau,
        x=x,
        y=y,
        seed=4,
        epochs=3,
        batch_size=12,  # 8 steps per epoch, 24 in all
        mesh=make_mesh("data=2,groups=2"),
        log_every=1,
        checkpoints=checkpoints,
        checkpoint_every=every,
        resume=resume,
        callback=None if events is None else lambda e, p: events.append((e, p)),
    )


def _assert_same_tree(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for u, v in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def uninterrupted():
    return _search()


def test_resume_skips_a_corrupt_newest_checkpoint_and_ends_bit_exact(
    tmp_path, uninterrupted
):
    ckpt = Checkpoints(tmp_path / "ckpt", keep=3)
    _search(ckpt)
    assert ckpt.steps() == [15, 20, 24]
    # Damage the newest one: its array data is cut short.
    for path in (tmp_path / "ckpt" / "24" / "state").rglob("*"):
        if path.is_file() and path.name != "_CHECKPOINT_METADATA":
            path.write_bytes(b"\0" * 7)
    events = []
    state, history = _search(Checkpoints(tmp_path / "ckpt"), resume=True, events=events)
    resumed = [p for e, p in events if e == "resume"]
    assert resumed[0]["step"] == 20
    assert [s for s, _ in resumed[0]["skipped"]] == [24]
    # Steps 20..23 ran again, on tau's schedule, and the state is bit-exact.
    ref_state, ref_history = uninterrupted
    assert [h["step"] for h in history] == [20, 21, 22, 23]
    assert [h["tau"] for h in history] == [h["tau"] for h in ref_history[20:]]
    taus = [h["tau"] for h in ref_history]
    assert all(b < a for a, b in zip(taus, taus[1:], strict=False))
    _assert_same_tree(state, ref_state)


def test_resume_mid_epoch_equals_the_uninterrupted_state(tmp_path, uninterrupted):
    ckpt = Checkpoints(tmp_path / "ckpt", keep=5)
    _search(ckpt)
    # Keep only checkpoint 5 (inside epoch 0), as if the run died at step 9.
    for step in ckpt.steps()[1:]:
        shutil.rmtree(tmp_path / "ckpt" / str(step))
    state, history = _search(Checkpoints(tmp_path / "ckpt"), resume=True)
    assert history[0]["step"] == 5
    _assert_same_tree(state, uninterrupted[0])
    for got, want in zip(history, uninterrupted[1][5:], strict=True):
        assert got == want


def test_unfinished_checkpoint_folders_are_ignored(tmp_path):
    ckpt = Checkpoints(tmp_path / "ckpt")
    # What an interrupted save leaves: a temporary folder, never renamed.
    (tmp_path / "ckpt" / "30.orbax-checkpoint-tmp-1700000000").mkdir()
    assert ckpt.steps() == []


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*ckpt"):
        _search(Checkpoints(tmp_path / "ckpt"), resume=True)
    with pytest.raises(FileNotFoundError, match="holds no tgjax checkpoint"):
        tgjax.load_checkpoint(tmp_path)
    assert cli.main(["train", "--resume", str(tmp_path / "nothing")]) == 2


def test_a_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    ckpt = Checkpoints(tmp_path / "ckpt")
    _search(ckpt, every=8)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _search(ckpt)
    # The public loader reads the newest one as plain arrays.
    tree = tgjax.load_checkpoint(tmp_path / "ckpt")
    assert int(tree["step"]) == 24
    assert tree["assignment"].shape == (2, 2)
    assert tree["key"].dtype == np.uint32


TRAIN = [
    "train",
    "--tasks",
    "Class1,Class2,Class3,Class4",
    "--groups",
    "2",
    "--mesh",
    "data=2,groups=2",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--checkpoint-every",
    "7",
    "--finetune-epochs",
    "1",
    "--hidden",
    "8",
    "--tau-schedule",
    "exponential",
    "--tau-final",
    "0.5",
    "--log-every",
    "1",
    "--quiet",
]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgjax", *TRAIN, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Kill it as soon as its second checkpoint exists, mid-search.
        deadline = time.monotonic() + 600
        ckpts = killed / "checkpoints"
        while not (ckpts.is_dir() and len(os.listdir(ckpts)) >= 2):
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

    assert cli.main(["train", "--resume", str(killed), "--quiet"]) == 0
    straight = tmp_path / "straight"
    assert cli.main([*TRAIN, "--out", str(straight)]) == 0

    _assert_same_tree(
        tgjax.load_checkpoint(killed / "checkpoint"),
        tgjax.load_checkpoint(straight / "checkpoint"),
    )
    logs = [read_jsonl(p / "metrics.jsonl") for p in (killed, straight)]
    steps = [r["step"] for r in logs[0] if "step" in r]
    assert steps == list(range(len(steps))) and len(steps) == 2 * 22
    assert logs[0] == logs[1]  # every line, tau and losses included, once
    taus = [r["tau"] for r in logs[0] if "step" in r]
    assert taus == sorted(taus, reverse=True) and taus[-1] < taus[0]
    for name in ("groups.json", "results.json"):
        a, b = (json.loads((p / name).read_text()) for p in (killed, straight))
        a.pop("wall_seconds", None), b.pop("wall_seconds", None)
        assert a == b
