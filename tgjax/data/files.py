"""Multi-task data from a user's own ``.npz`` or CSV file.

``.npz``: an array ``x`` `[examples, ...]` of features and one array
`[examples]` per task, named after the task (every array but ``x`` is a task
unless ``tasks`` says otherwise). NaN marks a missing label.

CSV: a header row, then one row per example. Task columns are the ones named
in ``tasks``, or else every column whose header starts with ``task:``. A task
is named after its header without the prefix, so ``task:toxic`` is task
``toxic``, and ``tasks`` may name it ``toxic`` or ``task:toxic``. The features
are the ones named in ``features``, or else every column that is neither a
chosen task nor headed ``task:``: a ``task:`` column left out of ``tasks`` is
dropped, never used as a feature. Feature
cells must hold finite numbers; an empty task cell, ``nan`` or ``NA`` is a
missing label.

Task kinds are inferred from the labels unless ``kinds`` names them (see
:func:`infer_labels`): two distinct whole numbers (0/1, -1/+1, 1/2) make a
binary task, mapped to 0/1 in sorted order; other whole numbers from 0 to
:data:`MAX_INFERRED_CLASSES` - 1 a multiclass task with ``max + 1`` classes;
anything else a regression task. Declare ``kinds={"count": "regression"}``
for integer counts. The loaded data's ``task_notes`` and ``description`` say
which kind each task got and any remapping.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tgjax.data.base import MultiTaskData, from_arrays
from tgjax.tasks import KINDS, Task
from tgjax.validate import check_data

TASK_PREFIX = "task:"
MAX_INFERRED_CLASSES = 20
"""Whole-number labels from 0 below this are inferred to be classes; counts
that reach it are inferred to be regression targets."""
MISSING = ("", "nan", "na", "n/a", "null", "none", "?")


def infer_labels(
    name: str, labels: np.ndarray, kind: str | None = None
) -> tuple[Task, np.ndarray, str]:
    """The :class:`Task` for one label column, its labels as training uses them
    and a one-line note on the kind and any remapping.

    Inference (``kind`` None), on the labels that are present:

    * exactly two distinct whole numbers ``a < b`` (0/1, -1/+1, 1/2, ...):
      binary, ``a`` mapped to 0 and ``b`` to 1;
    * whole numbers from 0 with at most :data:`MAX_INFERRED_CLASSES` classes
      (largest label below it): multiclass with ``largest + 1`` classes; a
      single value 0 or 1 is binary;
    * anything else (fractions, negative whole numbers with more than two
      values, counts reaching :data:`MAX_INFERRED_CLASSES`): regression.

    A declared ``kind`` overrides the inference: ``"regression"`` keeps the
    raw values (no remapping), ``"binary"`` accepts 0/1 or any two whole
    numbers (mapped as above), ``"multiclass"`` needs whole numbers from 0.

    Args:
      name: task name.
      labels: `[examples]` float labels, NaN where missing.
      kind: ``"binary"``, ``"multiclass"`` or ``"regression"``; None infers it.

    Returns:
      ``(task, labels, note)``: ``labels`` is float32, remapped for a binary
      task whose values are not 0/1; ``note`` reads e.g.
      ``"bin: binary, inferred (labels -1/1 mapped to 0/1)"``.

    Raises:
      ValueError: for a task without labels, an unknown kind, or class labels
        that do not fit the kind.
    """
    labels = np.asarray(labels, np.float32)
    present = labels[~np.isnan(labels)]
    if present.size == 0:
        raise ValueError(f"Task {name!r} has no labels at all; drop the column.")
    if np.any(np.isinf(present)):
        raise ValueError(f"Task {name!r} has infinite labels; use NaN for missing.")
    integral = bool(np.all(present == np.round(present)))
    values = np.unique(present)
    whole = integral and present.min() >= 0
    two = integral and len(values) == 2
    how = "declared" if kind is not None else "inferred"
    if kind is None:
        if two or (whole and present.max() <= 1):
            kind = "binary"
        elif whole and present.max() < MAX_INFERRED_CLASSES:
            kind = "multiclass"
        else:
            kind = "regression"
    if kind not in KINDS:
        raise ValueError(f"Task {name!r}: kind must be one of {KINDS}, got {kind!r}.")
    if kind == "regression":
        return (
            Task(name, "regression"),
            labels,
            f"{name}: regression, {how} (values {present.min():g}..{present.max():g}"
            ", standardised; errors in original units)",
        )
    if kind == "binary":
        if two and not (values[0] == 0 and values[1] == 1):
            a, b = values
            mapped = np.where(labels == a, 0.0, np.where(labels == b, 1.0, labels))
            note = f"labels {a:g}/{b:g} mapped to 0/1"
            return (
                Task(name, "binary"),
                mapped.astype(np.float32),
                (f"{name}: binary, {how} ({note})"),
            )
        if not whole or present.max() > 1:
            found = (
                f"has label {int(present.max())}"
                if whole
                else "has labels that are not whole numbers"
            )
            raise ValueError(
                f"Task {name!r} is binary but {found} (labels {_some(values)}); "
                "labels must be 0 or 1, or two whole numbers (mapped to 0/1 in "
                "sorted order); declare it multiclass for more classes, or "
                "regression for continuous values."
            )
        return Task(name, "binary"), labels, f"{name}: binary, {how} (labels 0/1)"
    if not whole:
        raise ValueError(
            f"Task {name!r} is {kind} but its labels are not whole numbers from 0 "
            f"(they range over {present.min():g}..{present.max():g}); map classes "
            "to 0, 1, ... or declare it a regression task."
        )
    top = int(present.max())
    classes = max(top + 1, 2)
    return (
        Task(name, "multiclass", num_classes=classes),
        labels,
        f"{name}: multiclass, {how} ({classes} classes, labels 0..{classes - 1})",
    )


def _some(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


def infer_task(name: str, labels: np.ndarray, kind: str | None = None) -> Task:
    """The :class:`Task` for one label column; see :func:`infer_labels`.

    A binary task inferred from two values other than 0/1 (such as -1/+1)
    trains on the labels :func:`infer_labels` returns, mapped to 0/1.
    """
    return infer_labels(name, labels, kind)[0]


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _cell(text: str, where: str, *, label: bool) -> float:
    t = text.strip()
    if label and t.lower() in MISSING:
        return float("nan")
    try:
        value = float(t)
    except ValueError:
        what = "a label (or empty for missing)" if label else "a number"
        raise ValueError(f"{where}: cannot read {text!r} as {what}.") from None
    if not label and not np.isfinite(value):
        raise ValueError(f"{where}: features must be finite, got {text!r}.")
    if label and np.isinf(value):
        raise ValueError(f"{where}: labels must be finite or empty, got {text!r}.")
    if np.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise ValueError(
            f"{where}: {text!r} is beyond the float32 range (+-{_FLOAT32_MAX:.3g}) "
            "that training uses; rescale the column."
        )
    return value


def read_csv(
    path: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads a CSV file into features, labels and task names.

    Returns:
      ``(x, y, task_names)``: `[examples, features]` and `[examples, tasks]`
      float32, NaN for a missing label.

    Raises:
      ValueError: naming the row and column of a bad cell, a missing column or
        a row of the wrong length.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e}).") from None
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e}).") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise ValueError(f"{path}: empty file; expected a header row of names.")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or any(not h for h in header):
        raise ValueError(
            f"{path}: column names must be unique and non-empty; got {header}."
        )
    prefixed = [i for i, h in enumerate(header) if h.startswith(TASK_PREFIX)]
    if tasks is None:
        task_cols = prefixed
        if not task_cols:
            raise ValueError(
                f"{path}: no task columns; name them with --task-columns A,B,... "
                "(tasks=[column names] in Python) or name task "
                f"columns '{TASK_PREFIX}<name>'. Columns: {header}."
            )
    else:
        task_cols, missing = [], []
        for t in tasks:
            t = str(t).strip()
            if t in header:
                task_cols.append(header.index(t))
            elif TASK_PREFIX + t in header:
                task_cols.append(header.index(TASK_PREFIX + t))
            else:
                missing.append(t)
        if missing:
            raise ValueError(
                f"{path}: no task column(s) {missing}; name a column as in the "
                f"header, with or without '{TASK_PREFIX}'. Columns: {header}."
            )
    # Task names are bare: column 'task:toxic' is task 'toxic' however chosen.
    names = [
        header[i][len(TASK_PREFIX) :] if i in prefixed else header[i] for i in task_cols
    ]
    if features is None:
        # Columns headed 'task:' are labels, never features, even when unselected.
        feat_cols = [
            i for i in range(len(header)) if i not in task_cols and i not in prefixed
        ]
    else:
        missing = [c for c in features if c not in header]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; columns: {header}.")
        feat_cols = [header.index(c) for c in features]
        labels = [header[i] for i in feat_cols if i in prefixed or i in task_cols]
        if labels:
            raise ValueError(
                f"{path}: features {labels} are task columns; columns headed "
                f"'{TASK_PREFIX}' and the chosen tasks are labels, never features. "
                "Rename the column without the prefix to use it as a feature."
            )
    if not feat_cols:
        raise ValueError(f"{path}: no feature columns besides the tasks {names}.")
    x, y = [], []
    for r, row in enumerate(rows[1:], start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}, row {r}: expected {len(header)} cells, got {len(row)}."
            )
        x.append(
            [
                _cell(row[i], f"{path}, row {r}, column {header[i]!r}", label=False)
                for i in feat_cols
            ]
        )
        y.append(
            [
                _cell(row[i], f"{path}, row {r}, column {header[i]!r}", label=True)
                for i in task_cols
            ]
        )
    if not x:
        raise ValueError(f"{path}: no data rows after the header.")
    return np.asarray(x, np.float32), np.asarray(y, np.float32), names


def read_npz(
    path: str | os.PathLike, *, tasks: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads an ``.npz`` file with ``x`` and one label array per task.

    Returns:
      ``(x, y, task_names)`` as :func:`read_csv`; ``x`` keeps its trailing
      shape `[examples, ...]`.

    Raises:
      ValueError: naming the file and array for missing, non-numeric or
        mismatched arrays, or non-finite features.
    """
    path = Path(path)
    # Open the file here so that it is closed even when numpy cannot parse it.
    with open(path, "rb") as fh:
        try:
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not named arrays")
            with loaded as f:
                arrays = {k: f[k] for k in f.files}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e}).") from None
    if "x" not in arrays:
        raise ValueError(
            f"{path}: no array 'x'; expected x [examples, ...] plus one array per "
            f"task, got {sorted(arrays)}."
        )
    names = [k for k in arrays if k != "x"] if tasks is None else list(tasks)
    if not names:
        raise ValueError(
            f"{path}: no task arrays found, only {sorted(arrays)}; save each task's "
            "labels as a separate array [examples] named after the task, e.g. "
            "np.savez(path, x=x, toxic=labels_toxic, age=labels_age)."
        )
    missing = [t for t in names if t not in arrays or t == "x"]
    if missing:
        raise ValueError(
            f"{path}: no task array(s) {missing}; each task must be a separate "
            f"array named after the task. Arrays: {sorted(arrays)}."
        )
    x = arrays["x"]
    if x.ndim < 2 or x.dtype.kind not in "biuf":
        raise ValueError(
            f"{path}: 'x' must be a numeric array [examples, ...], got {x.dtype} "
            f"{x.shape}."
        )
    with np.errstate(over="ignore"):  # overflow becomes inf, refused below
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0].tolist()
        raise ValueError(f"{path}: features must be finite; x{bad} = {x[tuple(bad)]}.")
    cols = []
    for t in names:
        a = arrays[t]
        if a.shape != (len(x),) or a.dtype.kind not in "biuf":
            raise ValueError(
                f"{path}: task array {t!r} must be numeric of shape ({len(x)},) to "
                f"match x; got {a.dtype} {a.shape}."
            )
        with np.errstate(over="ignore"):
            col = a.astype(np.float32)
        if np.isinf(col).any():
            raise ValueError(
                f"{path}: task array {t!r} holds infinite labels or values beyond "
                "the float32 range; use NaN for a missing label."
            )
        cols.append(col)
    return x, np.stack(cols, axis=1), names


