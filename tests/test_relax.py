"""Tests of the relaxation core: sampling, objective, read-out and schedules."""

import doctest
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tgjax
from tgjax import relax

# A small fixed set of shapes, so that JAX compiles each function a few times
# rather than once per example.
SHAPES = st.sampled_from([(1, 1), (3, 2), (5, 4)])
SEEDS = st.integers(0, 2**31 - 1)
TAUS = st.sampled_from([0.1, 0.5, 1.0, 2.5, 10.0])
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


def _logits(seed, shape, scale=3.0):
    return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _loss_matrix(seed, shape):
    return jax.random.uniform(jax.random.key(seed + 1), shape, jnp.float32, 0.0, 5.0)


def _gumbel(key, shape):
    # The documented noise of gumbel_softmax and sample_one_hot.
    return jax.random.gumbel(key, shape, jnp.float32)


def _relaxed_objective(s, key, loss, tau, hard=False):
    return tgjax.grouping_loss(tgjax.gumbel_softmax(key, s, tau, hard=hard), loss)


_relaxed_grad = jax.jit(jax.grad(_relaxed_objective), static_argnames="hard")


# --- The public API -------------------------------------------------------


def test_relaxation_api_is_exported():
    names = {
        "gumbel_softmax",
        "sample_one_hot",
        "read_groups",
        "grouping_loss",
        "temperature_schedule",
        "assignment_entropy",
    }
    assert names <= set(tgjax.__all__)
    for name in names:
        assert getattr(tgjax, name) is getattr(relax, name)


