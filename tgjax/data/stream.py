"""Data sets that stream from a source instead of living in memory.

A :class:`StreamData` holds, for each split, a random-access grain source of
cheap records (raw pixels, JPEG bytes) and the operations that decode one
record; only the labels are in memory. The trainer reads it in batches
through grain: :func:`step_batches` for the training steps and
:func:`eval_batches` for evaluation.

The order of the training examples is a function of the seed and the epoch
only: epoch ``e`` of a process visits its shard in the order of
:func:`epoch_order`, and step ``t`` of the run reads the ``t``-th slice of
those orders. Any step is therefore reachable without reading the steps
before it, which is how a resumed run continues exactly where a checkpoint
was taken, also in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags

from tgjax.data.base import task_indices
from tgjax.tasks import Task, check_tasks

# The epoch index of the fine-tuning orders starts here, far from the
# search's epochs (the in-memory path uses the same offset).
FINETUNE_EPOCH_OFFSET = 10_000
EVAL_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class StreamSplit:
    """One split as a source of undecoded records and its decoding.

    Attributes:
      source: random access (``__len__``, ``__getitem__``) to records that are
        dicts with at least ``"x"``; ``"y"`` is read from ``labels``.
      operations: grain transforms (or callables) that turn one record into
        ``{"x": float32 input, ...}``; they run in the loader's workers.
      labels: `[examples, tasks]` float32 labels, NaN where missing.
      label_fields: names of fields of the decoded records that are the
        labels instead (dense targets, say ``("targets", "masks")``): a
        batch's ``"y"`` is then ``{field: stacked values}``, nested dicts
        stacked leaf by leaf, and ``labels`` stays empty.
    """

    source: Any
    operations: tuple = ()
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    label_fields: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "operations", tuple(self.operations))
        object.__setattr__(self, "label_fields", tuple(self.label_fields))
        labels = np.asarray(self.labels, np.float32)
        object.__setattr__(self, "labels", labels)
        if self.label_fields:
            if labels.size:
                raise ValueError(
                    "A stream split reads its labels either from labels or from "
                    "the decoded records' label_fields, not both."
                )
        elif len(labels) != len(self.source):
            raise ValueError(
                f"A stream split's labels have {len(labels)} rows but its source "
                f"holds {len(self.source)} records; they must match."
            )

    def __len__(self) -> int:
        return len(self.source)

    @property
    def y(self) -> np.ndarray:
        return self.labels

    def read(self, keys: Sequence[int]) -> dict:
        """Records ``keys`` decoded and stacked: ``{"x", "y", "index"}``.

        With ``label_fields``, ``"y"`` stacks those fields of the decoded
        records (see :class:`StreamSplit`). A source with ``read_rows(keys)``
        (stacked records at once) whose operations are all elementwise
        (``elementwise = True``, such as scaling pixels) and that has no
        ``label_fields`` is read in one vectorised call, with the same result.
        """
        keys = np.asarray(keys, np.int64)
        read_rows = getattr(self.source, "read_rows", None)
        ops = self.operations
        fields = self.label_fields
        if (
            read_rows is not None
            and all(getattr(o, "elementwise", 0) for o in ops)
            and not fields
        ):
            record = read_rows(keys)
            for op in ops:
                record = op.map(record)
            x = np.asarray(record["x"], np.float32)
        else:
            xs, ys = [], []
            for k in keys:
                record = self.source[int(k)]
                for op in ops:
                    record = op.map(record) if hasattr(op, "map") else op(record)
                xs.append(np.asarray(record["x"], np.float32))
                if fields:
                    ys.append({f: record[f] for f in fields})
            x = np.stack(xs) if xs else np.zeros((0,), np.float32)
            if fields:
                if not ys:
                    raise ValueError("A stream batch with label_fields needs records.")
                y = jax.tree.map(lambda *v: np.stack(v), *ys)
                return {"x": x, "y": y, "index": keys}
        return {"x": x, "y": self.labels[keys], "index": keys}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """`[examples, ...]` shape of the decoded inputs (decodes one record)."""
        one = self.read([0])["x"]
        return (len(self),) + tuple(one.shape[1:])


@dataclasses.dataclass(frozen=True)
class StreamData:
    """A multi-task data set whose splits stream (see :class:`StreamSplit`).

    Attributes mirror :class:`tgjax.data.MultiTaskData`.
    """

    name: str
    tasks: tuple[Task, ...]
    train: StreamSplit
    val: StreamSplit
    test: StreamSplit
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    description: str = ""
    task_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        tasks = check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        n = len(tasks)
        for split_name in ("train", "val", "test"):
            labels = getattr(self, split_name).labels
            if labels.ndim != 2 or labels.shape[1] != n:
                raise ValueError(
                    f"{self.name}: the {split_name} labels must have shape "
                    f"[examples, {n}], got {labels.shape}."
                )
        if self.target_mean is None:
            object.__setattr__(self, "target_mean", np.zeros(n, np.float32))
        if self.target_std is None:
            object.__setattr__(self, "target_std", np.ones(n, np.float32))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def select_tasks(self, names) -> StreamData:
        """The same data restricted to the named tasks, in the given order."""
        names = list(names)
        idx = task_indices(names, self.task_names, self.name)

        def pick(s: StreamSplit) -> StreamSplit:
            return dataclasses.replace(s, labels=s.labels[:, idx])

        return dataclasses.replace(
            self,
            tasks=tuple(self.tasks[i] for i in idx),
            train=pick(self.train),
            val=pick(self.val),
            test=pick(self.test),
            target_mean=self.target_mean[idx],
            target_std=self.target_std[idx],
            task_notes={n: self.task_notes[n] for n in names if n in self.task_notes},
        )


class _Rows:
    """A source of the rows of one in-memory array (``{"x": row}``)."""

    def __init__(self, x: np.ndarray):
        self._x = x

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self._x[int(i)]}

    def read_rows(self, keys: np.ndarray) -> dict:
        return {"x": self._x[keys]}


def stream_from_memory(data) -> StreamData:
    """A :class:`tgjax.data.MultiTaskData` read through the streaming path.

    The arrays stay in memory; use it to run the streaming trainer on any
    data set (``--stream``) or to compare it with the in-memory trainer.
    """
    if isinstance(data, StreamData):
        return data

    def split(s) -> StreamSplit:
        return StreamSplit(_Rows(np.asarray(s.x)), (), s.y)

    return StreamData(
        name=data.name,
        tasks=data.tasks,
        train=split(data.train),
        val=split(data.val),
        test=split(data.test),
        target_mean=data.target_mean,
        target_std=data.target_std,
        description=data.description,
        task_notes=dict(data.task_notes),
    )


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """Records ``[start, end)`` of shard ``index`` of ``count`` equal shards.

    The first ``count * (n // count)`` records are split into equal,
    contiguous shards, as :func:`tgjax.data.pipeline.process_shard` does.
    """
    size = n // count
    return index * size, (index + 1) * size


def epoch_order(seed: int, epoch: int, start: int, end: int) -> np.ndarray:
    """The shard ``[start, end)`` in the order of ``epoch``: a function of
    ``(seed, epoch)`` and the shard only."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    return start + rng.permutation(end - start)


class _StepReader:
    """Step ``t`` -> the batch of that step (runs in the loader's workers)."""

    def __init__(self, split, seed, shard, batch_size, steps_per_epoch, epoch0):
        self.split = split
        self.seed = seed
        self.shard = shard
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epoch0 = epoch0
        self._cached = (None, None)

    def __call__(self, step: int) -> dict:
        epoch, offset = divmod(int(step), self.steps_per_epoch)
        if self._cached[0] != epoch:
            order = epoch_order(self.seed, self.epoch0 + epoch, *self.shard)
            self._cached = (epoch, order)
        order = self._cached[1]
        b = self.batch_size
        return self.split.read(order[offset * b : (offset + 1) * b])


class _RangeReader:
    """Batch ``j`` -> records ``[j * batch, (j + 1) * batch)`` in order."""

    def __init__(self, split, batch_size):
        self.split = split
        self.batch_size = batch_size

    def __call__(self, j: int) -> dict:
        b = self.batch_size
        return self.split.read(range(j * b, min((j + 1) * b, len(self.split))))


# Batches read ahead, and threads reading them, in each reading process. The
# elements are whole batches: grain's defaults (500 ahead, 16 threads) would
# hold hundreds of decoded image batches in memory.
READ_AHEAD = 2
READ_THREADS = 2


def _iterate(ds: grain.MapDataset, workers: int) -> Iterator[dict]:
    """Iterates ``ds`` with a short read-ahead, in ``workers`` processes."""
    options = grain.ReadOptions(
        num_threads=READ_THREADS if workers == 0 else 1,
        prefetch_buffer_size=READ_AHEAD,
    )
    it = ds.to_iter_dataset(options)
    if workers > 0:
        if not flags.FLAGS.is_parsed():
            # grain reads absl flags, also in its workers; a program that is
            # not an absl app never parsed them.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=READ_AHEAD
            )
        )
    iterator = iter(it)
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def step_batches(
    split: StreamSplit,
    *,
    seed: int,
    batch_size: int,
    start: int,
    stop: int,
    shard: tuple[int, int] | None = None,
    epoch0: int = 0,
    workers: int = 0,
) -> Iterator[dict]:
    """The batches of steps ``start .. stop - 1`` of a run, in order.

    Step ``t`` is step ``t % steps_per_epoch`` of epoch ``t //
    steps_per_epoch``, where an epoch is ``len(shard) // batch_size`` steps
    over the shard in the order of :func:`epoch_order` (``epoch0 + epoch``);
    a last incomplete batch of an epoch is dropped. Skipping to ``start``
    reads nothing before it.

    Args:
      split: the split to read.
      seed: the run's seed.
      batch_size: records per batch (this process's part of a global batch).
      start, stop: the steps to yield.
      shard: ``(first, end)`` records this process reads; all by default.
      epoch0: the epoch number of the first epoch (orders of other stages).
      workers: decoding processes; 0 decodes in a thread of this process.

    Yields:
      ``{"x": [batch, ...] float32, "y": [batch, tasks], "index": [batch]}``.
    """
    shard = (0, len(split)) if shard is None else tuple(shard)
    steps_per_epoch = (shard[1] - shard[0]) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"A batch of {batch_size} examples per process is larger than this "
            f"process's {shard[1] - shard[0]} training examples, so an epoch "
            "would have no step. Use a smaller --batch-size or fewer processes."
        )
    reader = _StepReader(split, seed, shard, batch_size, steps_per_epoch, epoch0)
    ds = grain.MapDataset.range(start, stop).map(reader)
    return _iterate(ds, workers)


def eval_batches(
    split: StreamSplit, *, batch_size: int = EVAL_BATCH, workers: int = 0
) -> Iterator[dict]:
    """The whole split in record order, the last batch possibly smaller."""
    steps = -(-len(split) // batch_size)
    ds = grain.MapDataset.range(0, steps).map(_RangeReader(split, batch_size))
    return _iterate(ds, workers)


def check_stream_data(data: StreamData) -> None:
    """The data checks of :func:`tgjax.validate.check_data`, for a stream.

    Split sizes and labels are checked in full; inputs are decoded while
    training, so only their shape is checked (by the settings' checks), and
    a non-finite input stops the run at its step as any non-finite value does.
    """
    from tgjax.validate import check_labels, check_split_sizes, check_train_labels

    check_split_sizes(data.name, *(len(getattr(data, s)) for s in _SPLITS))
    for split in _SPLITS:
        where = f"the {split} split of {data.name!r}"
        check_labels(getattr(data, split).labels, data.tasks, where=where)
    check_train_labels(data.train.labels, data.tasks)


_SPLITS = ("train", "val", "test")
