"""Where tgjax keeps data it derived once, and how it writes it safely."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

CACHE_ENV = "TGJAX_CACHE_DIR"
DATA_ENV = "TGJAX_DATA_DIR"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder for derived data (featurised molecules, decoded images).

    Args:
      override: a folder to use instead of the default.

    Returns:
      ``override`` if given, else ``$TGJAX_CACHE_DIR``, else
      ``$XDG_CACHE_HOME/tgjax``, else ``~/.cache/tgjax``. The folder is not
      created here; writers create it when they first store something.
    """
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tgjax"


def data_dir(
    override: str | os.PathLike | None, *, dataset: str, subfolder: str
) -> Path:
    """The folder holding a user's copy of a data set.

    Args:
      override: the ``data_dir`` argument of a loader, if given.
      dataset: data set name, for the error message.
      subfolder: the folder under ``$TGJAX_DATA_DIR`` that holds the data set.

    Raises:
      FileNotFoundError: when neither the argument nor ``$TGJAX_DATA_DIR`` is
        set, or the folder does not exist.
    """
    if override is not None:
        path = Path(override)
    elif os.environ.get(DATA_ENV):
        path = Path(os.environ[DATA_ENV]) / subfolder
    else:
        raise FileNotFoundError(
            f"No location given for the {dataset} data: pass --data-dir "
            "(data_dir= in Python) or set "
            f"{DATA_ENV} so that {DATA_ENV}/{subfolder} holds it. tgjax never "
            "downloads data."
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"The {dataset} folder {str(path)!r} does not exist; point --data-dir "
            f"(data_dir= in Python) or {DATA_ENV}/{subfolder} at the folder that "
            "holds the data set."
        )
    return path


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Writes arrays to ``path`` (an ``.npz`` file) so readers never see half a file.

    The arrays go to a temporary file in the same folder, which then replaces
    ``path`` in one rename; a crash leaves either the old file or none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None if it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None
