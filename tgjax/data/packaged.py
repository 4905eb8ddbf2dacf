"""Real multi-task data sets that ship inside Python packages."""

from __future__ import annotations

import gzip
import importlib.resources
import io

import numpy as np

from tgjax.data.base import MultiTaskData, from_arrays
from tgjax.tasks import Task


def _missing_extra(package: str, extra: str) -> ImportError:
    return ImportError(
        f"This data set needs the package {package!r}, which is not installed. "
        f"Install it with: pip install 'tgjax[{extra}]' (in a source checkout: "
        f"pip install '.[{extra}]')"
    )


def load_yeast(seed: int = 0) -> MultiTaskData:
    """The yeast gene-function data: 2,417 genes, 103 features, 14 binary tasks.

    Read from the copy shipped in the ``river`` package (>= 0.26) without
    importing ``river`` itself. Split 60/20/20 with a fixed seed; features
    standardised with train statistics.
    """
    try:
        ref = importlib.resources.files("river") / "datasets" / "yeast.csv.gz"
        raw = ref.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise _missing_extra("river>=0.26", "yeast") from e
    text = gzip.decompress(raw).decode()
    header = text.split("\n", 1)[0].split(",")
    table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float32)
    label_cols = [i for i, h in enumerate(header) if h.startswith("Class")]
    feat_cols = [i for i, h in enumerate(header) if h.startswith("Att")]
    tasks = tuple(Task(header[i], "binary") for i in label_cols)
    return from_arrays(
        "yeast",
        tasks,
        table[:, feat_cols],
        table[:, label_cols],
        seed=seed,
        description="yeast gene functions (river's packaged copy), 14 binary tasks",
    )


def load_digits(seed: int = 0) -> MultiTaskData:
    """scikit-learn's 8x8 digits as 10 one-vs-rest binary tasks (1,797 images)."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:
        raise _missing_extra("scikit-learn", "digits") from e
    d = sk_digits()
    x = d.data.astype(np.float32) / 16.0
    y = (d.target[:, None] == np.arange(10)[None, :]).astype(np.float32)
    tasks = tuple(Task(f"digit{k}", "binary") for k in range(10))
    return from_arrays(
        "digits",
        tasks,
        x,
        y,
        seed=seed,
        description="scikit-learn 8x8 digits, 10 one-vs-rest tasks",
    )
