"""Saving and loading training state with Orbax."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _savable(tree: Any) -> Any:
    """Typed PRNG keys become their raw uint32 key data; NamedTuples become dicts."""

    def leaf(x):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    if hasattr(tree, "_asdict"):
        tree = {k: _savable(v) for k, v in tree._asdict().items()}
    elif isinstance(tree, dict):
        tree = {k: _savable(v) for k, v in tree.items()}
    return jax.tree.map(leaf, tree)


def save_checkpoint(path: str | os.PathLike, tree: Any) -> None:
    """Writes a pytree of arrays as an Orbax checkpoint at ``path``.

    Orbax writes into a temporary folder and renames it on success, so a
    checkpoint is either complete or absent. Typed PRNG keys are stored as
    their key data.

    Raises:
      FileExistsError: if ``path`` already exists.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"Checkpoint {path} already exists; choose a new path.")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, _savable(tree))
    checkpointer.wait_until_finished()


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Reads a checkpoint written by tgjax as a pytree of arrays.

    Args:
      path: the checkpoint folder.

    Returns:
      The saved pytree (dicts of arrays; PRNG keys as uint32 key data).

    Raises:
      FileNotFoundError: if there is no checkpoint at ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No checkpoint at {path}; pass the checkpoint folder of a tgjax run."
        )
    tree = ocp.StandardCheckpointer().restore(path)
    return jax.tree.map(np.asarray, tree)
