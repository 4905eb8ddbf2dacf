"""The search step against plain multi-task and single-task references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tgjax
from tgjax.model import MLP
from tgjax.tasks import Task, TaskCodes, split_labels, task_losses

N_TASKS = 3


def _tasks():
    return (
        Task("a", "binary"),
        Task("b", "multiclass", num_classes=3),
        Task("c", "regression"),
    )


def _batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = np.stack(
        [rng.integers(0, 2, n), rng.integers(0, 3, n), rng.normal(size=n)], axis=1
    ).astype(np.float32)
    y[0, 1] = np.nan  # a missing label
    return {"x": x, "y": y}


def _model(k):
    return tgjax.GroupedModel(MLP((8,)), nn.Dense(3), num_groups=k, num_tasks=N_TASKS)


def _adam_step(params, grads, lr=1e-2):
    opt = optax.adam(lr)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(grads, opt.init(params), params)
        return optax.apply_updates(params, updates)


def _single_branch_losses(branch_p, head_p, batch, tasks):
    """Plain multi-task forward: one branch, its task heads, no groups axis."""
    feats = MLP((8,)).apply({"params": branch_p}, batch["x"])
    outs = jax.vmap(lambda p: nn.Dense(3).apply({"params": p}, feats))(head_p)
    labels, mask = split_labels(batch["y"])
    return task_losses(outs, labels, mask, TaskCodes.from_tasks(tasks))


def test_k1_search_step_is_a_plain_mtl_step():
    # Equal to float rounding: XLA fuses the two programs differently, and
    # its CPU exp/log kernels differ in the last bit between fusions.
    tasks, batch = _tasks(), _batch()
    model = _model(1)
    opt = tgjax.make_optimizer(1e-2)
    state = tgjax.init_state(model, opt, jax.random.key(1), batch["x"])
    new, metrics = tgjax.make_train_step(model, tasks, opt)(state, batch, 2.5)

    branch = jax.tree.map(lambda a: a[0], state.params["branches"])
    heads = jax.tree.map(lambda a: a[0], state.params["heads"])

    def mtl_loss(p):
        return jnp.sum(_single_branch_losses(p["branch"], p["heads"], batch, tasks))

    p0 = {"branch": branch, "heads": heads}
    loss, grads = jax.jit(jax.value_and_grad(mtl_loss))(p0)
    ref = jax.jit(_adam_step)(p0, grads)

    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
    got_branch = jax.tree.map(lambda a: a[0], new.params["branches"])
    got_heads = jax.tree.map(lambda a: a[0], new.params["heads"])
    for got, want in zip(
        jax.tree.leaves((got_branch, got_heads)),
        jax.tree.leaves((ref["branch"], ref["heads"])),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-7)


def test_identity_assignment_with_k_eq_n_is_n_single_task_steps():
    tasks, batch = _tasks(), _batch(1)
    model = _model(N_TASKS)
    eye = jnp.eye(N_TASKS, dtype=jnp.float32)
    opt = tgjax.make_optimizer(1e-2, freeze_assignment=True)
    state = tgjax.init_state(model, opt, jax.random.key(2), batch["x"], assignment=eye)
    step = tgjax.make_train_step(model, tasks, opt, fixed_assignment=eye)
    new, _ = step(state, batch, 2.5)

    for i in range(N_TASKS):
        branch = jax.tree.map(lambda a, i=i: a[i], state.params["branches"])
        heads = jax.tree.map(lambda a, i=i: a[i], state.params["heads"])

        def stl_loss(p, i=i):
            return _single_branch_losses(p["branch"], p["heads"], batch, tasks)[i]

        p0 = {"branch": branch, "heads": heads}
        grads = jax.jit(jax.grad(stl_loss))(p0)
        ref = jax.jit(_adam_step)(p0, grads)
        got_branch = jax.tree.map(lambda a, i=i: a[i], new.params["branches"])
        got_head = jax.tree.map(lambda a, i=i: a[i, i], new.params["heads"])
        want_head = jax.tree.map(lambda a, i=i: a[i], ref["heads"])
        for got, want in zip(
            jax.tree.leaves((got_branch, got_head)),
            jax.tree.leaves((ref["branch"], want_head)),
            strict=True,
        ):
            np.testing.assert_allclose(
                np.asarray(got), np.asarray(want), rtol=0, atol=1e-6
            )
    # S is fixed in the single-task baseline.
    np.testing.assert_array_equal(np.asarray(new.assignment), np.asarray(eye))


def test_weights_and_assignment_move_in_one_update_and_s_gets_no_weight_decay():
    tasks, batch = _tasks(), _batch(2)
    model = _model(2)
    opt = tgjax.make_optimizer(1e-2, weight_decay=0.5)
    state = tgjax.init_state(model, opt, jax.random.key(3), batch["x"])
    step = tgjax.make_train_step(model, tasks, opt)
    new, metrics = step(state, batch, 2.5)
    assert not np.allclose(new.assignment, state.assignment)
    # Adam's first step moves each entry by at most lr (no decay term on S).
    assert np.max(np.abs(np.asarray(new.assignment - state.assignment))) <= 1e-2 + 1e-7
    assert metrics["loss_matrix"].shape == (N_TASKS, 2)


def test_tied_init_makes_branches_identical_and_independent_does_not():
    x = _batch()["x"]
    tied = _model(3)
    params, _ = tied.init_variables(jax.random.key(0), x)
    for leaf in jax.tree.leaves(params["branches"]):
        np.testing.assert_array_equal(leaf[0], leaf[2])
    for leaf in jax.tree.leaves(params["heads"]):
        np.testing.assert_array_equal(leaf[0, 1], leaf[2, 1])
    kernel = params["heads"]["kernel"]
    assert not np.array_equal(kernel[0, 0], kernel[0, 1])
    indep = tgjax.GroupedModel(MLP((8,)), nn.Dense(3), 3, N_TASKS, init="independent")
    params, _ = indep.init_variables(jax.random.key(0), x)
    kernel = params["branches"]["Dense_0"]["kernel"]
    assert not np.array_equal(kernel[0], kernel[1])


def test_missing_task_in_batch_contributes_nothing():
    tasks, batch = _tasks(), _batch(3)
    batch["y"][:, 2] = np.nan
    model = _model(2)
    opt = tgjax.make_optimizer(1e-2)
    state = tgjax.init_state(model, opt, jax.random.key(4), batch["x"])
    new, metrics = tgjax.make_train_step(model, tasks, opt)(state, batch, 2.5)
    assert bool(metrics["finite"])
    np.testing.assert_array_equal(np.asarray(metrics["loss_matrix"])[2], 0.0)
    # S row of the unlabelled task gets no gradient, so Adam leaves it alone.
    np.testing.assert_array_equal(
        np.asarray(new.assignment[2]), np.asarray(state.assignment[2])
    )


def test_prune_keeps_each_surviving_branch_and_selected_head_weights():
    model = _model(4)
    params, mstate = model.init_variables(jax.random.key(5), _batch()["x"])
    params = jax.tree.map(
        lambda a: (
            a
            + jnp.arange(a.shape[0], dtype=a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
        ),
        params,
    )
    groups = np.array([3, 1, 3])
    pp, ps, kept, task_branch = tgjax.prune(params, mstate, groups)
    assert kept.tolist() == [1, 3]
    assert task_branch.tolist() == [1, 0, 1]
    for got, full in zip(
        jax.tree.leaves(pp["branches"]),
        jax.tree.leaves(params["branches"]),
        strict=True,
    ):
        np.testing.assert_array_equal(got[0], full[1])
        np.testing.assert_array_equal(got[1], full[3])
    for got, full in zip(
        jax.tree.leaves(pp["heads"]), jax.tree.leaves(params["heads"]), strict=True
    ):
        for task, g in enumerate(groups):
            np.testing.assert_array_equal(got[task], full[g, task])
    # The pruned network computes exactly what the selected heads compute.
    x = _batch()["x"]
    full_out, _ = model.apply(params, mstate, x)
    pruned_out, _ = model.apply_pruned(pp, ps, x, task_branch)
    for task, g in enumerate(groups):
        np.testing.assert_allclose(pruned_out[task], full_out[g, task], rtol=1e-6)


@pytest.mark.parametrize("sample", ["relaxed", "straight_through"])
def test_per_example_sampling_runs_and_is_finite(sample):
    tasks, batch = _tasks(), _batch(4)
    model = _model(2)
    opt = tgjax.make_optimizer(1e-2)
    state = tgjax.init_state(model, opt, jax.random.key(6), batch["x"])
    step = tgjax.make_train_step(
        model, tasks, opt, sample=sample, sample_scope="example"
    )
    new, metrics = step(state, batch, 1.0)
    assert bool(metrics["finite"])
    np.testing.assert_allclose(
        np.asarray(metrics["assignment"]).sum(-1), 1.0, rtol=1e-5
    )


class _Backbone(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.tanh(nn.Dense(6)(x))


def test_user_backbone_branch_head_and_loss_drop_into_the_step():
    """Dense per-example targets with a custom loss, through one user module set."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    targets = rng.normal(size=(N_TASKS, 8, 4)).astype(np.float32)  # [tasks, batch, 4]
    model = tgjax.GroupedModel(
        branch=MLP((7,)),
        head=nn.Dense(4),
        num_groups=2,
        num_tasks=N_TASKS,
        backbone=_Backbone(),
    )

    def loss_fn(outputs, y):  # outputs [tasks, batch, 4]
        return jnp.mean(jnp.abs(outputs - y), axis=(1, 2))

    opt = tgjax.make_optimizer(1e-2)
    state = tgjax.init_state(model, opt, jax.random.key(7), x)
    step = tgjax.make_train_step(model, _tasks(), opt, loss_fn=loss_fn)
    new, metrics = step(state, {"x": x, "y": targets}, 2.5)
    outputs, _ = model.apply(state.params, state.model_state, x)
    want = jnp.stack([loss_fn(o, targets) for o in outputs], axis=1)
    np.testing.assert_allclose(metrics["loss_matrix"], want, rtol=1e-5)
    # The shared backbone is trained too.
    before = state.params["backbone"]["Dense_0"]["kernel"]
    after = new.params["backbone"]["Dense_0"]["kernel"]
    assert not np.allclose(before, after)
    with pytest.raises(ValueError, match="sample_scope"):
        tgjax.make_train_step(
            model, _tasks(), opt, loss_fn=loss_fn, sample_scope="example"
        )