def test_docstring_examples_run():
    result = doctest.testmod(relax, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8
    assert result.failed == 0


# --- Relaxed samples ------------------------------------------------------


@SETTINGS
@given(shape=SHAPES, seed=SEEDS, tau=TAUS, hard=st.booleans())
def test_samples_lie_on_the_simplex(shape, seed, tau, hard):
    z = np.asarray(
        tgjax.gumbel_softmax(jax.random.key(seed), _logits(seed, shape), tau, hard=hard)
    )
    assert z.shape == shape
    assert np.all(z >= 0) and np.all(z <= 1)
    np.testing.assert_allclose(z.sum(axis=-1), 1.0, rtol=0, atol=1e-6)


@SETTINGS
@given(shape=SHAPES, seed=SEEDS)
def test_zero_temperature_limit_is_the_gumbel_max_one_hot(shape, seed):
    key, s = jax.random.key(seed), _logits(seed, shape)
    y = np.asarray(s + _gumbel(key, shape), np.float64)
    top = np.sort(y, axis=-1)[:, ::-1]
    margin = top[:, 0] - top[:, 1] if shape[1] > 1 else np.full(shape[0], np.inf)
    want = np.eye(shape[1])[np.argmax(y, axis=-1)]
    np.testing.assert_array_equal(np.asarray(tgjax.sample_one_hot(key, s)), want)

    # softmax(y / tau) misses the one-hot by at most (K - 1) exp(-margin / tau)
    # per row; the bound shrinks to 0 as tau -> 0.
    for tau in (1.0, 1e-1, 1e-2, 1e-3, 1e-6):
        z = np.asarray(tgjax.gumbel_softmax(key, s, tau), np.float64)
        bound = (shape[1] - 1) * np.exp(-margin / tau) + 1e-6
        assert np.all(np.abs(z - want).max(axis=-1) <= bound)
    z = np.asarray(tgjax.gumbel_softmax(key, s, 1e-6))
    clear = margin > 1e-4
    np.testing.assert_array_equal(z[clear], want[clear])


@SETTINGS
@given(shape=SHAPES, seed=SEEDS)
def test_infinite_temperature_limit_is_uniform(shape, seed):
    key, s = jax.random.key(seed), _logits(seed, shape)
    y = np.asarray(s + _gumbel(key, shape), np.float64)
    spread = np.ptp(y, axis=-1, keepdims=True)
    k = shape[1]
    # Every entry of softmax(y / tau) lies in [exp(-r) / K, exp(r) / K] with
    # r = (max y - min y) / tau, so it is within (exp(r) - 1) / K of 1 / K.
    for tau in (1e1, 1e3, 1e6):
        z = np.asarray(tgjax.gumbel_softmax(key, s, tau), np.float64)
        bound = np.expm1(spread / tau) / k + 1e-6
        assert np.all(np.abs(z - 1.0 / k) <= bound)
    z = np.asarray(tgjax.gumbel_softmax(key, s, 1e6))
    np.testing.assert_allclose(z, 1.0 / k, rtol=0, atol=1e-4)


def test_gumbel_max_frequencies_match_softmax():
    # Hoeffding per category with a union bound over the K categories:
    # P(any |freq_k - p_k| > eps) <= 2 K exp(-2 n eps^2) = 1e-7 < 1e-6 for
    # the eps below. The key is fixed, so the test is deterministic; a
    # correct sampler fails it for fewer than one key in ten million.
    n, logits = 200_000, jnp.array([1.5, 0.0, -1.0, 0.7], jnp.float32)
    k = logits.shape[0]
    eps = math.sqrt(math.log(2 * k / 1e-7) / (2 * n))
    draws = tgjax.sample_one_hot(jax.random.key(7), jnp.broadcast_to(logits, (n, k)))
    freq = np.asarray(draws, np.float64).mean(axis=0)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    assert eps < 0.01
    np.testing.assert_array_less(np.abs(freq - p), eps)


def test_one_sample_per_call_is_reproducible_and_keyed():
    s = _logits(0, (5, 4))
    a = tgjax.gumbel_softmax(jax.random.key(3), s, 1.0)
    b = tgjax.gumbel_softmax(jax.random.key(3), s, 1.0)
    c = tgjax.gumbel_softmax(jax.random.key(4), s, 1.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


# --- Straight-through samples --------------------------------------------


@SETTINGS
@given(shape=SHAPES, seed=SEEDS, tau=TAUS)
def test_straight_through_is_one_hot_with_the_relaxed_gradient(shape, seed, tau):
    key, s, loss = jax.random.key(seed), _logits(seed, shape), _loss_matrix(seed, shape)
    z = np.asarray(tgjax.gumbel_softmax(key, s, tau, hard=True))
    np.testing.assert_array_equal(z, np.asarray(tgjax.sample_one_hot(key, s)))
    np.testing.assert_array_equal(np.sort(z, axis=-1)[:, -1], 1.0)
    np.testing.assert_array_equal(z.sum(axis=-1), 1.0)
    g_hard = _relaxed_grad(s, key, loss, tau, hard=True)
    g_soft = _relaxed_grad(s, key, loss, tau, hard=False)
    np.testing.assert_array_equal(np.asarray(g_hard), np.asarray(g_soft))
    if shape[1] > 1:
        assert np.any(np.asarray(g_soft) != 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_straight_through_ties_give_one_one_per_row(dtype):
    # Logits so large that the float32 noise is lost in rounding: every row
    # ties exactly (float16 cannot hold such logits).
    s = jnp.full((4, 3), 1e30, dtype)
    for seed in range(3):
        z = np.asarray(tgjax.gumbel_softmax(jax.random.key(seed), s, 0.5, hard=True))
        np.testing.assert_array_equal(z, np.eye(3)[[0, 0, 0, 0]])
        z = np.asarray(tgjax.sample_one_hot(jax.random.key(seed), s))
        np.testing.assert_array_equal(z, np.eye(3)[[0, 0, 0, 0]])


# --- The closed-form S gradient of the relaxed objective -----------------


@SETTINGS
@given(shape=SHAPES, seed=SEEDS, tau=TAUS)
def test_assignment_gradient_has_the_closed_form(shape, seed, tau):
    key, s, loss = jax.random.key(seed), _logits(seed, shape), _loss_matrix(seed, shape)
    z = np.asarray(tgjax.gumbel_softmax(key, s, tau), np.float64)
    lm = np.asarray(loss, np.float64)
    want = z * (lm - np.sum(z * lm, axis=-1, keepdims=True)) / tau
    grad = np.asarray(_relaxed_grad(s, key, loss, tau), np.float64)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-5)

    # Row i of the gradient depends on row i of L only.
    for i in range(shape[0]):
        other = loss.at[np.arange(shape[0]) != i].add(3.0)
        moved = np.asarray(_relaxed_grad(s, key, other, tau), np.float64)
        np.testing.assert_array_equal(moved[i], grad[i])


@SETTINGS
@given(
    shape=SHAPES,
    seed=SEEDS,
    tau=TAUS,
    shift=st.lists(st.integers(-50, 50), min_size=5, max_size=5),
)
def test_adding_a_constant_to_a_row_changes_nothing(shape, seed, tau, shift):
    # Logits on a grid of eighths and integer shifts: both sums are exact.
    key, loss = jax.random.key(seed), _loss_matrix(seed, shape)
    s = jnp.round(_logits(seed, shape) * 8.0) / 8.0
    c = jnp.asarray(shift[: shape[0]], jnp.float32)[:, None]
    t = s + c
    np.testing.assert_allclose(
        np.asarray(tgjax.gumbel_softmax(key, t, tau)),
        np.asarray(tgjax.gumbel_softmax(key, s, tau)),
        atol=1e-3,
    )
    np.testing.assert_allclose(
        np.asarray(_relaxed_grad(t, key, loss, tau)),
        np.asarray(_relaxed_grad(s, key, loss, tau)),
        atol=2e-3,
    )
    np.testing.assert_array_equal(tgjax.read_groups(t), tgjax.read_groups(s))


# --- Theorems 1 and 2 at the objective level ------------------------------


def _task_losses(theta, x, y):
    """L_ik: squared error of task i predicted by a linear branch k."""
    pred = x @ theta.T  # [batch, groups]
    return jnp.mean((pred[:, None, :] - y[:, :, None]) ** 2, axis=0)


def _problem(n_tasks, n_groups):
    kx, ky, kt = jax.random.split(jax.random.key(11), 3)
    x = jax.random.normal(kx, (16, 3), jnp.float32)
    y = jax.random.normal(ky, (16, n_tasks), jnp.float32)
    theta = jax.random.normal(kt, (n_groups, 3), jnp.float32)
    return x, y, theta


def test_theorem_1_one_group_is_naive_multitask_learning():
    n = 4
    x, y, theta = _problem(n, 1)
    key, s = jax.random.key(0), _logits(0, (n, 1))

    def search(theta, s):
        z = tgjax.gumbel_softmax(key, s, 2.5)
        return tgjax.grouping_loss(z, _task_losses(theta, x, y)), z

    def naive(theta):
        return jnp.sum(jnp.mean(((x @ theta[0])[:, None] - y) ** 2, axis=0))

    (value, z), (g_theta, g_s) = jax.jit(
        jax.value_and_grad(search, argnums=(0, 1), has_aux=True)
    )(theta, s)
    want, want_grad = jax.jit(jax.value_and_grad(naive))(theta)
    # With K = 1 the relaxed sample is exactly one column of ones, S gets no
    # gradient and the objective is the naive sum of task losses.
    np.testing.assert_array_equal(np.asarray(z), np.ones((n, 1)))
    np.testing.assert_array_equal(np.asarray(g_s), 0.0)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_theta), np.asarray(want_grad), rtol=1e-5)

    # A column of ones among K > 1 columns picks out that branch's MTL loss.
    x, y, theta = _problem(n, 3)
    lm = _task_losses(theta, x, y)
    for k in range(3):
        z = jnp.zeros((n, 3), jnp.float32).at[:, k].set(1.0)
        np.testing.assert_allclose(
            float(tgjax.grouping_loss(z, lm)), float(jnp.sum(lm[:, k])), rtol=1e-6
        )


