"""Built-in data sets and loaders for data that users bring.

Built-in sets load by name through :func:`load_dataset`; see ``DATASETS``.
A user's own ``.npz`` or CSV file loads with :func:`load_file`. Image sets
also stream through :mod:`tgjax.data.pipeline`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from tgjax.data.base import MultiTaskData, Split, from_arrays
from tgjax.data.celeba import CELEBA9, load_celeba
from tgjax.data.files import load_file
from tgjax.data.mnist import load_fashion_mnist, load_mnist5k
from tgjax.data.packaged import load_digits, load_yeast
from tgjax.data.qm9 import load_qm9
from tgjax.data.stream import StreamData, StreamSplit, stream_from_memory

DATASETS: dict[str, Callable[..., MultiTaskData]] = {
    "yeast": load_yeast,
    "digits": load_digits,
    "qm9": load_qm9,
    "fashion-mnist": load_fashion_mnist,
    "mnist5k": load_mnist5k,
    "celeba": load_celeba,
}


def _fashion_mnist_stream(**kwargs) -> StreamData:
    from tgjax.data.pipeline import fashion_mnist_stream

    return fashion_mnist_stream(**kwargs)


def _celeba_stream(**kwargs) -> StreamData:
    from tgjax.data.celeba import celeba_stream

    return celeba_stream(**kwargs)


STREAMS: dict[str, Callable[..., StreamData]] = {
    "fashion-mnist": _fashion_mnist_stream,
    "celeba": _celeba_stream,
}
"""Data sets with a streaming loader that never holds the decoded inputs;
the others stream from their in-memory arrays."""


def load_stream(name: str, **kwargs) -> StreamData:
    """A built-in data set as a :class:`StreamData`.

    Data sets of ``STREAMS`` are read lazily (images decoded batch by
    batch); any other is loaded by :func:`load_dataset` and streamed from
    memory.
    """
    if name in STREAMS:
        return STREAMS[name](**kwargs)
    return stream_from_memory(load_dataset(name, **kwargs))


def load_dataset(name: str, **kwargs) -> MultiTaskData:
    """Loads a built-in data set by name.

    Args:
      name: a key of ``DATASETS``.
      **kwargs: passed to the data set's loader (e.g. ``seed``, ``subset``
        for ``qm9``, ``data_dir`` for ``celeba``).

    Raises:
      ValueError: for an unknown name, listing the known ones.

    Example:
      >>> load_dataset("digits").train.y.shape
      (1079, 10)
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), list(DATASETS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown data set {name!r}{hint}; choose one of {sorted(DATASETS)}, or "
            "pass your own file with --data."
        )
    return DATASETS[name](**kwargs)


__all__ = [
    "CELEBA9",
    "DATASETS",
    "MultiTaskData",
    "STREAMS",
    "Split",
    "StreamData",
    "StreamSplit",
    "from_arrays",
    "load_celeba",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_file",
    "load_mnist5k",
    "load_qm9",
    "load_stream",
    "load_yeast",
    "stream_from_memory",
]
