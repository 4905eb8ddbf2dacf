"""Checks of user input at the boundaries of tgjax, and of training faults.

Every check here raises one exception whose message is a single paragraph:
what is wrong (naming the offending value and where it is), what was
expected, and how to fix it. :func:`check_fit_inputs` is the check every run
passes before any work starts or any file is written; the command line calls
it before it creates the run folder, and :func:`tgjax.fit` calls it again for
Python users.

The numerical side, :func:`find_fault` and :func:`fault_message`, reads the
per-step flags that the compiled train step stacks over an epoch, so a fault
is located to its step, task and group with one host transfer per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tgjax.tasks import Task

# Splits smaller than this cannot be trained on (features standardised over a
# single example are all zero) or give meaningless validation and test scores.
MIN_SPLIT_EXAMPLES = 2

# Files a run folder may hold; --overwrite deletes only folders made of these,
# so that a mistyped --out never removes unrelated files.
RUN_FILES = frozenset(
    {
        "assignment.png",
        "checkpoint",
        "checkpoints",
        "config.json",
        "groups.json",
        "metrics.jsonl",
        "results.json",
        "report.md",
        "report.html",
        "figures",
        "tensorboard",
    }
)


class NumericalError(FloatingPointError):
    """Training produced a non-finite loss, gradient or assignment."""


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_features(x, *, where: str) -> None:
    """Checks that inputs are numeric and finite.

    Args:
      x: `[examples, ...]` inputs.
      where: what the array is, e.g. ``"the train split"``, for the message.

    Raises:
      ValueError: naming the first non-finite entry and how many there are.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(
            f"The inputs of {where} must be numbers, got an array of dtype "
            f"{x.dtype}; convert them with np.asarray(x, np.float32) first."
        )
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x)
    if bad.any():
        idx = _first_bad(bad)
        raise ValueError(
            f"The inputs of {where} hold {int(bad.sum())} NaN or infinite "
            f"value(s), the first x{list(idx)} = {x[idx]}. Features must be "
            "finite: impute or drop those examples (NaN marks a missing label, "
            "never a missing feature)."
        )


def check_labels(y, tasks: Sequence[Task], *, where: str) -> None:
    """Checks that every label fits its task; NaN (missing) is allowed.

    Class labels must be whole numbers from 0 to ``num_classes - 1``;
    regression labels must be finite.

    Args:
      y: `[examples, tasks]` labels.
      tasks: the tasks, in column order.
      where: what the array is, for the message.

    Raises:
      ValueError: naming the task, the offending label, its example and the
        allowed values.
    """
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != len(tasks):
        raise ValueError(
            f"The labels of {where} must have shape [examples, {len(tasks)}] (one "
            f"column per task), got {y.shape}."
        )
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"The labels of {where} must be numbers (NaN for missing), got dtype "
            f"{y.dtype}."
        )
    y = y.astype(np.float64)
    for i, t in enumerate(tasks):
        col = y[:, i]
        present = ~np.isnan(col)
        if t.is_classification:
            ok = np.isfinite(col) & (col == np.round(col))
            ok &= (col >= 0) & (col < t.num_classes)
            bad = present & ~ok
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                values = np.unique(col[bad])[:5].tolist()
                allowed = "0 or 1" if t.kind == "binary" else f"0..{t.num_classes - 1}"
                raise ValueError(
                    f"Task {t.name!r} is {t.kind} with labels {allowed}, but "
                    f"{where} holds {int(bad.sum())} other label(s) {values}, the "
                    f"first in example {row} (label {col[row]}). Map the classes "
                    f"to {allowed}, mark missing labels as NaN, or describe the "
                    "task as multiclass (num_classes=C) or regression."
                )
        else:
            bad = np.isinf(col)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"Task {t.name!r} has {int(bad.sum())} infinite label(s) in "
                    f"{where}, the first in example {row}. Regression labels must "
                    "be finite; use NaN for a missing label."
                )


