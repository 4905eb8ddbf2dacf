"""The search stage on a device mesh, in checkpointed chunks of steps.

The search is a sequence of compiled chunks: each is one ``lax.scan`` over a
run of consecutive steps of one epoch, on data that stays on the devices.
Chunks end at every epoch's end and, when checkpointing, at every multiple of
``checkpoint_every``, so checkpoints land on step boundaries and a resumed run
executes exactly the same chunks as an uninterrupted one.

Everything a step depends on is a function of the state and the seed: the
step key is ``fold_in(state.key, state.step)``, the data order of epoch e is
the permutation drawn with ``fold_in(k_data, e)`` and the position inside it
is ``state.step - e * steps_per_epoch``, and tau and the learning rates are
functions of the step. A checkpoint of the state is therefore all a resumed
run needs to continue bit for bit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from tgjax.checkpoint import Checkpoints
from tgjax.distributed import (
    put_rows,
    replicated,
    rows_sharding,
    state_shardings,
)
from tgjax.validate import find_fault

Callback = Callable[[str, dict], None]


def chunk_bounds(
    start: int, total: int, steps_per_epoch: int, checkpoint_every: int = 0
) -> list[tuple[int, int]]:
    """Half-open step ranges ``[begin, end)`` of the compiled chunks.

    A chunk never crosses an epoch's end nor a multiple of
    ``checkpoint_every`` (0: epoch ends only).

    Example:
      >>> chunk_bounds(0, 10, 5, 3)
      [(0, 3), (3, 5), (5, 6), (6, 9), (9, 10)]
    """
    bounds = []
    s = start
    while s < total:
        end = min((s // steps_per_epoch + 1) * steps_per_epoch, total)
        if checkpoint_every:
            end = min(end, (s // checkpoint_every + 1) * checkpoint_every)
        bounds.append((s, end))
        s = end
    return bounds


def data_key(seed: int) -> jax.Array:
    """The key of the data order (the second half of the seed's split)."""
    return jax.random.split(jax.random.key(seed))[1]


def make_chunk_fn(
    step_fn: Callable,
    tau_schedule: Callable,
    *,
    seed: int,
    num_examples: int,
    batch_size: int,
    mesh: Mesh,
    shardings: Any,
) -> Callable:
    """A compiled run of consecutive search steps on ``mesh``.

    Args:
      step_fn: the pure step ``(state, batch, tau) -> (state, metrics)``.
      tau_schedule: tau as a function of the step.
      seed: the run's seed; the data order of epoch e is drawn with
        ``fold_in(data_key(seed), e)``.
      num_examples: real rows of the training split (padding excluded).
      batch_size: global examples per step.
      mesh: the device mesh.
      shardings: the state's shardings (from
        :func:`tgjax.distributed.state_shardings`).

    Returns:
      ``chunk(state, x, y, epoch, offset, length) -> (state, metrics)``
      running steps ``offset .. offset + length - 1`` of ``epoch``; ``x`` and
      ``y`` are `[examples, ...]` and `[examples, tasks]` sharded by rows,
      metrics are stacked `[length, ...]` and replicated.
    """
    steps = num_examples // batch_size
    rows = rows_sharding(mesh)
    full = replicated(mesh)

    def chunk(state, x, y, epoch, offset, length):
        key = jax.random.fold_in(data_key(seed), epoch)
        perm = jax.random.permutation(key, num_examples)[: steps * batch_size]
        perm = perm.reshape(steps, batch_size)
        order = jax.lax.dynamic_slice_in_dim(perm, offset, length)

        def body(st, idx):
            st = jax.lax.with_sharding_constraint(st, shardings)
            batch = {
                "x": jax.lax.with_sharding_constraint(x[idx], rows),
                "y": jax.lax.with_sharding_constraint(y[idx], rows),
            }
            return step_fn(st, batch, tau_schedule(st.step))

        return jax.lax.scan(body, state, order)

    return jax.jit(
        chunk,
        static_argnums=5,
        in_shardings=(shardings, rows, rows, full, full),
        out_shardings=(shardings, full),
        donate_argnums=0,
    )


def run_search(
    init_fn: Callable[[], Any],
    step_fn: Callable,
    tau_schedule: Callable,
    *,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    epochs: int,
    batch_size: int,
    mesh: Mesh,
    log_every: int = 10,
    learning_rate: Callable[[int], float] | None = None,
    assignment_learning_rate: Callable[[int], float] | None = None,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    callback: Callback | None = None,
    check: Callable[[dict, int], None] | None = None,
    epoch_end: Callable[[Any, int, np.ndarray], None] | None = None,
) -> tuple[Any, list[dict]]:
    """Runs (or resumes) the search's epoch loop.

    Args:
      init_fn: traceable ``() -> SearchState`` of the initial state.
      step_fn: the pure step.
      tau_schedule: tau of a step.
      x, y: the training split, `[examples, ...]` and `[examples, tasks]`,
        the same in every process (each process transfers only its rows).
      seed, epochs, batch_size: as in :class:`tgjax.RunConfig`.
      mesh: from :func:`tgjax.distributed.make_mesh`.
      log_every: steps between logged records (plus each epoch's last).
      learning_rate: the weights' learning rate of a step, for the records.
      assignment_learning_rate: S's learning rate of a step, for the records.
      checkpoints: where to save; None saves nothing.
      checkpoint_every: steps between checkpoints; 0 at each epoch's end.
        The final step is always saved.
      resume: continue from the newest readable checkpoint.
      callback: receives ``"resume"`` (step, skipped) and ``"log"`` events.
      check: called as ``check(metrics, index, first)`` when step ``index``
        of the chunk starting at step ``first`` has a non-finite value, after
        the steps before it were logged; raises to stop the run.
      epoch_end: called as ``epoch_end(state, epoch, losses)`` after each
        epoch, with the epoch's `[steps]` losses.

    Returns:
      ``(state, history)``: the final state (sharded on ``mesh``) and the
      records logged in this call.

    Raises:
      FileNotFoundError: if ``resume`` finds no readable checkpoint.
      ValueError: if ``checkpoints`` already holds checkpoints and
        ``resume`` is False, or ``resume`` is True without ``checkpoints``.
    """
    if resume and checkpoints is None:
        raise ValueError(
            "resume=True needs the checkpoints to resume from; pass checkpoints."
        )
    n = len(x)
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * epochs
    shapes = jax.eval_shape(init_fn)
    shardings = state_shardings(shapes, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)()

    start = 0
    epoch_losses: list[np.ndarray] = []
    if checkpoints is not None and resume:
        restored = checkpoints.restore_latest(state)
        if "stream" in restored.meta:
            raise ValueError(
                f"{checkpoints.directory} holds checkpoints of a streamed search; "
                "resume it streamed (--stream)."
            )
        state = jax.device_put(restored.tree, shardings)
        start = restored.step
        if start % steps_per_epoch:
            partial = restored.meta.get("epoch_losses", [])
            epoch_losses.append(np.asarray(partial, np.float32))
        _emit(
            callback,
            "resume",
            {"step": start, "skipped": [list(s) for s in restored.skipped]},
        )
    elif checkpoints is not None and checkpoints.steps():
        raise ValueError(
            f"{checkpoints.directory} already holds checkpoints "
            f"{checkpoints.steps()}; resume from them or use an empty folder."
        )

    chunk_fn = make_chunk_fn(
        step_fn,
        tau_schedule,
        seed=seed,
        num_examples=n,
        batch_size=batch_size,
        mesh=mesh,
        shardings=shardings,
    )
    x_dev = put_rows(x, mesh)
    y_dev = put_rows(np.asarray(y, np.float32), mesh, fill=np.nan)

    history: list[dict] = []
    every = checkpoint_every if checkpoints is not None else 0
    for begin, end in chunk_bounds(start, total, steps_per_epoch, every):
        epoch, offset = divmod(begin, steps_per_epoch)
        state, metrics = chunk_fn(state, x_dev, y_dev, epoch, offset, end - begin)
        metrics = jax.device_get(metrics)
        _after_chunk(
            state,
            metrics,
            begin,
            end,
            steps_per_epoch=steps_per_epoch,
            total=total,
            every=every,
            log_every=log_every,
            learning_rate=learning_rate,
            assignment_learning_rate=assignment_learning_rate,
            checkpoints=checkpoints,
            callback=callback,
            check=check,
            epoch_end=epoch_end,
            epoch_losses=epoch_losses,
            history=history,
        )
    return state, history


def _after_chunk(
    state,
    metrics: dict,
    begin: int,
    end: int,
    *,
    steps_per_epoch: int,
    total: int,
    every: int,
    log_every: int,
    learning_rate,
    assignment_learning_rate,
    checkpoints: Checkpoints | None,
    callback: Callback | None,
    check,
    epoch_end,
    epoch_losses: list,
    history: list,
    meta: dict | None = None,
) -> None:
    """Logs, checks, ends epochs and checkpoints after steps ``[begin, end)``.

    ``metrics`` are the host copies of the steps' stacked metrics;
    ``epoch_losses`` collects the losses of the epoch in progress and
    ``history`` the logged records (both are extended in place). ``meta``
    adds entries to the checkpoint's record.
    """
    epoch = begin // steps_per_epoch
    # Steps before a fault are logged, so the metrics so far are kept.
    bad = find_fault(metrics)
    good_end = end if bad is None else begin + bad
    for j, s in enumerate(range(begin, good_end)):
        if s % log_every == 0 or (s + 1) % steps_per_epoch == 0:
            record = {
                "phase": "search",
                "step": s,
                "epoch": epoch,
                "loss": float(metrics["loss"][j]),
                "tau": float(metrics["tau"][j]),
                "learning_rate": float(learning_rate(s))
                if learning_rate is not None
                else None,
                "assignment_learning_rate": float(assignment_learning_rate(s))
                if assignment_learning_rate is not None
                else None,
                "probabilities": np.asarray(metrics["probabilities"][j]).tolist(),
                "loss_matrix": np.asarray(metrics["loss_matrix"][j]).tolist(),
            }
            history.append(record)
            _emit(callback, "log", record)
    if bad is not None:
        if check is not None:
            check(metrics, bad, begin)
        raise FloatingPointError(f"Step {begin + bad} produced a non-finite value.")
    epoch_losses.append(np.asarray(metrics["loss"]))
    if end % steps_per_epoch == 0:
        losses = np.concatenate(epoch_losses)
        epoch_losses.clear()
        if epoch_end is not None:
            epoch_end(state, epoch, losses)
    due = (every and end % every == 0) or (not every and end % steps_per_epoch == 0)
    if checkpoints is not None and (due or end == total):
        # The losses of a part-done epoch complete its mean after a resume.
        partial = [float(v) for v in np.concatenate([[], *epoch_losses])]
        record = {"stage": "search", "step": end, "epoch_losses": partial}
        checkpoints.save(end, state, {**record, **(meta or {})})


class Prefetcher:
    """Reads batches in a background thread, ``depth`` ahead.

    The host's reading and decoding of the next batches overlap the devices'
    current step. The thread touches no JAX object: each batch is copied into
    arrays of its own (decoding workers may hand over buffers they reuse) and
    :meth:`get` places it on the devices from the calling thread, which
    dispatches steps asynchronously, so the transfer of batch t + 1 overlaps
    step t as well. ``wait_seconds`` adds up the time :meth:`get` waited for
    a batch that was not ready.
    """

    _END = object()

    def __init__(self, batches, place: Callable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._place = place
        self.wait_seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(batches,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches) -> None:
        try:
            for batch in batches:
                owned = jax.tree.map(lambda v: np.array(v, copy=True), batch)
                if not self._put(owned):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - raised again in get()
            self._put(e)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def get(self):
        t = time.perf_counter()
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - t
        if item is self._END:
            raise RuntimeError("The batch stream ended before the last step.")
        if isinstance(item, BaseException):
            raise item
        return self._place(item)

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=60)


def make_stream_step(
    step_fn: Callable, tau_schedule: Callable, *, mesh: Mesh, shardings: Any
) -> Callable:
    """One compiled search step on a batch sharded by rows over ``mesh``.

    Returns:
      ``step(state, batch) -> (state, metrics)``; the same pure step and
      state shardings as :func:`make_chunk_fn`, one batch at a time.
    """

    def step(state, batch):
        state = jax.lax.with_sharding_constraint(state, shardings)
        return step_fn(state, batch, tau_schedule(state.step))

    return jax.jit(
        step,
        in_shardings=(shardings, rows_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def place_local_rows(batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a global batch as arrays sharded over ``data``.

    ``batch`` is a (possibly nested) dict of `[rows, ...]` arrays.

    Every process passes its own ``[batch / processes, ...]`` rows; the
    global batch is their concatenation in process order.
    """
    rows = rows_sharding(mesh)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(rows, np.asarray(v)), batch
    )


def stream_layout(num_examples: int, batch_size: int) -> dict:
    """How a streamed search splits the train split over the processes.

    Returns:
      ``{"processes", "process", "shard", "local_batch", "steps_per_epoch"}``:
      this process reads records ``shard = (first, end)``, ``local_batch``
      of them per step, for ``steps_per_epoch`` steps an epoch.

    Raises:
      ValueError: when the batch does not split evenly over the processes or
        a process's share of it exceeds its shard.
    """
    from tgjax.data.stream import shard_range

    processes, process = jax.process_count(), jax.process_index()
    if batch_size % processes:
        raise ValueError(
            f"A streamed run splits each batch over its {processes} processes, "
            f"but batch_size ({batch_size}) is not divisible by {processes}."
        )
    local = batch_size // processes
    shard = shard_range(num_examples, process, processes)
    steps = (shard[1] - shard[0]) // local
    if steps < 1:
        raise ValueError(
            f"A streamed run reads {local} examples per step in each of its "
            f"{processes} processes, more than a process's shard "
            f"({shard[1] - shard[0]} examples); use a smaller --batch-size."
        )
    return {
        "processes": processes,
        "process": process,
        "shard": shard,
        "local_batch": local,
        "steps_per_epoch": steps,
    }


def run_search_stream(
    init_fn: Callable[[], Any],
    step_fn: Callable,
    tau_schedule: Callable,
    *,
    split,
    seed: int,
    epochs: int,
    batch_size: int,
    mesh: Mesh,
    log_every: int = 10,
    learning_rate: Callable[[int], float] | None = None,
    assignment_learning_rate: Callable[[int], float] | None = None,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    callback: Callback | None = None,
    check: Callable[[dict, int], None] | None = None,
    epoch_end: Callable[[Any, int, np.ndarray], None] | None = None,
    workers: int = 0,
    sync_every: int = 64,
    stats: dict | None = None,
) -> tuple[Any, list[dict]]:
    """:func:`run_search` on batches read from a stream, one step at a time.

    Each process reads its own shard of ``split`` (see :func:`stream_layout`)
    in the per-epoch order of :func:`tgjax.data.stream.epoch_order`; a
    background thread reads and decodes the next two batches while the
    devices run the current step, and each batch is placed on the mesh just
    before its step is dispatched. Step ``t`` reads the same
    examples whether the run started at 0 or resumed from a checkpoint, so a
    resumed run ends bit for bit as an uninterrupted one (with the same
    number of processes and batch size, which the checkpoint records).

    The device metrics are read in groups of at most ``sync_every`` steps
    (and at each epoch's end and checkpoint), not after every step.

    Args:
      split: a :class:`tgjax.data.stream.StreamSplit`, the training split.
      workers: decoding processes (0: the reading thread decodes).
      sync_every: steps between reads of the device metrics.
      stats: if given, receives ``steps`` (run so far), ``wait_seconds``
        (time the loop waited for the loader so far; both updated before each
        group's logging and ``epoch_end``) and, at the end, ``seconds`` (the
        loop's wall time).
      Everything else: as :func:`run_search`.

    Returns:
      ``(state, history)`` as :func:`run_search`.
    """
    from tgjax.data.stream import step_batches

    if resume and checkpoints is None:
        raise ValueError(
            "resume=True needs the checkpoints to resume from; pass checkpoints."
        )
    layout = stream_layout(len(split), batch_size)
    steps_per_epoch = layout["steps_per_epoch"]
    total = steps_per_epoch * epochs
    shapes = jax.eval_shape(init_fn)
    shardings = state_shardings(shapes, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)()
    position = {
        "seed": seed,
        "batch_size": batch_size,
        "processes": layout["processes"],
        "examples": len(split),
        "steps_per_epoch": steps_per_epoch,
    }

    start = 0
    epoch_losses: list[np.ndarray] = []
    if checkpoints is not None and resume:
        restored = checkpoints.restore_latest(state)
        saved = dict(restored.meta.get("stream") or {})
        if not saved:
            raise ValueError(
                f"{checkpoints.directory} holds checkpoints of an in-memory search; "
                "resume it in memory (--in-memory)."
            )
        saved.pop("epoch", None), saved.pop("offset", None)
        if saved != position:
            diff = {
                k: (saved.get(k), v) for k, v in position.items() if saved.get(k) != v
            }
            raise ValueError(
                f"{checkpoints.directory} was written by a streamed search with "
                f"other settings (checkpoint, now): {diff}; resume with the "
                "same number of processes, batch size and data."
            )
        state = jax.device_put(restored.tree, shardings)
        start = restored.step
        if start % steps_per_epoch:
            partial = restored.meta.get("epoch_losses", [])
            epoch_losses.append(np.asarray(partial, np.float32))
        _emit(
            callback,
            "resume",
            {"step": start, "skipped": [list(s) for s in restored.skipped]},
        )
    elif checkpoints is not None and checkpoints.steps():
        raise ValueError(
            f"{checkpoints.directory} already holds checkpoints "
            f"{checkpoints.steps()}; resume from them or use an empty folder."
        )

    step = make_stream_step(step_fn, tau_schedule, mesh=mesh, shardings=shardings)
    batches = step_batches(
        split,
        seed=seed,
        batch_size=layout["local_batch"],
        start=start,
        stop=total,
        shard=layout["shard"],
        workers=workers,
    )
    history: list[dict] = []
    every = checkpoint_every if checkpoints is not None else 0
    bounds = [
        (b, min(b + sync_every, end))
        for begin, end in chunk_bounds(start, total, steps_per_epoch, every)
        for b in range(begin, end, sync_every)
    ]
    started = time.perf_counter()
    feed = Prefetcher(batches, lambda b: place_local_rows(b, mesh))
    try:
        for begin, end in bounds:
            outs = []
            for _ in range(begin, end):
                state, metrics = step(state, feed.get())
                outs.append(metrics)
            host = jax.device_get(outs)
            metrics = {k: np.stack([m[k] for m in host]) for k in host[0]}
            epoch, offset = divmod(end, steps_per_epoch)
            if stats is not None:
                stats.update(steps=end - start, wait_seconds=feed.wait_seconds)
            _after_chunk(
                state,
                metrics,
                begin,
                end,
                steps_per_epoch=steps_per_epoch,
                total=total,
                every=every,
                log_every=log_every,
                learning_rate=learning_rate,
                assignment_learning_rate=assignment_learning_rate,
                checkpoints=checkpoints,
                callback=callback,
                check=check,
                epoch_end=epoch_end,
                epoch_losses=epoch_losses,
                history=history,
                meta={"stream": {**position, "epoch": epoch, "offset": offset}},
            )
    finally:
        feed.close()
        if stats is not None:
            stats.update(
                steps=total - start,
                seconds=time.perf_counter() - started,
                wait_seconds=feed.wait_seconds,
            )
    return state, history


def to_local(tree: Any, mesh: Mesh) -> Any:
    """A copy of a (possibly multi-process) sharded pytree on this process.

    Gathers every leaf to all devices, then to the host, then to this
    process's default device; typed PRNG keys stay typed.
    """
    leaves, treedef = jax.tree.flatten(tree)
    is_key = [
        hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
        for a in leaves
    ]
    impls = [
        jax.random.key_impl(a) if k else None
        for a, k in zip(leaves, is_key, strict=True)
    ]

    def raw(ls: Sequence[Any]):
        return [
            jax.random.key_data(a) if k else a for a, k in zip(ls, is_key, strict=True)
        ]

    gathered = jax.jit(raw, out_shardings=replicated(mesh))(leaves)
    host = [np.asarray(a) for a in gathered]
    local = [
        jax.random.wrap_key_data(h, impl=i) if k else jax.numpy.asarray(h)
        for h, k, i in zip(host, is_key, impls, strict=True)
    ]
    return jax.tree.unflatten(treedef, local)


def _emit(callback: Callback | None, event: str, payload: dict) -> None:
    if callback is not None:
        callback(event, payload)
