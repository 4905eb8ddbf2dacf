"""The container every data set loader returns, and its checks."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

import numpy as np

from tgjax.tasks import Task, check_tasks
from tgjax.validate import check_split_sizes

_FLOAT32_MAX = float(np.finfo(np.float32).max)
# A standardised regression target further out than this overflows float32
# in a squared error summed over a batch ((1e12)**2 * 1e6 < 3.4e38).
_MAX_STANDARD_SCORE = 1e12


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a multi-task data set.

    Attributes:
      x: `[examples, ...]` float32 inputs.
      y: `[examples, tasks]` float32 labels: class index or regression value,
        NaN where the label is missing.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def task_indices(names: list, known: list[str], data_name: str) -> list[int]:
    """Column indices of ``names`` among ``known``; unknown or repeated raise.

    Raises:
      ValueError: naming the unknown tasks (with the closest known name) or
        the repeated ones.
    """
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = [
            f"{n!r}" + (f" (did you mean {c[0]!r}?)" if c else "")
            for n in unknown
            for c in [difflib.get_close_matches(str(n), known, n=1)]
        ]
        raise ValueError(
            f"Unknown task name(s) {', '.join(hints)} for data set "
            f"{data_name!r}; known tasks: {known}."
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"Task names repeat in {names} (repeated: {dupes}); name each task once."
        )
    return [known.index(n) for n in names]


@dataclasses.dataclass(frozen=True)
class MultiTaskData:
    """A multi-task data set with fixed train, validation and test splits.

    Attributes:
      name: data set name.
      tasks: the tasks, in label-column order.
      train, val, test: the splits.
      target_mean, target_std: `[tasks]` statistics used to standardise
        regression targets (mean 0 and std 1 for classification tasks), so
        that metrics can be reported in the original units.
      description: one line on where the data comes from.
      task_notes: task name -> one line on its kind and any label remapping
        (e.g. ``"bin: binary, inferred (labels -1/1 mapped to 0/1)"``); set by
        loaders that infer kinds, empty otherwise.
    """

    name: str
    tasks: tuple[Task, ...]
    train: Split
    val: Split
    test: Split
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    description: str = ""
    task_notes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        tasks = check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        n = len(tasks)
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if split.y.ndim != 2 or split.y.shape[1] != n:
                raise ValueError(
                    f"{self.name}: the {split_name} labels must have shape "
                    f"[examples, {n}], got {split.y.shape}."
                )
            if split.x.shape[0] != split.y.shape[0]:
                raise ValueError(
                    f"{self.name}: the {split_name} split has {split.x.shape[0]} "
                    f"inputs but {split.y.shape[0]} label rows."
                )
        if self.target_mean is None:
            object.__setattr__(self, "target_mean", np.zeros(n, np.float32))
        if self.target_std is None:
            object.__setattr__(self, "target_std", np.ones(n, np.float32))

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def select_tasks(self, names) -> MultiTaskData:
        """The same data restricted to the named tasks, in the given order."""
        names = list(names)
        idx = task_indices(names, self.task_names, self.name)

        def pick(s: Split) -> Split:
            return Split(s.x, s.y[:, idx])

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


def check_fractions(fractions, *, allow_empty: bool = False) -> None:
    """Checks (validation, test) split fractions.

    Each must be a number in [0, 1), with a sum below 1 so that the train
    split is not empty; unless ``allow_empty``, both must be above 0.

    Raises:
      ValueError: naming ``fractions``, the value at fault and a fix.
    """
    fix = "pass e.g. fractions=(0.2, 0.2) (validation, test; train is the rest)"
    try:
        val, test = (float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(
            f"fractions={fractions!r} must be two numbers (validation, test); {fix}."
        ) from None
    for what, f in (("validation", val), ("test", test)):
        if not 0.0 <= f < 1.0:
            raise ValueError(
                f"fractions={tuple(fractions)!r}: the {what} fraction {f} must be "
                f"in [0, 1); {fix}."
            )
        if not allow_empty and f == 0.0:
            split = "val" if what == "validation" else "test"
            raise ValueError(
                f"fractions={tuple(fractions)!r}: the {what} fraction is 0, so the "
                f"{split} split holds 0 example(s); it must be above 0 — {fix}."
            )
    if val + test >= 1.0:
        raise ValueError(
            f"fractions={tuple(fractions)!r}: validation + test = {val + test:g} "
            f"leaves no train examples; the sum must be below 1 — {fix}."
        )


def split_indices(
    n: int, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random split of `n` examples into train, validation, test.

    Args:
      n: number of examples.
      fractions: (validation, test) fractions; train takes the rest.
      seed: seed of the permutation, fixed per data set.

    Raises:
      ValueError: naming ``fractions`` unless each is in [0, 1) and they sum
        to less than 1.
    """
    check_fractions(fractions, allow_empty=True)
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * fractions[0])), int(round(n * fractions[1]))
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def standardize_features(train: np.ndarray, *others: np.ndarray):
    """Standardises features with train-split statistics (constant columns kept).

    The statistics are computed in float64, so that a column of values around
    1e25 (whose squares overflow float32) is standardised rather than turned
    into a constant; the results are float32.

    Raises:
      ValueError: naming the column index when a standardised value is not
        finite or beyond the float32 range, with a hint to rescale it.
    """
    mean = train.mean(axis=0, keepdims=True, dtype=np.float64)
    std = train.std(axis=0, keepdims=True, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    out = []
    for a in (train, *others):
        z = (a.astype(np.float64) - mean) / std
        bad = ~np.isfinite(z) | (np.abs(z) > _FLOAT32_MAX)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"Feature column {col} cannot be standardised in float32 "
                f"(value {a[row, col]!r} gives {z[row, col]!r} with train mean "
                f"{mean[0, col]:.4g} and std {std[0, col]:.4g}); rescale column "
                f"{col} to a moderate range, e.g. divide it by {std[0, col]:.3g}."
            )
        out.append(z.astype(np.float32))
    return tuple(out)