def check_train_labels(y, tasks: Sequence[Task]) -> None:
    """Checks that every task can learn something from the train split.

    Raises:
      ValueError: for a task without any train label, or a classification
        task whose train labels are all one class.
    """
    y = np.asarray(y, np.float64)
    for i, t in enumerate(tasks):
        col = y[:, i]
        col = col[~np.isnan(col)]
        if col.size == 0:
            raise ValueError(
                f"Task {t.name!r} has no labels in the train split (all "
                f"{y.shape[0]} are missing), so nothing can be learnt for it. "
                "Drop the task (--tasks / select_tasks) or add labelled examples."
            )
        if t.is_classification and np.unique(col).size == 1:
            raise ValueError(
                f"Task {t.name!r} has only class {int(col[0])} in the train split "
                f"({col.size} labels), so it cannot learn to tell classes apart. "
                "Drop the task (--tasks / select_tasks) or add examples of the "
                "other class(es)."
            )


SPLITS = ("train", "val", "test")


def check_split_sizes(name: str, train: int, val: int, test: int) -> None:
    """Checks that every split holds at least :data:`MIN_SPLIT_EXAMPLES`.

    Raises:
      ValueError: naming the split, all three sizes and how to fix them.
    """
    sizes = dict(zip(SPLITS, (train, val, test), strict=True))
    for split, n in sizes.items():
        if n < MIN_SPLIT_EXAMPLES:
            raise ValueError(
                f"Data set {name!r}: the {split} split holds {n} example(s) "
                f"(train/val/test = {train}/{val}/{test}); every split needs at "
                f"least {MIN_SPLIT_EXAMPLES}. Add examples or change the split "
                "fractions (fractions= of fit_arrays and load_file)."
            )


def check_data(data) -> None:
    """Checks a :class:`tgjax.data.MultiTaskData` before training on it.

    Every split must hold at least :data:`MIN_SPLIT_EXAMPLES` examples,
    finite numeric inputs and labels that fit their tasks; every task needs
    labels of more than one class (or value) in the train split.

    Raises:
      ValueError: naming the split, task, example and value at fault.
    """
    check_split_sizes(data.name, *(len(getattr(data, s)) for s in SPLITS))
    for split in SPLITS:
        s = getattr(data, split)
        where = f"the {split} split of {data.name!r}"
        check_features(s.x, where=where)
        check_labels(s.y, data.tasks, where=where)
    check_train_labels(data.train.y, data.tasks)


def check_branch_inputs(branch: str, shape: tuple[int, ...]) -> None:
    """Checks that the branch network can read inputs of ``shape``.

    The ``celeba`` branch is a convolutional encoder of RGB images; it needs
    `[examples, height, width, 3]` inputs of at least 5 x 5 pixels. The
    ``mlp`` branch reads any `[examples, ...]` array (flattened).

    Raises:
      ValueError: naming the inputs' shape and the branch that fits them.
    """
    if branch != "celeba":
        return
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[-1] == 3 and min(shape[1:3]) >= 5:
        return
    per_example = " x ".join(str(d) for d in shape[1:]) or "scalar"
    raise ValueError(
        f"--branch celeba (branch='celeba', also set by --preset celeba9-parity) "
        f"needs images of shape [examples, height, width, 3] with height and "
        f"width of at least 5, but the data's inputs have shape {list(shape)} "
        f"({per_example} per example). Use --branch mlp (branch='mlp') for "
        "tabular or flattened inputs."
    )


def check_settings(config, data) -> list[str]:
    """Checks settings against the data they will run on.

    K larger than the number of tasks N is allowed: at most N groups can
    be non-empty, so the extra branches are trained and then always pruned.
    K = N is the largest useful value; it can express single-task learning.

    Returns:
      Notes for the user (e.g. about K > N); empty when there is nothing to say.

    Raises:
      ValueError: for a batch larger than the train split, or the CelebA
        branch on inputs that are not `[examples, height, width, 3]` images.
    """
    train = data.train
    shape = train.input_shape if hasattr(train, "input_shape") else train.x.shape
    check_branch_inputs(config.branch, shape)
    n_train = len(data.train)
    if config.batch_size > n_train:
        raise ValueError(
            f"batch_size ({config.batch_size}) is larger than the train split "
            f"({n_train} examples), so an epoch would have no step. Use "
            f"--batch-size {min(n_train, 128)} (batch_size={min(n_train, 128)}) "
            "or less, or add data."
        )
    notes = []
    late = [e for e in config.lr_halving_epochs if e >= config.epochs]
    if late:
        shown = ",".join(str(e) for e in late)
        notes.append(
            f"lr_halving_epochs {shown} (--lr-halving-epochs) at or beyond the "
            f"{config.epochs} search epochs (--epochs) are never reached: the "
            "learning rates halve only during the search."
        )
    n_tasks = len(data.tasks)
    if config.baseline is None and config.groups > n_tasks:
        notes.append(
            f"groups (K = {config.groups}) exceeds the {n_tasks} tasks; at most "
            f"{n_tasks} groups can be non-empty, so {config.groups - n_tasks} "
            f"branch(es) only cost time. K = {n_tasks} is the largest useful value."
        )
    return notes