def test_theorem_2_identity_assignment_is_single_task_learning():
    n = 4
    x, y, theta = _problem(n, n)
    z = jnp.eye(n, dtype=jnp.float32)

    def search(theta):
        return tgjax.grouping_loss(z, _task_losses(theta, x, y))

    def single(theta):
        # Task i trained alone on its own branch i, for every i.
        return jnp.mean((x @ theta.T - y) ** 2, axis=0)

    value, grad = jax.jit(jax.value_and_grad(search))(theta)
    losses = single(theta)
    jac = jax.jit(jax.jacrev(single))(theta)  # [tasks, groups, features]
    np.testing.assert_allclose(float(value), float(jnp.sum(losses)), rtol=1e-6)
    for i in range(n):
        # Branch i is trained by task i alone, exactly as in its own run.
        np.testing.assert_allclose(
            np.asarray(grad[i]), np.asarray(jac[i, i]), rtol=1e-5
        )
    # Only the diagonal entries L_ii of the loss matrix enter the objective.
    d_loss = jax.grad(tgjax.grouping_loss, argnums=1)(z, _task_losses(theta, x, y))
    np.testing.assert_array_equal(np.asarray(d_loss), np.eye(n))


# --- Numerics and dtypes --------------------------------------------------

_GAPS = {jnp.float32: 1e30, jnp.bfloat16: 1e30, jnp.float16: 6e4}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("use_jit", [False, True])
def test_extreme_logits_and_temperatures_stay_finite(dtype, hard, use_jit):
    gap = _GAPS[dtype]
    s = jnp.array(
        [[gap, 0.0, -gap], [0.0, 0.0, 0.0], [-gap, gap, 1.0], [1.0, 1.0 + 1e-3, 0.0]],
        jnp.float32,
    ).astype(dtype)
    if dtype == jnp.float32:
        s = jnp.concatenate([s, jnp.array([[3e38, -3e38, 0.0]], jnp.float32)])
    weights = jnp.arange(s.size, dtype=jnp.float32).reshape(s.shape)

    def objective(s, tau):
        z = tgjax.gumbel_softmax(jax.random.key(1), s, tau, hard=hard)
        return jnp.sum(weights * z.astype(jnp.float32)), z

    fn = jax.value_and_grad(objective, has_aux=True)
    if use_jit:
        fn = jax.jit(fn)
    for tau in (1e-6, 1.0, 1e6):
        (value, z), grad = fn(s, jnp.float32(tau))
        assert z.dtype == dtype and grad.dtype == dtype
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(np.asarray(z, np.float32)))
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))
        np.testing.assert_allclose(
            np.asarray(z, np.float32).sum(axis=-1), 1.0, atol=1e-2
        )


