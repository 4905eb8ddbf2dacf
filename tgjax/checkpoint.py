"""Saving and loading training state with Orbax.

Two layouts are written:

* a single checkpoint folder (:func:`save_checkpoint`), the final state of a
  run;
* numbered checkpoints of a running search (:class:`Checkpoints`), one
  folder per step holding the state and a small JSON record, the newest few
  kept. Orbax writes each into a temporary folder and renames it when
  complete, so an interrupted save leaves no numbered folder behind.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
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


def _numbered(path: str) -> list[int]:
    return sorted(
        int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(f"{path}/{n}")
    )


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Reads a checkpoint written by tgjax as a pytree of arrays.

    ``path`` may be a single checkpoint folder (a run's ``checkpoint``), one
    numbered checkpoint (``checkpoints/120``), a folder of numbered
    checkpoints (``checkpoints``, read at its newest readable step) or a run
    folder (its final ``checkpoint`` if the run finished, else its newest
    readable numbered checkpoint).

    Args:
      path: one of the folders above.

    Returns:
      The saved pytree (dicts of NumPy arrays; PRNG keys as uint32 key data),
      e.g. ``{"params": ..., "assignment": [tasks, groups], "step": ...}`` for
      a search state.

    Raises:
      FileNotFoundError: if there is no checkpoint at ``path``.

    Example:
      >>> import tgjax
      >>> state = tgjax.load_checkpoint("runs/yeast/checkpoint")  # doctest: +SKIP
      >>> state["search"]["assignment"].shape  # doctest: +SKIP
      (14, 4)
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No checkpoint at {path}; pass a run folder or a checkpoint folder "
            "of a tgjax run."
        )
    if os.path.isdir(os.path.join(path, "state")):
        tree = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))
    elif os.path.isfile(os.path.join(path, "_METADATA")):
        tree = ocp.StandardCheckpointer().restore(path)
    elif os.path.isdir(os.path.join(path, "checkpoint")):
        return load_checkpoint(os.path.join(path, "checkpoint"))
    elif os.path.isdir(os.path.join(path, "checkpoints")):
        return load_checkpoint(os.path.join(path, "checkpoints"))
    elif _numbered(path):
        errors = []
        for step in reversed(_numbered(path)):
            try:
                return load_checkpoint(os.path.join(path, str(step)))
            except Exception as e:  # a damaged checkpoint: try the one before
                errors.append(f"step {step}: {type(e).__name__}: {e}")
        raise FileNotFoundError(
            f"No readable checkpoint in {path}: " + "; ".join(errors)
        )
    else:
        raise FileNotFoundError(
            f"{path} holds no tgjax checkpoint; pass a run folder or a "
            "checkpoint folder."
        )
    return jax.tree.map(np.asarray, tree)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def from_savable(template: Any, saved: Any) -> Any:
    """Inverse of the saved form: ``saved`` back into ``template``'s structure.

    Args:
      template: a pytree (arrays or shape structs) of the original structure,
        such as a freshly initialised ``SearchState``.
      saved: the restored dicts of arrays, with key data for PRNG keys.

    Returns:
      A pytree with ``template``'s structure and ``saved``'s values; key data
      is wrapped back into typed keys of the template's implementation.
    """
    leaves, treedef = jax.tree.flatten(template)
    order = jax.tree.leaves(_savable(jax.tree.unflatten(treedef, range(len(leaves)))))
    values = jax.tree.leaves(saved)
    if len(values) != len(leaves):
        raise ValueError(
            f"The checkpoint holds {len(values)} arrays but the state has "
            f"{len(leaves)}; it was written by a run with other settings."
        )
    out: list[Any] = [None] * len(leaves)
    for position, index in enumerate(order):
        value, like = values[position], leaves[index]
        if _is_key(like):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
        out[index] = value
    return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A checkpoint read back by :meth:`Checkpoints.restore_latest`.

    Attributes:
      step: its step number.
      tree: the state, in the template's structure.
      meta: the JSON record saved with it.
      skipped: ``(step, reason)`` of newer checkpoints that could not be read.
    """

    step: int
    tree: Any
    meta: dict
    skipped: list[tuple[int, str]]


class Checkpoints:
    """Numbered, atomically written checkpoints in one folder.

    Each checkpoint holds a pytree of arrays (sharded arrays are written by
    every process that owns a shard) and a JSON record. Only the newest
    ``keep`` survive.

    Args:
      directory: the folder; created if missing.
      keep: number of checkpoints kept (>= 1).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "meta"),
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, tree: Any, meta: dict) -> None:
        """Writes ``tree`` and ``meta`` as checkpoint ``step`` and waits for it."""
        saved = jax.jit(_savable)(tree)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(saved), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Reads checkpoint ``step`` into ``template``'s structure and shardings.

        Args:
          step: the step number.
          template: a pytree of arrays with the shapes, dtypes and shardings
            to restore to (e.g. a freshly initialised state).

        Returns:
          ``(tree, meta)``.
        """
        saved_like = jax.eval_shape(_savable, template)
        shardings = jax.tree.map(lambda a: a.sharding, jax.jit(_savable)(template))
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            saved_like,
            shardings,
        )
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return from_savable(template, restored.state), dict(restored.meta)

    def restore_latest(
        self,
        template: Any,
        *,
        on_skip: Callable[[int, str], None] | None = None,
    ) -> Restored:
        """Reads the newest checkpoint that can be read, falling back to older ones.

        Args:
          template: see :meth:`restore`.
          on_skip: called with ``(step, reason)`` for each unreadable one.

        Returns:
          A :class:`Restored`.

        Raises:
          FileNotFoundError: if the folder holds no checkpoint, or none that
            can be read.
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(
                f"No checkpoint in {self.directory}; the run was interrupted before "
                "its first checkpoint. Start it again without resuming (on the command "
                "line: its flags with --out and --overwrite)."
            )
        skipped = []
        for step in reversed(steps):
            try:
                tree, meta = self.restore(step, template)
            except Exception as e:  # a damaged checkpoint: try the one before
                reason = f"{type(e).__name__}: {e}"
                skipped.append((step, reason))
                if on_skip is not None:
                    on_skip(step, reason)
                continue
            # Unreadable newer checkpoints would collide with the resumed run's.
            for bad, _ in skipped:
                self._manager.delete(bad)
            return Restored(step, tree, meta, skipped)
        raise FileNotFoundError(
            f"None of the checkpoints {steps} in {self.directory} can be read: "
            + "; ".join(f"step {s}: {r}" for s, r in skipped)
        )

    def close(self) -> None:
        self._manager.close()
