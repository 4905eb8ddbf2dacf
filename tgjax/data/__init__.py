"""Built-in data sets and loaders for data that users bring."""

from __future__ import annotations

from collections.abc import Callable

from tgjax.data.base import MultiTaskData, Split, from_arrays
from tgjax.data.packaged import load_digits, load_yeast

DATASETS: dict[str, Callable[..., MultiTaskData]] = {
    "yeast": load_yeast,
    "digits": load_digits,
}


def load_dataset(name: str, **kwargs) -> MultiTaskData:
    """Loads a built-in data set by name.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set {name!r}; choose one of {sorted(DATASETS)}, or pass "
            "your own file with --data."
        )
    return DATASETS[name](**kwargs)


__all__ = ["DATASETS", "MultiTaskData", "Split", "from_arrays", "load_dataset"]