def check_fit_inputs(data, config) -> list[str]:
    """Every check a run makes before it starts: data, then settings on data.

    Returns:
      The notes of :func:`check_settings`.

    Raises:
      TypeError: when ``data`` or ``config`` is of the wrong type.
      ValueError: from :func:`check_data` and :func:`check_settings`.
    """
    from tgjax.config import RunConfig
    from tgjax.data.base import MultiTaskData
    from tgjax.data.stream import StreamData, check_stream_data

    if not isinstance(data, (MultiTaskData, StreamData)):
        raise TypeError(
            f"data must be a tgjax.data.MultiTaskData or StreamData, got "
            f"{type(data).__name__}; for NumPy arrays use "
            "tgjax.fit_arrays(x, y, tasks, config)."
        )
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"config must be a tgjax.RunConfig, got {type(config).__name__}; "
            "build one with RunConfig(...) or RunConfig.from_dict(settings)."
        )
    if isinstance(data, StreamData):
        check_stream_data(data)
    else:
        check_data(data)
    notes = check_settings(config, data)
    if config.stream or isinstance(data, StreamData):
        import jax

        check_stream_settings(config, len(data.train), jax.process_count())
    return notes


def check_stream_settings(config, n_train: int, processes: int) -> None:
    """Checks that a streamed search can split its batches over processes.

    Each of the ``processes`` reads its own equal shard of the ``n_train``
    training examples and contributes ``batch_size / processes`` rows to
    every step.

    Raises:
      ValueError: naming the problem and the setting that fixes it.
    """
    if config.workers < 0:
        raise ValueError(
            f"workers must be >= 0 (decoding processes; 0 decodes in the "
            f"training process), got {config.workers}. Use --workers 0 or more."
        )
    b = config.batch_size
    if b % processes:
        fit = processes * max(b // processes, 1)
        raise ValueError(
            f"A streamed run splits each batch over its {processes} processes, "
            f"but batch_size ({b}) is not divisible by {processes}; use "
            f"--batch-size {fit}."
        )
    shard = n_train // processes
    if b // processes > shard:
        raise ValueError(
            f"A streamed run reads {b // processes} examples per step in each of "
            f"its {processes} processes, more than a process's shard of the train "
            f"split ({shard} of {n_train} examples), so an epoch would have no "
            f"step. Use --batch-size {shard * processes} or less, or --in-memory."
        )


def check_arrays(x, y, tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts the arrays given to :func:`tgjax.fit_arrays`.

    Returns:
      ``(x, y)`` as float32, y `[examples, tasks]`.

    Raises:
      ValueError: for non-numeric or non-finite inputs, a label count that
        does not match the inputs or the tasks, or labels that do not fit
        their tasks.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    check_features(x, where="x")
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape [examples, features, ...], got {x.shape}; a single "
            "feature column is x[:, None]."
        )
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"y must hold numbers (class index or value, NaN for missing), got "
            f"dtype {y.dtype}."
        )
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"y must have shape [examples, tasks], got {y.shape}.")
    if len(x) != len(y):
        raise ValueError(
            f"x has {len(x)} examples but y has {len(y)} label rows; give one "
            "label row per example (NaN for a missing label)."
        )
    if y.shape[1] != len(tasks):
        raise ValueError(
            f"y has {y.shape[1]} label column(s) but {len(tasks)} task(s) were "
            "described; describe one Task per label column, in column order."
        )
    check_labels(y, tasks, where="y")
    return x.astype(np.float32), y.astype(np.float32)


