"""Device meshes, shardings and JAX's multi-process runtime.

The search runs on a 2-D mesh with axes ``data`` and ``groups``:

* ``data`` shards every batch (and the device-resident training split) by
  rows, so each device sees ``batch_size / data`` examples per step;
* ``groups`` shards the stacked K axis of branch and head parameters (and of
  their optimizer moments and model state), so the K branches spread over
  devices;
* the assignment logits S, the shared backbone, the step and the key are
  small and replicated.

A mesh is written ``"data=4,groups=2"``. Without a spec every device goes on
the ``data`` axis. On several hosts, call :func:`initialize` first in every
process; the mesh then spans all processes' devices, with ``groups`` the
faster-varying axis so the branch shards of one data replica stay on one host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "groups")
# Parameter collections whose leaves carry the stacked `groups` axis first.
GROUPED_COLLECTIONS = ("branches", "heads")

_SPEC = re.compile(r"^\s*(data|groups)\s*=\s*(\d+)\s*$")


def parse_mesh(spec: str | Mapping[str, int] | None) -> dict[str, int]:
    """Reads a mesh spec such as ``"data=4,groups=2"``.

    Args:
      spec: comma-separated ``axis=size`` pairs over the axes ``data`` and
        ``groups``, a mapping of the same, or None (no constraint).

    Returns:
      A dict with the axes that were given, each a size >= 1.

    Raises:
      ValueError: for an unknown axis, a repeated axis or a size < 1.

    Example:
      >>> parse_mesh("data=4,groups=2")
      {'data': 4, 'groups': 2}
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            m = _SPEC.match(part)
            if m is None:
                raise ValueError(
                    f"mesh must be comma-separated axis=size pairs over the axes "
                    f"{AXES}, such as 'data=4,groups=2'; got {spec!r}."
                )
            items.append((m.group(1), int(m.group(2))))
    sizes: dict[str, int] = {}
    for name, size in items:
        if name not in AXES:
            raise ValueError(f"mesh axis must be one of {AXES}, got {name!r}.")
        if name in sizes:
            raise ValueError(f"mesh names the axis {name!r} twice in {spec!r}.")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ValueError(f"mesh size of {name!r} must be an integer, got {size!r}.")
        if size < 1:
            raise ValueError(f"mesh size of {name!r} must be >= 1, got {size}.")
        sizes[name] = int(size)
    return sizes


