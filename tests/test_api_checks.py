"""Python API checks: head widths, task counts and the exported names."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import tgjax
from tgjax.tasks import TaskCodes, output_size


def _batch(tasks, n=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5)).astype("float32")
    cols = [rng.integers(0, t.num_classes, n) for t in tasks]
    return {"x": x, "y": np.stack(cols, 1).astype("float32")}


class _Head(nn.Module):
    """A head without a ``features`` attribute: checked at trace time."""

    width: int

    @nn.compact
    def __call__(self, h):
        return nn.Dense(self.width)(h)


def _model(tasks, head, num_tasks=None):
    return tgjax.GroupedModel(
        branch=tgjax.MLP((8,)),
        head=head,
        num_groups=2,
        num_tasks=len(tasks) if num_tasks is None else num_tasks,
    )


BINARY = [tgjax.Task("a", "binary"), tgjax.Task("b", "binary")]
THREE = [tgjax.Task("a", "binary"), tgjax.Task("c", "multiclass", num_classes=3)]


@pytest.mark.parametrize(
    "tasks,width,widest,need", [(BINARY, 1, "a", 2), (THREE, 2, "c", 3)]
)
def test_a_narrow_dense_head_is_refused_by_make_train_step(tasks, width, widest, need):
    model = _model(tasks, nn.Dense(width))
    opt = tgjax.make_optimizer(1e-3)
    with pytest.raises(ValueError) as e:
        tgjax.make_train_step(model, tasks, opt)
    msg = str(e.value)
    assert f"give {width} output(s)" in msg
    assert f"task {widest!r} needs {need}" in msg
    assert "head=nn.Dense(output_size(tasks))" in msg


def test_a_narrow_custom_head_is_refused_when_the_step_is_traced():
    tasks = THREE
    model = _model(tasks, _Head(2))
    opt = tgjax.make_optimizer(1e-3)
    batch = _batch(tasks)
    state = tgjax.init_state(model, opt, jax.random.key(0), batch["x"][:2])
    step = tgjax.make_train_step(model, tasks, opt)  # no width known yet
    with pytest.raises(ValueError, match=r"give 2 output\(s\), but task 1 needs 3"):
        step(state, batch, 1.0)
    codes = TaskCodes.from_tasks(tasks)
    with pytest.raises(ValueError, match="output_size"):
        tgjax.loss_matrix(
            model, state.params, state.model_state, batch["x"], batch["y"], codes
        )


def test_a_wide_enough_head_trains_to_finite_losses():
    tasks = THREE
    assert output_size(tasks) == 3
    model = _model(tasks, _Head(output_size(tasks)))
    opt = tgjax.make_optimizer(1e-3)
    batch = _batch(tasks)
    state = tgjax.init_state(model, opt, jax.random.key(0), batch["x"][:2])
    state, metrics = tgjax.make_train_step(model, tasks, opt)(state, batch, 1.0)
    assert np.isfinite(np.asarray(metrics["loss_matrix"])).all()
    assert np.asarray(metrics["loss_matrix"]).shape == (2, 2)


def test_a_num_tasks_mismatch_is_refused():
    model = _model(BINARY, nn.Dense(2), num_tasks=3)
    with pytest.raises(ValueError, match=r"num_tasks=3 but make_train_step got 2"):
        tgjax.make_train_step(model, BINARY, tgjax.make_optimizer(1e-3))


def test_task_codes_and_output_size_are_exported():
    assert {"TaskCodes", "output_size"} <= set(tgjax.__all__)
    assert tgjax.TaskCodes is TaskCodes and tgjax.output_size is output_size