def test_integer_logits_give_float32_samples():
    s = jnp.array([[3, 0], [0, 0]], jnp.int32)
    assert tgjax.gumbel_softmax(jax.random.key(0), s, 1.0).dtype == jnp.float32
    assert tgjax.sample_one_hot(jax.random.key(0), s).dtype == jnp.float32


@pytest.mark.parametrize(
    "tau",
    [
        0.0,
        -1.0,
        float("nan"),
        float("inf"),
        np.float32(-2.0),
        jnp.asarray(0.0),
        1e39,
        1e-40,
        True,
        "2.5",
        1 + 1j,
        np.ones(1, np.float32),
        jnp.ones((2,)),
    ],
)
def test_invalid_host_temperature_raises(tau):
    with pytest.raises(ValueError, match="tau"):
        tgjax.gumbel_softmax(jax.random.key(0), jnp.zeros((2, 2)), tau)
    with pytest.raises(ValueError, match="tau"):
        relax.canonical_tau(tau)


def test_traced_temperature_is_checked_for_shape():
    fn = jax.jit(lambda tau: tgjax.gumbel_softmax(jax.random.key(0), jnp.zeros(2), tau))
    with pytest.raises(ValueError, match="tau"):
        fn(jnp.ones(2))
    assert fn(jnp.float32(1e-6)).shape == (2,)


@pytest.mark.parametrize(
    "tau",
    [2.5, np.float32(2.5), np.float64(2.5), 2, jnp.asarray(2.5, jnp.bfloat16), 1e-6],
)
def test_valid_temperatures_canonicalise_to_one_type(tau):
    value = relax.canonical_tau(tau)
    assert type(value) is np.float32 and value == np.float32(float(tau))


# --- One compilation for a whole tau schedule -----------------------------

_TRACES = []


class _CountingBranch(nn.Module):
    """A branch that records each time it is traced."""

    @nn.compact
    def __call__(self, x):
        _TRACES.append(1)
        return nn.relu(nn.Dense(4)(x))


def _search_setup():
    tasks = [tgjax.Task(f"t{i}", "binary") for i in range(3)]
    model = tgjax.GroupedModel(_CountingBranch(), nn.Dense(2), 2, 3)
    opt = tgjax.make_optimizer(1e-2)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (32, 5), jnp.float32)
    y = jax.random.bernoulli(ky, 0.5, (32, 3)).astype(jnp.float32)
    init = jax.jit(lambda key, x: tgjax.init_state(model, opt, key, x))
    state = init(jax.random.key(1), x[:2])
    return model, tasks, opt, state, x, y


def test_train_step_compiles_once_for_a_tau_schedule():
    model, tasks, opt, state, x, y = _search_setup()
    step = tgjax.make_train_step(model, tasks, opt)
    schedule = tgjax.temperature_schedule("exponential", 4.0, final_value=0.5,
                                          decay_steps=20)  # fmt: skip
    kinds = [
        float,
        np.float32,
        np.float64,
        jnp.asarray,
        lambda v: jax.device_put(jnp.float32(v), jax.devices()[-1]),
    ]
    batch = {"x": x, "y": y}
    want = np.asarray(jax.vmap(schedule)(jnp.arange(20)))
    taus = []
    for i in range(20):
        tau = kinds[i % len(kinds)](float(want[i]))
        state, metrics = step(state, batch, tau)
        if i == 0:
            traces = len(_TRACES)
        taus.append(float(metrics["tau"]))
        assert bool(metrics["finite"])
    assert step.jitted._cache_size() == 1
    assert len(_TRACES) == traces
    np.testing.assert_allclose(taus, want)
    assert int(state.step) == 20
    with pytest.raises(ValueError, match="tau"):
        step(state, batch, 0.0)