def load_file(
    path: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    kinds: Mapping[str, str] | Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
    standardize: bool = True,
    name: str | None = None,
) -> MultiTaskData:
    """Loads a user's ``.npz`` or ``.csv`` file as a multi-task data set.

    Args:
      path: the file; its suffix picks the format.
      tasks: task columns or arrays, in order; see the module docstring for
        the default. A CSV column ``task:<name>`` may be named with or without
        the prefix; the task is called ``<name>`` either way.
      kinds: kind of each task, as a dict by name (others inferred) or a list
        in task order; None infers all.
      features: CSV feature columns; default all non-task columns.
      fractions: (validation, test) fractions of the seeded random split.
      seed: seed of the split.
      standardize: standardise features with train statistics.
      name: data set name; default the file name without suffix.

    Returns:
      A :class:`MultiTaskData` whose `[examples, tasks]` labels hold NaN where
      a label is missing.

    Raises:
      FileNotFoundError: when the file does not exist.
      ValueError: for a folder or unreadable path, an unknown suffix, any
        malformed content, or data that :func:`tgjax.validate.check_data`
        refuses (a split of fewer than 2 examples, a task without train labels
        or with one class), naming the place and what was expected.

    Example:
      >>> import tempfile, numpy as np
      >>> p = tempfile.mkdtemp() + "/toy.npz"
      >>> np.savez(p, x=np.random.rand(20, 3), a=np.arange(20) % 2,
      ...          b=np.linspace(0, 1, 20))
      >>> [t.kind for t in load_file(p).tasks]
      ['binary', 'regression']
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"Data file {str(path)!r} is a folder; pass the path of a .npz or .csv "
            "file (built-in data sets on disk take --data-dir instead)."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file {str(path)!r} does not exist; check the path."
        )
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise ValueError(
            f"{path}: unknown format {suffix!r}; expected a .npz or .csv file."
        )
    if suffix == ".npz" and features is not None:
        raise ValueError("features= applies to CSV files; an .npz file has x.")
    try:
        if suffix == ".npz":
            x, y, names = read_npz(path, tasks=tasks)
        else:
            x, y, names = read_csv(path, tasks=tasks, features=features)
    except PermissionError as e:
        raise ValueError(
            f"Data file {str(path)!r} cannot be read ({e.strerror}); check its "
            "permissions."
        ) from None
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"{path}: task names must be unique and non-empty: {names}.")
    if kinds is not None:
        if isinstance(kinds, Mapping):
            kinds = {
                (
                    k[len(TASK_PREFIX) :]
                    if isinstance(k, str)
                    and k.startswith(TASK_PREFIX)
                    and k not in names
                    else k
                ): v
                for k, v in kinds.items()
            }
            unknown = sorted(set(kinds) - set(names))
            if unknown:
                raise ValueError(
                    f"kinds names unknown task(s) {unknown}; tasks: {names}."
                )
            kind_list = [kinds.get(n) for n in names]
        else:
            kind_list = list(kinds)
            if len(kind_list) != len(names):
                raise ValueError(
                    f"kinds has {len(kind_list)} entries for {len(names)} tasks "
                    f"{names}."
                )
    else:
        kind_list = [None] * len(names)
    inferred = [
        infer_labels(n, y[:, i], k)
        for i, (n, k) in enumerate(zip(names, kind_list, strict=True))
    ]
    task_objs = tuple(t for t, _, _ in inferred)
    y = np.stack([labels for _, labels, _ in inferred], axis=1)
    notes = {t.name: note for t, _, note in inferred}
    data = from_arrays(
        name or path.stem,
        task_objs,
        x,
        y,
        fractions=fractions,
        seed=seed,
        standardize=standardize,
        description=f"user file {path.name}; tasks: " + "; ".join(notes.values()),
    )
    data = dataclasses.replace(data, task_notes=notes)
    # Split sizes and per-split label checks only make sense after the split.
    check_data(data)
    return data
