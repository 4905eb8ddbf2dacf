"""The vmap and loop evaluations of the K branches agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tgjax
from tgjax.model import CelebAEncoder

K, N, B = 3, 4, 6


def _model(branch, strategy, backbone=None, init="independent"):
    return tgjax.GroupedModel(
        branch,
        nn.Dense(2),
        K,
        N,
        backbone=backbone,
        init=init,
        branch_strategy=strategy,
    )


BRANCHES = {
    "mlp": (tgjax.MLP((16, 8)), (B, 5), None),
    "conv_bn": (CelebAEncoder(width=4), (B, 16, 16, 3), None),
    "conv_bn_backbone": (CelebAEncoder(width=4), (B, 16, 16, 2), nn.Dense(3)),
}


def _tree_close(a, b, rtol=1e-5, atol=1e-5):
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(
            np.asarray(u), np.asarray(v), rtol=rtol, atol=atol
        ),
        a,
        b,
    )


@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_vmap_and_loop_give_same_outputs_state_and_gradients(name):
    branch, shape, backbone = BRANCHES[name]
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32)
    vm, lp = (_model(branch, s, backbone) for s in ("vmap", "loop"))
    params, state = vm.init_variables(jax.random.key(0), x)
    params_lp, _ = lp.init_variables(jax.random.key(0), x)
    _tree_close(params, params_lp, rtol=0, atol=0)  # same layout and values

    def loss(p, model):
        out, new_state = model.apply(p, state, x, train=True)
        return jnp.sum(jnp.sin(out)), (out, new_state)

    results = {}
    for model in (vm, lp):
        grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
        results[model.branch_strategy] = grad_fn(params, model)
    (g_vm, (out_vm, st_vm)), (g_lp, (out_lp, st_lp)) = results["vmap"], results["loop"]
    assert out_vm.shape == (K, N, B, 2)
    _tree_close(out_vm, out_lp)
    _tree_close(st_vm, st_lp)
    _tree_close(g_vm, g_lp)


def test_train_steps_agree_between_strategies():
    branch, shape, _ = BRANCHES["conv_bn"]
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32)
    y = jax.random.bernoulli(jax.random.key(2), 0.5, (B, N)).astype(jnp.float32)
    tasks = [tgjax.Task(f"t{i}", "binary") for i in range(N)]
    opt = tgjax.make_optimizer(1e-2)
    new_states = []
    for strategy in ("vmap", "loop"):
        model = _model(branch, strategy, init="tied")
        state = tgjax.init_state(model, opt, jax.random.key(0), x)
        step = tgjax.make_train_step(model, tasks, opt)
        for _ in range(2):
            state, metrics = step(state, {"x": x, "y": y}, 2.5)
        assert bool(metrics["finite"])
        new_states.append(state)
    _tree_close(new_states[0].params, new_states[1].params, rtol=1e-4, atol=1e-5)
    _tree_close(new_states[0].assignment, new_states[1].assignment, atol=1e-5)
    _tree_close(new_states[0].model_state, new_states[1].model_state)


def test_auto_resolves_by_backend_and_branch():
    conv = _model(CelebAEncoder(width=4), "auto")
    mlp = _model(tgjax.MLP((8,)), "auto")
    images = jnp.zeros((2, 16, 16, 3), jnp.float32)
    on_cpu = jax.default_backend() == "cpu"
    assert conv.resolved_branch_strategy(images) == ("loop" if on_cpu else "vmap")
    assert mlp.resolved_branch_strategy(jnp.zeros((2, 5), jnp.float32)) == "vmap"
    assert _model(tgjax.MLP((8,)), "loop").resolved_branch_strategy(images) == "loop"


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="branch_strategy must be one of"):
        _model(tgjax.MLP((8,)), "unrolled")


@pytest.mark.parametrize(
    "shape", [(2, 11, 12, 3), (2, 64, 64, 4), (1, 3, 3, 1), (3, 8, 7, 2)]
)
def test_max_pool_matches_window_max_pool(shape):
    from tgjax.model import max_pool_3x3_stride2

    # Small integers make many tied maxima; the gradient must still go to
    # each window's first maximum, as select-and-scatter sends it.
    rng = np.random.default_rng(sum(shape))
    h = jnp.asarray(rng.integers(-3, 4, shape), jnp.float32)

    def ref(a):
        return nn.max_pool(a, (3, 3), strides=(2, 2), padding="VALID")

    out = ref(h)
    np.testing.assert_array_equal(max_pool_3x3_stride2(h), out)
    g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    want = jax.vjp(ref, h)[1](g)[0]
    got = jax.jit(lambda h, g: jax.vjp(max_pool_3x3_stride2, h)[1](g)[0])(h, g)
    batched = jax.vmap(lambda h, g: jax.vjp(max_pool_3x3_stride2, h)[1](g)[0])(
        h[None], g[None]
    )[0]
    # Equal up to the order in which overlapping windows' gradients add.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched, want, rtol=0, atol=1e-6)
    # A wrong tap would move whole gradient values, not rounding errors.
    assert np.count_nonzero(np.asarray(got)) == np.count_nonzero(np.asarray(want))