def test_epoch_fn_compiles_once_across_epochs():
    model, tasks, opt, state, x, y = _search_setup()
    core = tgjax.make_train_step(model, tasks, opt, jit=False)
    traces = []

    def counted(st, batch, tau):
        traces.append(1)
        return core(st, batch, tau)

    schedule = tgjax.temperature_schedule("cosine", 4.0, final_value=0.5,
                                          decay_steps=12)  # fmt: skip
    epoch = tgjax.make_epoch_fn(counted, schedule, batch_size=8)
    taus = []
    for e in range(3):
        state, metrics = epoch(state, x, y, jax.random.key(e))
        taus.extend(np.asarray(metrics["tau"]).tolist())
    assert epoch._cache_size() == 1
    assert len(traces) == 1
    assert int(state.step) == 12
    np.testing.assert_allclose(taus, [float(schedule(i)) for i in range(12)], rtol=1e-6)
    assert taus[0] == 4.0 and taus[-1] < taus[0]


# --- Temperature schedules ------------------------------------------------


def _reference_schedule(kind, init, final, steps, t):
    frac = np.clip(t, 0, steps) / steps
    if kind == "constant":
        return np.full_like(frac, init)
    if kind == "exponential":
        return init * (final / init) ** frac
    return final + (init - final) * 0.5 * (1 + np.cos(np.pi * frac))


@pytest.mark.parametrize("kind", ["constant", "exponential", "cosine"])
@pytest.mark.parametrize(
    "init,final", [(4.0, 0.5), (2.5, 2.5), (3e38, 1.2e-38), (1e-30, 1e-37)]
)
def test_schedules_match_their_closed_forms_and_stay_positive(kind, init, final):
    steps = 50
    kw = {} if kind == "constant" else {"final_value": final, "decay_steps": steps}
    schedule = tgjax.temperature_schedule(kind, init, **kw)
    t = np.arange(-5, 3 * steps)
    got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(t)), np.float64)
    floor = init if kind == "constant" else final
    assert np.all(got > 0)
    assert np.all(got >= np.float32(floor)) and np.all(got <= np.float32(init))
    assert np.all(np.diff(got) <= 0)
    want = _reference_schedule(kind, init, floor, steps, t)
    # float32 rounding of an exponent near 88 for the widest ratio.
    np.testing.assert_allclose(got, want, rtol=1e-4 if init / floor > 1e30 else 1e-5)
    assert float(schedule(10**9)) == pytest.approx(floor, rel=1e-6)
    assert schedule(3).dtype == jnp.float32