def output_folder_names(out: str, is_ours, writer: str) -> list[str]:
    """The names in an existing output folder ``out``; [] if absent or empty.

    Args:
      out: the --out folder.
      is_ours: ``is_ours(name)`` is true for what the command writes there.
      writer: the message's verb phrase ("no tgjax run writes").

    Raises:
      ValueError: when ``out`` is a file, or holds anything ``is_ours``
        rejects (such files are never deleted, not even with --overwrite).
    """
    if not os.path.exists(out):
        return []
    if not os.path.isdir(out):
        raise ValueError(
            f"--out {out} exists and is a file, not a folder; choose another --out."
        )
    names = sorted(os.listdir(out))
    foreign = [n for n in names if not is_ours(n)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"--out {out} holds files that {writer} ({shown}); tgjax "
            "never deletes those, not even with --overwrite. Choose a new or "
            "empty folder for --out."
        )
    return names


def check_run_folder(out: str, overwrite: bool) -> bool:
    """Decides whether a run may write into the folder ``out``.

    Returns:
      True when ``out`` holds an earlier run that ``overwrite`` allows to be
      replaced; False when it is absent or empty.

    Raises:
      ValueError: when ``out`` is a file, holds a run and ``overwrite`` is
        off, or holds files that no run writes (never deleted).
    """
    names = output_folder_names(
        out, lambda n: n in RUN_FILES or n.startswith(".tmp"), "no tgjax run writes"
    )
    if not names:
        return False
    if not overwrite:
        ckpts = os.path.join(out, "checkpoints")
        resumable = os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))
        why = (
            f" ('tgjax train --resume {out}' continues it)"
            if resumable
            else " that stopped before its first checkpoint, so it cannot be resumed"
        )
        raise ValueError(
            f"The run folder {out} already holds another run ({', '.join(names)})"
            f"{why}; pass --overwrite to replace it or choose another --out."
        )
    return True


# The resume clause of a fault message; the command line replaces it with the
# command for its run folder, or drops it when there is no checkpoint yet.
RESUME_HINT = (
    ", or continue from the last checkpoint with 'tgjax train --resume RUN_DIR' "
    "(fit(..., resume=True) in Python)"
)


def find_fault(metrics: dict) -> int | None:
    """Index of the first step whose ``finite`` flag is False, or None.

    Args:
      metrics: stacked metrics of an epoch, with ``finite`` `[steps]`.
    """
    finite = np.asarray(metrics["finite"])
    if finite.all():
        return None
    return int(np.flatnonzero(~finite)[0])


def fault_message(metrics: dict, index: int, step: int, tasks: Sequence[Task]) -> str:
    """Says where a numerical fault of one step appeared and what to do.

    Args:
      metrics: stacked metrics of an epoch; uses ``loss_matrix``
        `[steps, tasks, groups]` and, when present, ``fault`` `[steps, tasks,
        groups]` (a non-finite head gradient or row of S) and
        ``branch_fault`` `[steps, groups]`.
      index: the step's index within the epoch.
      step: the global step number.
      tasks: the tasks.
    """
    names = [t.name for t in tasks]
    lm = np.asarray(metrics["loss_matrix"][index])
    rows, cols = np.nonzero(~np.isfinite(lm))
    if rows.size:
        where = (
            f"the loss of task {names[rows[0]]!r} on group {int(cols[0])} is "
            f"{lm[rows[0], cols[0]]}"
        )
    elif "fault" in metrics and np.asarray(metrics["fault"][index]).any():
        r, c = _first_bad(np.asarray(metrics["fault"][index]))
        where = (
            f"the losses were finite, but the gradient of task {names[r]!r} on "
            f"group {c} (its head or its assignment logit) is not"
        )
    elif "branch_fault" in metrics and np.asarray(metrics["branch_fault"][index]).any():
        g = int(np.flatnonzero(np.asarray(metrics["branch_fault"][index]))[0])
        where = f"the losses were finite, but a gradient of branch (group) {g} is not"
    else:
        where = "the losses were finite, so a shared gradient or S overflowed"
    return (
        f"Training stopped at step {step}: a non-finite value appeared; {where}. "
        "Lower the learning rate (--lr, --assignment-lr), check the inputs for "
        f"extreme values{RESUME_HINT}."
    )
