"""Task descriptions, per-task losses and metrics.

A multi-task problem is a tuple of :class:`Task`. Labels of all tasks travel
together as one float array of shape `[batch, tasks]`: class indices for
classification tasks, values for regression tasks, and NaN where a label is
missing. :func:`split_labels` turns such an array into labels and a boolean
mask, and every loss here is masked before it is computed, so a missing label
never produces a NaN, not even in a gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("binary", "multiclass", "regression")
REGRESSION_LOSSES = ("squared", "absolute")

# Integer codes used inside jitted code, one per (kind, loss) pair.
_CROSS_ENTROPY, _SQUARED, _ABSOLUTE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Task:
    """One prediction task of a multi-task problem.

    Attributes:
      name: unique task name, used in every report.
      kind: ``"binary"``, ``"multiclass"`` or ``"regression"``.
      num_classes: number of classes; 2 for binary tasks, 1 for regression.
      loss: ``"cross_entropy"`` for classification; ``"squared"`` (default)
        or ``"absolute"`` error for regression.

    Example:
      >>> Task("Black_Hair", "binary")
      Task(name='Black_Hair', kind='binary', num_classes=2, loss='cross_entropy')
    """

    name: str
    kind: str
    num_classes: int | None = None
    loss: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"Task name must be a non-empty string, got {self.name!r}."
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"Task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}."
            )
        defaults = {"binary": 2, "multiclass": None, "regression": 1}
        n = self.num_classes if self.num_classes is not None else defaults[self.kind]
        if self.kind == "multiclass" and (n is None or int(n) < 2):
            raise ValueError(
                f"Task {self.name!r}: a multiclass task needs num_classes >= 2, "
                f"got {self.num_classes!r}; pass num_classes=C."
            )
        if self.kind == "binary" and n != 2:
            raise ValueError(
                f"Task {self.name!r}: a binary task has num_classes=2, got {n!r}; "
                "use kind='multiclass' for more classes."
            )
        if self.kind == "regression" and n != 1:
            raise ValueError(
                f"Task {self.name!r}: a regression task has num_classes=1, got {n!r}."
            )
        object.__setattr__(self, "num_classes", int(n))
        if self.kind == "regression":
            loss = self.loss or "squared"
            if loss not in REGRESSION_LOSSES:
                raise ValueError(
                    f"Task {self.name!r}: regression loss must be one of "
                    f"{REGRESSION_LOSSES}, got {self.loss!r}."
                )
        else:
            loss = self.loss or "cross_entropy"
            if loss != "cross_entropy":
                raise ValueError(
                    f"Task {self.name!r}: classification tasks use "
                    f"loss='cross_entropy', got {self.loss!r}."
                )
        object.__setattr__(self, "loss", loss)

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def metric_name(self) -> str:
        """``"error_percent"`` for classification, ``"mae"`` for regression."""
        return "error_percent" if self.is_classification else "mae"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_tasks(tasks: Sequence[Task]) -> tuple[Task, ...]:
    """Validates a task list: non-empty, all :class:`Task`, unique names."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("tasks is empty; describe at least one task.")
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"tasks must hold tgjax.Task objects, got {t!r}.")
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"Task names must be unique; repeated: {dupes}. Give each task its "
            "own name."
        )
    return tasks


def output_size(tasks: Sequence[Task]) -> int:
    """Width D of every head: the largest number of outputs of any task."""
    return max(t.num_classes for t in tasks)


@dataclasses.dataclass(frozen=True)
class TaskCodes:
    """Arrays describing the tasks inside jitted code.

    Attributes:
      loss_code: `[tasks]` int32, which loss each task uses.
      num_classes: `[tasks]` int32.
    """

    loss_code: np.ndarray
    num_classes: np.ndarray

    @classmethod
    def from_tasks(cls, tasks: Sequence[Task]) -> TaskCodes:
        code = {"cross_entropy": _CROSS_ENTROPY, "squared": _SQUARED}
        code["absolute"] = _ABSOLUTE
        return cls(
            loss_code=np.array([code[t.loss] for t in tasks], np.int32),
            num_classes=np.array([t.num_classes for t in tasks], np.int32),
        )


def split_labels(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Splits `[batch, tasks]` labels with NaN for missing into values and mask.

    Returns:
      ``(values, mask)``: values with missing entries set to 0, and a boolean
      mask that is True where a label is present.
    """
    y = jnp.asarray(y, jnp.float32)
    mask = ~jnp.isnan(y)
    return jnp.where(mask, y, 0.0), mask


def example_losses(outputs, labels, mask, loss_code, num_classes):
    """Per-example losses of one task. outputs `[batch, D]`, labels `[batch]`."""
    outputs = outputs.astype(jnp.float32)
    width = outputs.shape[-1]
    valid = jnp.arange(width) < num_classes
    # Padding outputs of narrower tasks get a large negative logit instead of
    # -inf, so neither the softmax nor its gradient ever sees inf - inf.
    logits = jnp.where(valid, outputs, -1e9)
    cls = jnp.clip(labels.astype(jnp.int32), 0, num_classes - 1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, cls[:, None], axis=-1)[:, 0]
    diff = outputs[:, 0] - labels
    per_example = jnp.select(
        [loss_code == _CROSS_ENTROPY, loss_code == _SQUARED],
        [ce, diff * diff],
        jnp.abs(diff),
    )
    return jnp.where(mask, per_example, 0.0)


def task_losses(
    outputs: jax.Array, labels: jax.Array, mask: jax.Array, codes: TaskCodes
) -> jax.Array:
    """Batch-mean loss of every task.

    Args:
      outputs: `[tasks, batch, D]` head outputs.
      labels: `[batch, tasks]` label values (missing ones already zeroed).
      mask: `[batch, tasks]` boolean, True where a label is present.
      codes: the :class:`TaskCodes` of the tasks.

    Returns:
      `[tasks]` float32: mean loss over the labelled examples of each task, 0
      for a task without any label in the batch.
    """
    per_example = jax.vmap(example_losses, in_axes=(0, 1, 1, 0, 0))(
        outputs,
        labels,
        mask,
        jnp.asarray(codes.loss_code),
        jnp.asarray(codes.num_classes),
    )
    count = jnp.sum(mask, axis=0).astype(jnp.float32)
    return jnp.sum(per_example, axis=1) / jnp.maximum(count, 1.0)


def task_errors(
    outputs: jax.Array, labels: jax.Array, mask: jax.Array, codes: TaskCodes
) -> tuple[jax.Array, jax.Array]:
    """Sums of per-example errors and label counts of every task.

    Classification error is 1 for a wrong argmax class, regression error is
    the absolute error. Sums (not means) so that callers can add them over
    batches.

    Returns:
      ``(error_sum, count)``, both `[tasks]` float32.
    """

    def one(out, lab, m, n):
        out = out.astype(jnp.float32)
        valid = jnp.arange(out.shape[-1]) < n
        pred = jnp.argmax(jnp.where(valid, out, -jnp.inf), axis=-1)
        wrong = (pred != lab.astype(jnp.int32)).astype(jnp.float32)
        err = jnp.where(n > 1, wrong, jnp.abs(out[:, 0] - lab))
        return jnp.sum(jnp.where(m, err, 0.0))

    errs = jax.vmap(one, in_axes=(0, 1, 1, 0))(
        outputs, labels, mask, jnp.asarray(codes.num_classes)
    )
    return errs, jnp.sum(mask, axis=0).astype(jnp.float32)


def finite_or_none(value: float) -> float | None:
    """JSON-friendly float: None for NaN or infinity."""
    value = float(value)
    return value if math.isfinite(value) else None