@pytest.mark.parametrize(
    "args,kwargs,name",
    [
        (("linear", 2.0), {}, "kind"),
        ((None, 2.0), {}, "kind"),
        (("constant", 0.0), {}, "init_value"),
        (("constant", -1.0), {}, "init_value"),
        (("constant", float("nan")), {}, "init_value"),
        (("constant", "2.5"), {}, "init_value"),
        (("constant", 1e39), {}, "init_value"),
        (("constant", 2.0), {"decay_steps": 10}, "decay_steps"),
        (("constant", 2.0), {"final_value": 1.0}, "final_value"),
        (("cosine", 2.0), {"decay_steps": 10}, "final_value"),
        (("exponential", 2.0), {"final_value": 1.0}, "decay_steps"),
        (("cosine", 2.0), {"final_value": 0.0, "decay_steps": 10}, "final_value"),
        (("cosine", 2.0), {"final_value": 1e-45, "decay_steps": 10}, "final_value"),
        (("cosine", 2.0), {"final_value": 3.0, "decay_steps": 10}, "final_value"),
        (("exponential", 2.0), {"final_value": 1.0, "decay_steps": 0}, "decay_steps"),
        (("exponential", 2.0), {"final_value": 1.0, "decay_steps": 2.5}, "decay_steps"),
        (
            ("exponential", 2.0),
            {"final_value": 1.0, "decay_steps": True},
            "decay_steps",
        ),
        (("exponential", 2.0), {"final_value": 1.0, "decay_steps": "9"}, "decay_steps"),
    ],
)
def test_invalid_schedule_arguments_name_the_argument(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        tgjax.temperature_schedule(*args, **kwargs)


# --- The objective with missing tasks -------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_masked_tasks_contribute_exactly_zero(bad):
    key, s = jax.random.key(0), _logits(0, (4, 3))
    loss = _loss_matrix(0, (4, 3)).at[1].set(bad).at[3, 0].set(bad)
    mask = jnp.array([True, False, True, False])

    def objective(s, loss):
        z = tgjax.gumbel_softmax(key, s, 2.5)
        return tgjax.grouping_loss(z, loss, mask=mask)

    value, (g_s, g_loss) = jax.value_and_grad(objective, argnums=(0, 1))(s, loss)
    z = tgjax.gumbel_softmax(key, s, 2.5)
    want = float(jnp.sum((z * loss)[jnp.array([0, 2])]))
    assert float(value) == pytest.approx(want, rel=1e-6)
    g_s, g_loss = np.asarray(g_s), np.asarray(g_loss)
    assert np.all(np.isfinite(g_s)) and np.all(np.isfinite(g_loss))
    np.testing.assert_array_equal(g_s[[1, 3]], 0.0)
    np.testing.assert_array_equal(g_loss[[1, 3]], 0.0)
    np.testing.assert_allclose(g_loss[[0, 2]], np.asarray(z)[[0, 2]])

    # The same objective without the masked tasks, and under jit.
    keep = jnp.array([0, 2])
    np.testing.assert_allclose(
        float(jax.jit(objective)(s, loss)),
        float(tgjax.grouping_loss(z[keep], loss[keep])),
        rtol=1e-6,
    )


def test_grouping_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="loss_matrix"):
        tgjax.grouping_loss(jnp.ones((2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="mask"):
        tgjax.grouping_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), mask=jnp.ones(3, bool))


# --- Reading off the groups -----------------------------------------------


def test_read_groups_breaks_ties_at_the_lowest_index():
    s = np.array(
        [[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]],
        np.float32,
    )
    groups = tgjax.read_groups(s)
    assert groups.dtype == np.int32 and groups.shape == (4,)
    assert groups.tolist() == [0, 1, 0, 2]
    assert tgjax.read_groups(jnp.asarray(s, jnp.bfloat16)).tolist() == [0, 1, 0, 2]


def test_read_groups_names_the_task_with_nan():
    s = np.zeros((4, 3), np.float32)
    s[2, 1] = np.nan
    s[3, 0] = np.nan
    with pytest.raises(ValueError, match="task 2 "):
        tgjax.read_groups(jnp.asarray(s))
    with pytest.raises(ValueError, match="tasks, groups"):
        tgjax.read_groups(np.zeros(3))


# --- The entropy regulariser ----------------------------------------------


def test_entropy_matches_its_definition_and_bounds():
    s = _logits(2, (5, 4))
    p = np.asarray(jax.nn.softmax(s), np.float64)
    want = -np.sum(p * np.log(p), axis=-1)
    got = np.asarray(tgjax.assignment_entropy(s))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got >= 0) and np.all(got <= np.log(4) + 1e-6)
    assert tgjax.assignment_entropy(s.astype(jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_entropy_is_finite_at_saturation_without_any_nan_inside(dtype):
    big = 6e4 if dtype == jnp.float16 else 1e30
    s = jnp.array([[big, 0.0, -big], [0.0, 200.0, 0.0], [1.0, 1.0, 1.0]], dtype)
    if dtype == jnp.float32:
        s = jnp.concatenate([s, jnp.array([[3e38, -3e38, 0.0]], jnp.float32)])
    with jax.debug_nans(True):
        value = tgjax.assignment_entropy(s)
        grad = jax.grad(lambda s: jnp.sum(tgjax.assignment_entropy(s)))(s)
        jit_grad = jax.jit(jax.grad(lambda s: jnp.sum(tgjax.assignment_entropy(s))))(s)
    value = np.asarray(value)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(np.asarray(grad, "f4")))
    np.testing.assert_array_equal(np.asarray(jit_grad), np.asarray(grad))
    np.testing.assert_allclose(value[:2], 0.0, atol=1e-6)
    np.testing.assert_allclose(value[2], np.log(3), rtol=1e-6)
