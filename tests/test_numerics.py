"""Numerical robustness: extreme logits, tiny temperatures, located faults."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tgjax
from tgjax.data import load_dataset
from tgjax.model import MLP
from tgjax.tasks import TaskCodes, task_losses
from tgjax.validate import fault_message, find_fault

TASKS, GROUPS = 3, 4
DTYPES = {"float32": 1e30, "bfloat16": 1e30, "float16": 6e4}

magnitudes = st.floats(0.0, 1.0)
signs = st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=12, max_size=12)
taus = st.sampled_from([1e-30, 1e-8, 1e-3, 0.1, 1.0, 2.5, 1e3, 1e8])


@jax.jit
def _relaxed(key, logits, tau, weights):
    def f(s):
        z = tgjax.gumbel_softmax(key, s, tau)
        return jnp.sum(z.astype(jnp.float32) * weights), z

    (value, z), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return z, value, grad


@jax.jit
def _straight_through(key, logits, tau, weights):
    def f(s):
        z = tgjax.gumbel_softmax(key, s, tau, hard=True)
        return jnp.sum(z.astype(jnp.float32) * weights), z

    (value, z), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return z, value, grad


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    scale=magnitudes,
    signs=signs,
    tau=taus,
    seed=st.integers(0, 2**16),
    hard=st.booleans(),
)
def test_samples_and_gradients_stay_finite(dtype, scale, signs, tau, seed, hard):
    # Logits from 0 up to the largest magnitude the dtype holds comfortably.
    big = DTYPES[dtype] * scale
    logits = (np.array(signs, np.float32) * big).reshape(TASKS, GROUPS)
    logits = jnp.asarray(logits, dtype)
    weights = jnp.arange(TASKS * GROUPS, dtype=jnp.float32).reshape(TASKS, GROUPS)
    fn = _straight_through if hard else _relaxed
    z, value, grad = fn(jax.random.key(seed), logits, jnp.float32(tau), weights)
    z = np.asarray(z, np.float32)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    assert (z >= 0).all() and (z <= 1).all()
    np.testing.assert_allclose(z.sum(-1), 1.0, atol=1e-2)
    assert np.isfinite(float(value))
    assert np.isfinite(np.asarray(grad, np.float32)).all()
    if hard:
        assert set(np.unique(z)) <= {0.0, 1.0}


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(sorted(DTYPES)), scale=magnitudes, signs=signs)
def test_entropy_and_read_out_stay_finite(dtype, scale, signs):
    big = DTYPES[dtype] * scale
    logits = jnp.asarray(
        (np.array(signs, np.float32) * big).reshape(TASKS, GROUPS), dtype
    )
    ent, grad = jax.value_and_grad(lambda s: jnp.sum(tgjax.assignment_entropy(s)))(
        logits
    )
    assert np.isfinite(float(ent)) and 0 <= float(ent) <= TASKS * np.log(GROUPS) + 1e-5
    assert np.isfinite(np.asarray(grad, np.float32)).all()
    groups = tgjax.read_groups(logits)
    assert groups.shape == (TASKS,) and ((groups >= 0) & (groups < GROUPS)).all()


LOSS_TASKS = [
    tgjax.Task("bin", "binary"),
    tgjax.Task("multi", "multiclass", num_classes=3),
    tgjax.Task("reg", "regression"),
]
CODES = TaskCodes.from_tasks(LOSS_TASKS)


@jax.jit
def _losses_and_grad(outputs, labels, mask):
    def f(o):
        return jnp.sum(task_losses(o, labels, mask, CODES))

    return jax.value_and_grad(f)(outputs)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(sorted(DTYPES)),
    scale=magnitudes,
    signs=st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=36, max_size=36),
    classes=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    present=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_masked_losses_stay_finite_for_extreme_logits(
    dtype, scale, signs, classes, present
):
    # Classification logits up to the dtype's comfortable range. Regression
    # outputs up to 1e15 (whose square is still a float32), and in float16 to
    # a quarter of its range: the squared error's gradient 2 * (out - label)
    # comes back in the outputs' dtype and float16 cannot hold it beyond that.
    big = DTYPES[dtype] * scale
    out = np.array(signs, np.float32).reshape(3, 4, 3) * big
    reg = min(1e15, DTYPES[dtype] / 4)
    out[2] = np.clip(out[2], -reg, reg)
    outputs = jnp.asarray(out, dtype)
    labels = np.zeros((4, 3), np.float32)
    labels[:, 0] = np.array(classes) % 2
    labels[:, 1] = classes
    labels[:, 2] = 0.5
    mask = np.array(present).reshape(4, 3)
    value, grad = _losses_and_grad(outputs, jnp.asarray(labels), jnp.asarray(mask))
    grad = np.asarray(grad, np.float32)
    assert np.isfinite(float(value)) and float(value) >= 0
    assert np.isfinite(grad).all()
    # A missing label contributes no gradient at all.
    for t in range(3):
        for b in range(4):
            if not mask[b, t]:
                assert (grad[t, b] == 0).all()


def test_train_step_locates_a_non_finite_head_gradient():
    model = tgjax.GroupedModel(MLP((8,)), nn.Dense(2), num_groups=2, num_tasks=3)
    tasks = [tgjax.Task(n, "binary") for n in "abc"]
    opt = tgjax.make_optimizer(1e-3)
    x = jnp.ones((4, 5), jnp.float32)
    y = jnp.zeros((4, 3), jnp.float32)
    state = tgjax.init_state(model, opt, jax.random.key(0), x)
    # Poison the head of task 1 on group 0 only.
    heads = jax.tree.map(lambda a: a.at[0, 1].set(jnp.inf), state.params["heads"])
    state = state._replace(params={**state.params, "heads": heads})
    step = tgjax.make_train_step(model, tasks, opt)
    _, metrics = step(state, {"x": x, "y": y}, 2.5)
    metrics = jax.device_get(metrics)
    assert not metrics["finite"]
    fault = np.asarray(metrics["fault"])
    assert fault.shape == (3, 2)
    assert fault[1, 0]
    stacked = jax.tree.map(lambda a: np.asarray(a)[None], metrics)
    assert find_fault(stacked) == 0
    message = fault_message(stacked, 0, 17, tasks)
    assert "step 17" in message and "task 'b'" in message and "group 0" in message
    assert "Lower the learning rate" in message


def test_fault_message_names_gradient_and_branch_faults():
    tasks = [tgjax.Task(n, "binary") for n in "abc"]
    finite_lm = np.zeros((2, 3, 2), np.float32)
    metrics = {
        "finite": np.array([True, False]),
        "loss_matrix": finite_lm,
        "fault": np.zeros((2, 3, 2), bool),
        "branch_fault": np.array([[False, False], [False, True]]),
    }
    assert find_fault(metrics) == 1
    assert "branch (group) 1" in fault_message(metrics, 1, 5, tasks)
    metrics["fault"][1, 2, 1] = True
    assert "task 'c' on group 1" in fault_message(metrics, 1, 5, tasks)
    metrics["loss_matrix"][1, 0, 0] = np.nan
    assert "loss of task 'a' on group 0 is nan" in fault_message(metrics, 1, 5, tasks)
    metrics["finite"][:] = True
    assert find_fault(metrics) is None


def test_short_fit_is_clean_under_debug_nans():
    data = load_dataset("yeast").select_tasks(["Class1", "Class2", "Class3"])
    config = tgjax.RunConfig(
        groups=2, epochs=1, finetune_epochs=1, batch_size=256, hidden=(8,)
    )
    previous = jax.config.jax_debug_nans
    jax.config.update("jax_debug_nans", True)
    try:
        result = tgjax.fit(data, config)
    finally:
        jax.config.update("jax_debug_nans", previous)
    assert np.isfinite(result.test["total_loss"])
    assert sorted(sum(result.groups, [])) == ["Class1", "Class2", "Class3"]


def test_missing_labels_train_clean_under_debug_nans():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2]], 1).astype(np.float32)
    y[rng.random(120) < 0.3, 1] = np.nan
    y[rng.random(120) < 0.3, 2] = np.nan
    tasks = [
        tgjax.Task("a", "binary"),
        tgjax.Task("b", "binary"),
        tgjax.Task("r", "regression"),
    ]
    config = tgjax.RunConfig(
        groups=2, epochs=1, finetune_epochs=1, batch_size=16, hidden=(8,)
    )
    previous = jax.config.jax_debug_nans
    jax.config.update("jax_debug_nans", True)
    try:
        result = tgjax.fit_arrays(x, y, tasks, config)
    finally:
        jax.config.update("jax_debug_nans", previous)
    assert np.isfinite(result.test["total_loss"])


def test_fit_raises_a_located_numerical_error_and_reports_earlier_steps():
    data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
    config = tgjax.RunConfig(
        groups=2,
        epochs=2,
        finetune_epochs=0,
        learning_rate=1e30,
        hidden=(8,),
        log_every=1,
    )
    events = []
    with pytest.raises(FloatingPointError) as info:
        tgjax.fit(data, config, callback=lambda e, p: events.append((e, p)))
    message = str(info.value)
    assert message.startswith("Training stopped at step ")
    step = int(message.split("step ")[1].split(":")[0])
    logged = [p["step"] for e, p in events if e == "log"]
    assert logged == list(range(step))
    assert ("task '" in message) or ("group" in message)