def make_mesh(
    spec: str | Mapping[str, int] | None = None,
    *,
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """A ``(data, groups)`` mesh over the first ``data * groups`` devices.

    Args:
      spec: see :func:`parse_mesh`. A missing ``groups`` is 1; a missing
        ``data`` takes all remaining devices (``len(devices) // groups``).
      devices: devices to use; all devices of all processes by default.

    Returns:
      A :class:`jax.sharding.Mesh` with axes ``("data", "groups")``.

    Raises:
      ValueError: if the mesh needs more devices than there are, or, with
        several processes, does not use every device.

    Example:
      >>> make_mesh("data=1").shape
      {'data': 1, 'groups': 1}
    """
    sizes = parse_mesh(spec)
    devices = list(jax.devices() if devices is None else devices)
    groups = sizes.get("groups", 1)
    data = sizes.get("data", max(len(devices) // groups, 1))
    need = data * groups
    if need > len(devices):
        raise ValueError(
            f"mesh data={data},groups={groups} needs {need} devices, but "
            f"{len(devices)} {'is' if len(devices) == 1 else 'are'} available; "
            f"choose sizes whose product is at most {len(devices)}."
        )
    if jax.process_count() > 1 and need != len(devices):
        raise ValueError(
            f"With {jax.process_count()} processes the mesh must use all "
            f"{len(devices)} devices, got data={data},groups={groups} ({need})."
        )
    grid = np.empty(need, dtype=object)
    grid[:] = devices[:need]
    return Mesh(grid.reshape(data, groups), AXES)


def check_fits(
    mesh: Mesh, *, num_groups: int, batch_size: int, baseline: str | None = None
) -> None:
    """Checks that K and the batch split evenly over the mesh.

    Raises:
      ValueError: if ``num_groups`` is not divisible by the ``groups`` axis or
        ``batch_size`` by the ``data`` axis, saying how to fix it.
    """
    data, groups = mesh.shape["data"], mesh.shape["groups"]
    if num_groups % groups:
        divisors = [d for d in range(1, num_groups + 1) if num_groups % d == 0]
        fits = (
            "--mesh groups=1"
            if len(divisors) == 1
            else f"--mesh groups=G with G one of {divisors}"
        )
        if baseline is not None:
            # K is fixed by the baseline; only the mesh can change.
            raise ValueError(
                f"--baseline {baseline} runs K={num_groups} group(s), which the "
                f"mesh's groups axis ({groups}) does not divide; use {fits}, or "
                "drop --baseline to search with --groups "
                f"{groups * -(-num_groups // groups)}."
            )
        raise ValueError(
            f"The number of groups K={num_groups} must be divisible by the mesh's "
            f"groups axis ({groups}); use --groups {groups * -(-num_groups // groups)}"
            f" or a groups axis that divides {num_groups}."
        )
    if batch_size % data:
        raise ValueError(
            f"batch_size ({batch_size}) must be divisible by the mesh's data axis "
            f"({data}); use --batch-size {data * max(batch_size // data, 1)} or "
            f"--mesh data=<a divisor of {batch_size}>."
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over ``data``, copies over ``groups``."""
    return NamedSharding(mesh, PartitionSpec("data"))


def _is_grouped(path) -> bool:
    return any(
        isinstance(k, jax.tree_util.DictKey) and k.key in GROUPED_COLLECTIONS
        for k in path
    )


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings of a training state: the `groups` axis of branches and heads.

    Every leaf below a ``branches`` or ``heads`` key (parameters, model state
    and the optimizer moments that mirror them) is split over the mesh's
    ``groups`` axis along its leading `[groups, ...]` dimension; every other
    leaf (S, the backbone, counters, keys) is replicated.

    Args:
      tree: a pytree of arrays or shape structs, such as a ``SearchState``.
      mesh: from :func:`make_mesh`.

    Returns:
      A pytree of :class:`NamedSharding` with the structure of ``tree``.
    """
    grouped = NamedSharding(mesh, PartitionSpec("groups"))
    full = replicated(mesh)

    def one(path, leaf):
        return grouped if _is_grouped(path) and np.ndim(leaf) >= 1 else full

    return jax.tree_util.tree_map_with_path(one, tree)


def put_rows(array: np.ndarray, mesh: Mesh, *, fill: float = 0.0) -> jax.Array:
    """A host array as a global array split by rows over ``data``.

    Rows are padded with ``fill`` up to a multiple of the ``data`` axis; the
    padding is never read by the search, whose data order only covers the
    real rows. Each process transfers only the rows of its own devices, so on
    several hosts every process feeds just its shard.

    Args:
      array: `[examples, ...]`, the same in every process.
      mesh: from :func:`make_mesh`.
      fill: value of the padding rows (NaN for labels marks them missing).

    Returns:
      A `[padded_examples, ...]` :class:`jax.Array` sharded as
      :func:`rows_sharding`.
    """
    array = np.asarray(array)
    data = mesh.shape["data"]
    pad = -len(array) % data
    if pad:
        filler = np.full((pad,) + array.shape[1:], fill, array.dtype)
        array = np.concatenate([array, filler])
    sharding = rows_sharding(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
) -> None:
    """Starts JAX's multi-process runtime (one call per process, first thing).

    Arguments left as None are read by :func:`jax.distributed.initialize` from
    the environment (Cloud TPU metadata, SLURM, Open MPI or the
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    variables).

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator.
      num_processes: number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: devices this process drives (e.g. one GPU each).
      cpu_collectives: collectives backend of CPU devices (``"gloo"``), so
        CPU-only runs can sum across processes; None leaves JAX's choice.
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
        "local_device_ids": local_device_ids,
    }
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