def _as_float32(a: np.ndarray, what: str, kind: str) -> np.ndarray:
    """``a`` as float32, refusing finite values beyond the float32 range."""
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        big = np.isfinite(a) & (np.abs(a) > _FLOAT32_MAX)
        if big.any():
            where = np.argwhere(big)[0]
            col = int(where[1]) if a.ndim > 1 else 0
            raise ValueError(
                f"{what}{where.tolist()} = {a[tuple(where)]!r} is beyond the "
                f"float32 range (+-{_FLOAT32_MAX:.3g}) that training uses; "
                f"rescale {kind} column {col}."
            )
    return np.asarray(a, np.float32)


def from_arrays(
    name: str,
    tasks,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fractions: tuple[float, float] = (0.2, 0.2),
    seed: int = 0,
    standardize: bool = True,
    description: str = "",
) -> MultiTaskData:
    """Builds a :class:`MultiTaskData` from arrays with a seeded random split.

    Regression targets are standardised with train-split statistics; the
    statistics are kept so that metrics come back in the original units.

    Raises:
      ValueError: for ``fractions`` outside [0, 1), of 0 (an empty split) or
        summing to 1 or more, or a split too small to train on.
    """
    check_fractions(fractions)
    tasks = check_tasks(tasks)
    x = _as_float32(np.asarray(x), "x", "feature")
    y = np.asarray(y)
    _as_float32(y, "y", "target")
    y64 = np.asarray(y, np.float64)
    tr, va, te = split_indices(len(x), fractions, seed)
    check_split_sizes(name, len(tr), len(va), len(te))
    xs = (x[tr], x[va], x[te])
    if standardize:
        flat = [a.reshape(len(a), -1) for a in xs]
        flat = standardize_features(*flat)
        xs = tuple(f.reshape(a.shape) for f, a in zip(flat, xs, strict=True))
    # Target statistics and standardisation in float64: squares of values
    # around 1e20 overflow float32 and would make the std (and the MAE in
    # original units) infinite.
    mean = np.zeros(len(tasks), np.float64)
    std = np.ones(len(tasks), np.float64)
    for i, t in enumerate(tasks):
        if t.kind == "regression":
            col = y64[tr, i]
            col = col[~np.isnan(col)]
            # A task without train labels keeps mean 0 and std 1.
            if col.size:
                mean[i] = col.mean()
                s = col.std()
                std[i] = s if s > 0 else 1.0
    z = (y64 - mean) / std
    finite = np.isfinite(y64)
    bad = finite & ~(np.abs(z) <= _MAX_STANDARD_SCORE)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        split = "train" if row in set(tr.tolist()) else "validation or test"
        raise ValueError(
            f"Target column {col} ({tasks[col].name!r}) holds {y64[row, col]!r} "
            f"(example {row}, {split} split), {abs(z[row, col]):.3g} train standard "
            f"deviations from the train mean {mean[col]:.4g} (std {std[col]:.4g}); "
            "its squared error would overflow float32. Fix or drop that value "
            "(NaN marks a missing label), or rescale the column."
        )
    y = z.astype(np.float32)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return MultiTaskData(
        name=name,
        tasks=tasks,
        train=Split(xs[0], y[tr]),
        val=Split(xs[1], y[va]),
        test=Split(xs[2], y[te]),
        target_mean=mean,
        target_std=std,
        description=description,
    )
