"""Streaming image data through a grain pipeline.

Small data sets live in memory and the trainer batches them itself. Image
data sets can also stream: a random-access *source* returns cheap, undecoded
records (raw pixels, JPEG bytes, file paths), *operations* decode them in
worker processes, and a sampler draws a fresh, seeded order every epoch. In
a multi-host run each process reads only its own shard of the records.

Every record is a dict of NumPy arrays; batching stacks each entry, so a
batch of classification records is ``{"x": [batch, H, W, C] float32,
"y": [batch, tasks] float32, "index": [batch] int64}``. Dense tasks use
nested dicts (see :mod:`tgjax.data.taskonomy`).
"""

from __future__ import annotations

import dataclasses
import os

import grain.python as grain
import jax
import numpy as np
from absl import flags

from tgjax.data.base import split_indices
from tgjax.data.mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_VAL_SIZE,
    one_vs_rest,
    read_fashion_mnist,
)
from tgjax.data.stream import StreamData, StreamSplit
from tgjax.tasks import Task


class ArraySource:
    """Random access to the rows of in-memory arrays.

    Args:
      arrays: dict of arrays with the same leading size; record ``i`` is
        ``{key: value[i]}`` plus ``"index": i``.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"ArraySource arrays differ in length: {sizes}.")
        self._arrays = dict(arrays)
        self._n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record = {k: v[index] for k, v in self._arrays.items()}
        record["index"] = np.int64(index)
        return record

    def read_rows(self, keys: np.ndarray) -> dict:
        """Records ``keys`` at once, each entry stacked (``index`` too)."""
        keys = np.asarray(keys, np.int64)
        rows = {k: v[keys] for k, v in self._arrays.items()}
        rows["index"] = keys
        return rows

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self._arrays.items()}
        return f"ArraySource({shapes})"


@dataclasses.dataclass(frozen=True)
class ScaleToUnit(grain.MapTransform):
    """Turns uint8 pixels under ``key`` into float32 in [0, 1]."""

    key: str = "x"
    # Works on one record or on stacked records alike.
    elementwise = True

    def map(self, record: dict) -> dict:
        record = dict(record)
        record[self.key] = np.asarray(record[self.key], np.float32) / 255.0
        return record


def fashion_mnist_source(
    split: str = "train", data_dir: str | os.PathLike | None = None, seed: int = 0
) -> tuple[ArraySource, tuple[grain.MapTransform, ...]]:
    """Fashion-MNIST as a grain source of raw pixels, and its decoding step.

    The splits are those of :func:`tgjax.data.load_fashion_mnist` with the
    same ``seed``. Records hold ``x`` `[28, 28, 1]` uint8 and ``y`` `[10]`;
    the returned operations turn ``x`` into float32 in [0, 1].

    Returns:
      ``(source, operations)`` for :func:`make_loader`.
    """
    arrays = read_fashion_mnist(data_dir)
    if split == "test":
        images, labels = arrays["test_images"], arrays["test_labels"]
    elif split in ("train", "val"):
        n = len(arrays["train_labels"])
        tr, va, _ = split_indices(n, (FASHION_MNIST_VAL_SIZE / n, 0.0), seed)
        idx = tr if split == "train" else va
        images, labels = arrays["train_images"][idx], arrays["train_labels"][idx]
    else:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}.")
    source = ArraySource({"x": images[..., None], "y": one_vs_rest(labels)})
    return source, (ScaleToUnit("x"),)


def fashion_mnist_stream(
    data_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> StreamData:
    """Fashion-MNIST as a stream of raw pixels, scaled batch by batch.

    The splits, tasks and inputs equal :func:`tgjax.data.load_fashion_mnist`'s
    with the same ``seed``; the pixels stay uint8 in memory (47 MB instead
    of 188 MB) and become float32 only in the batches.
    """
    splits = {}
    for split in ("train", "val", "test"):
        source, ops = fashion_mnist_source(split, data_dir, seed)
        splits[split] = StreamSplit(source, ops, source._arrays["y"])
    return StreamData(
        name="fashion-mnist",
        tasks=tuple(Task(c, "binary") for c in FASHION_MNIST_CLASSES),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description="Fashion-MNIST (Debian dataset-fashion-mnist), 10 one-vs-rest "
        "tasks, streamed",
    )


def process_shard(drop_remainder: bool = True) -> grain.ShardOptions:
    """This process's shard: index ``jax.process_index()`` of ``process_count()``.

    With ``drop_remainder`` every process gets the same number of records, so
    that all hosts take the same number of steps.
    """
    return grain.ShardOptions(
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        drop_remainder=drop_remainder,
    )


def make_loader(
    source,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = 1,
    operations=(),
    shuffle: bool = True,
    drop_remainder: bool = True,
    shard_options: grain.ShardOptions | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 2,
    prefetch: int = 16,
) -> grain.DataLoader:
    """A grain loader that shuffles, decodes, batches and prefetches a source.

    The order of epoch ``e`` depends only on ``seed`` and ``e``: iterating the
    loader twice yields the same batches, and each epoch has its own order.

    Args:
      source: a random-access source (``__len__``, ``__getitem__``).
      batch_size: records per batch (per process in a multi-host run).
      seed: seed of the shuffling.
      num_epochs: passes over the data; None for an endless stream.
      operations: grain transforms applied to each record before batching,
        e.g. decoding; they run in the worker processes.
      shuffle: draw a new random order every epoch (else the source order).
      drop_remainder: drop the last, smaller batch of the stream.
      shard_options: which part of the records this process reads; by default
        :func:`process_shard`.
      worker_count: decoding processes; 0 decodes in the calling process.
      worker_buffer_size: batches each worker prepares ahead.
      read_threads: threads reading records from the source (per worker).
        Small records such as Fashion-MNIST's run fastest with few threads
        and a short read-ahead, since grain's per-record cost then dominates;
        raise both for slow sources such as files on a network disk.
      prefetch: records read ahead by those threads.

    Returns:
      A :class:`grain.DataLoader`; iterate it for dict batches.

    Example:
      >>> src = ArraySource({"x": np.arange(8.0)[:, None], "y": np.zeros((8, 1))})
      >>> batches = list(make_loader(src, batch_size=4, seed=0))
      >>> [b["x"].shape for b in batches]
      [(4, 1), (4, 1)]
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    shard_options = process_shard() if shard_options is None else shard_options
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=shard_options,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    if worker_count > 0 and not flags.FLAGS.is_parsed():
        # grain's worker processes read absl flags; a program that never
        # parsed them (anything but an absl app) would fail in the workers.
        flags.FLAGS.mark_as_parsed()
    ops = list(operations) + [grain.Batch(batch_size, drop_remainder=drop_remainder)]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=ops,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        read_options=grain.ReadOptions(
            num_threads=read_threads, prefetch_buffer_size=prefetch
        ),
    )
