"""The search on device meshes: same numbers as one device, sharded weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import tgjax
from tgjax.distributed import check_fits, make_mesh, parse_mesh
from tgjax.relax import read_groups
from tgjax.search import chunk_bounds, run_search
from tgjax.tasks import Task

K, N, BATCH, EXAMPLES = 4, 3, 16, 168  # 10 steps per epoch, 8 padding rows


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(EXAMPLES, 5)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 1] > 0], 1)
    y = y.astype(np.float32)
    y[::7, 2] = np.nan  # some missing labels
    return x, y, [Task(n, "binary") for n in "abc"]


def _search(mesh, *, epochs=2, sample_scope="batch", **kw):
    x, y, tasks = _problem()
    model = tgjax.GroupedModel(
        tgjax.MLP((8,)), nn.Dense(2), num_groups=K, num_tasks=N, init="independent"
    )
    opt = tgjax.make_optimizer(1e-2, assignment_learning_rate=5e-2)
    step = tgjax.make_train_step(
        model, tasks, opt, sample_scope=sample_scope, sample_shards=mesh.shape["data"]
    )

    def init():
        return tgjax.init_state(model, opt, jax.random.key(3), jnp.asarray(x[:2]))

    return run_search(
        init,
        step.core,
        lambda s: jnp.float32(2.5),
        x=x,
        y=y,
        seed=0,
        epochs=epochs,
        batch_size=BATCH,
        mesh=mesh,
        log_every=1,
        **kw,
    )


@pytest.fixture(scope="module")
def one_device():
    return _search(make_mesh("data=1"))


@pytest.mark.parametrize("spec", ["data=8", "data=4,groups=2", "data=2,groups=4"])
def test_mesh_shapes_give_the_loss_trajectory_and_groups_of_one_device(
    one_device, spec
):
    ref_state, ref_hist = one_device
    state, hist = _search(make_mesh(spec))
    assert [h["step"] for h in hist] == list(range(20))
    ref_loss = np.array([h["loss"] for h in ref_hist])
    np.testing.assert_allclose([h["loss"] for h in hist], ref_loss, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(state.assignment), np.asarray(ref_state.assignment), atol=1e-5
    )
    # S moved away from its start, so equal groups are not a tie at init.
    assert float(jnp.std(ref_state.assignment)) > 1e-2
    np.testing.assert_array_equal(
        read_groups(state.assignment), read_groups(ref_state.assignment)
    )


def test_branch_and_head_weights_are_split_over_the_groups_axis():
    mesh = make_mesh("data=2,groups=4")
    state, _ = _search(mesh, epochs=1)
    kernel = state.params["branches"]["Dense_0"]["kernel"]  # [groups, in, out]
    assert kernel.sharding.spec == PartitionSpec("groups")
    assert {s.data.shape[0] for s in kernel.addressable_shards} == {K // 4}
    head = state.params["heads"]["kernel"]  # [groups, tasks, in, out]
    assert {s.data.shape[0] for s in head.addressable_shards} == {K // 4}
    # Adam's moments of the branches follow their weights; S stays whole.
    mu = state.opt_state.inner_states["weights"].inner_state[0].mu
    assert mu["params"]["branches"]["Dense_0"]["kernel"].sharding.spec == (
        PartitionSpec("groups")
    )
    assert state.assignment.sharding.is_fully_replicated


def test_device_sample_scope_draws_one_assignment_per_data_shard():
    # One shard is the same objective as one sample for the whole batch only
    # in expectation; with two shards the run differs from one sample.
    mesh = make_mesh("data=2")
    _, per_device = _search(mesh, epochs=1, sample_scope="device")
    _, per_batch = _search(mesh, epochs=1)
    a = np.array([h["loss"] for h in per_device])
    b = np.array([h["loss"] for h in per_batch])
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)
    # The per-device draws are a function of the data axis size, not of the
    # physical layout: the same on a (2, 2) mesh.
    _, again = _search(make_mesh("data=2,groups=2"), epochs=1, sample_scope="device")
    np.testing.assert_allclose([h["loss"] for h in again], a, atol=1e-5)


def test_parse_mesh_reads_sizes_and_rejects_bad_specs():
    assert parse_mesh("data=4, groups=2") == {"data": 4, "groups": 2}
    assert parse_mesh(None) == {}
    for bad, words in [
        ("data=4,model=2", "axis=size"),
        ("data=0", ">= 1"),
        ("data=2,data=2", "twice"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_mesh(bad)
    with pytest.raises(ValueError, match="mesh"):
        tgjax.RunConfig(mesh="data=x")


def test_mesh_sizes_that_do_not_fit_are_clear_errors():
    with pytest.raises(ValueError, match="needs 16 devices, but 8 are available"):
        make_mesh("data=8,groups=2")
    mesh = make_mesh("data=4,groups=2")
    with pytest.raises(ValueError, match="K=3 must be divisible .* groups axis"):
        check_fits(mesh, num_groups=3, batch_size=16)
    with pytest.raises(ValueError, match=r"batch_size \(18\) .* data axis \(4\)"):
        check_fits(mesh, num_groups=4, batch_size=18)
    assert make_mesh().shape == {"data": 8, "groups": 1}


def test_chunks_end_at_epochs_and_checkpoint_steps():
    assert chunk_bounds(0, 10, 5) == [(0, 5), (5, 10)]
    assert chunk_bounds(0, 10, 5, 3) == [(0, 3), (3, 5), (5, 6), (6, 9), (9, 10)]
    # A resumed run starts at a checkpoint and continues with the same chunks.
    assert chunk_bounds(6, 10, 5, 3) == chunk_bounds(0, 10, 5, 3)[3:]
