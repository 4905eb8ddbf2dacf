"""User .npz and CSV files: missing labels, kinds, errors, and a bounded fuzz."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgjax.data import load_file


def test_npz_missing_labels_and_inferred_kinds(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    a = (np.arange(n) % 2).astype(np.float32)
    a[3] = np.nan
    path = tmp_path / "toy.npz"
    np.savez(
        path,
        x=rng.normal(size=(n, 2, 3)),
        a=a,
        c=np.arange(n) % 4,
        r=rng.normal(size=n) * 5 + 10,
    )
    data = load_file(path)
    assert [t.kind for t in data.tasks] == ["binary", "multiclass", "regression"]
    assert data.tasks[1].num_classes == 4
    assert data.train.x.shape[1:] == (2, 3)
    ys = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert np.isnan(ys[:, 0]).sum() == 1 and not np.isnan(ys[:, 1:]).any()
    assert data.target_std[2] > 1.0
    picked = load_file(path, tasks=["r", "a"], kinds={"r": "regression"})
    assert picked.task_names == ["r", "a"]


def test_csv_convention_missing_cells_and_overrides(tmp_path):
    rows = ["f1,f2,task:smoker,task:age"]
    for i in range(20):
        smoker = "" if i % 5 == 0 else str(i % 2)
        age = "NA" if i == 7 else f"{20 + i}"
        rows.append(f"{i * 0.5},{-i},{smoker},{age}")
    path = tmp_path / "people.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_file(path, kinds={"age": "regression"})
    assert data.task_names == ["smoker", "age"]
    assert [t.kind for t in data.tasks] == ["binary", "regression"]
    ys = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert np.isnan(ys[:, 0]).sum() == 4 and np.isnan(ys[:, 1]).sum() == 1
    data = load_file(path, tasks=["f2"], features=["f1"], kinds=["regression"])
    assert data.train.x.shape[1] == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,task:y\n1,0\nfoo,1\n", "row 3, column 'a': cannot read 'foo'"),
        ("a,task:y\n1,0\n2\n", "row 3: expected 2 cells, got 1"),
        ("a,task:y\n1,0\nnan,1\n", "features must be finite"),
        ("a,task:y\n1,0\n,1\n", "cannot read '' as a number"),
        ("a,b\n1,0\n", "no task columns"),
        ("a,task:y\n1,\n2,\n", "has no labels"),
        ("a,a,task:y\n1,2,0\n", "unique"),
        ("a,task:y\n1,inf\n", "finite or empty"),
        ("", "empty file"),
    ],
)
def test_csv_errors_say_where(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_file(path)


def test_npz_and_format_errors(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.ones((4, 2)), y=np.ones(3))
    with pytest.raises(ValueError, match=r"must be numeric of shape \(4,\)"):
        load_file(path)
    np.savez(path, x=np.array([[1.0, np.inf]] * 4), y=np.ones(4))
    with pytest.raises(ValueError, match="features must be finite"):
        load_file(path)
    np.savez(path, features=np.ones((4, 2)), y=np.ones(4))
    with pytest.raises(ValueError, match="no array 'x'"):
        load_file(path)
    np.savez(path, x=np.ones((4, 2)), y=np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="is binary but has label 2"):
        load_file(path, kinds={"y": "binary"})
    with pytest.raises(ValueError, match="kind must be one of"):
        load_file(path, kinds=["ordinal"])
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(ValueError, match="single array"):
        load_file(path)
    path.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_file(path)
    with pytest.raises(ValueError, match="expected a .npz or .csv"):
        (tmp_path / "d.parquet").write_text("x")
        load_file(tmp_path / "d.parquet")
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "absent.csv")


CELLS = st.sampled_from(
    ["0", "1", "2", "-1", "0.5", "", "nan", "NA", "inf", "x", "1e400", " 3 ", '"1"']
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=8),
    ragged=st.booleans(),
)
def test_fuzz_csv_fails_only_with_value_error(tmp_path_factory, rows, ragged):
    path = tmp_path_factory.mktemp("fuzz") / "f.csv"
    lines = ["f,task:a,task:b"] + [",".join(r) for r in rows]
    if ragged:
        lines.append("1")
    path.write_text("\n".join(lines) + "\n")
    try:
        data = load_file(path)
    except ValueError as e:
        assert str(e)
        return
    assert np.isfinite(data.train.x).all()
    assert data.train.y.shape[1] == 2


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    label=st.sampled_from([0.0, 1.0, 2.5, -1.0, np.nan, np.inf]),
    x_bad=st.sampled_from([0.0, np.nan, np.inf]),
    y_len=st.integers(1, 6),
    as_text=st.booleans(),
)
def test_fuzz_npz_fails_only_with_value_error(
    tmp_path_factory, n, label, x_bad, y_len, as_text
):
    path = tmp_path_factory.mktemp("fuzz") / "f.npz"
    x = np.ones((n, 2))
    x[0, 0] = x_bad
    y = np.zeros(y_len)
    y[0] = label
    np.savez(path, x=x, y=y.astype(str) if as_text else y)
    try:
        data = load_file(path)
    except ValueError as e:
        assert str(e)
        return
    assert np.isfinite(data.train.x).all()


def test_csv_values_beyond_float32_are_refused(tmp_path):
    import pytest

    from tgjax.data.files import read_csv

    path = tmp_path / "big.csv"
    path.write_text("f1,task:a\n1e39,0\n0,1\n")
    with pytest.raises(ValueError, match="float32 range"):
        read_csv(path)


def test_npz_values_beyond_float32_are_refused(tmp_path):
    import numpy as np
    import pytest

    from tgjax.data.files import read_npz

    path = tmp_path / "big.npz"
    np.savez(path, x=np.array([[1e39], [0.0]]), a=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        read_npz(path)
    np.savez(path, x=np.zeros((2, 1)), a=np.array([1e300, 1.0]))
    with pytest.raises(ValueError, match="float32 range"):
        read_npz(path)


def _labelled_csv(tmp_path):
    rows = ["f1,f2,task:bin,task:cls,task:r"]
    for i in range(30):
        rows.append(f"{i * 0.5},{-i % 7},{i % 2},{i % 3},{i * 1.5}")
    path = tmp_path / "labelled.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_unselected_task_columns_are_never_features(tmp_path):
    path = _labelled_csv(tmp_path)
    full = load_file(path)
    assert full.task_names == ["bin", "cls", "r"]
    assert full.train.x.shape[1] == 2
    for tasks in (["bin"], ["task:bin"], ["r", "task:cls"]):
        data = load_file(path, tasks=tasks)
        assert data.train.x.shape[1] == 2, tasks
        assert data.task_names == [t.removeprefix("task:") for t in tasks]
    # The features are the non-task columns, unchanged by the task choice.
    one = load_file(path, tasks=["bin"], standardize=False)
    raw = load_file(path, standardize=False)
    np.testing.assert_array_equal(one.train.x, raw.train.x)
    data = load_file(path, tasks=["task:r"], kinds={"task:r": "regression"})
    assert [t.kind for t in data.tasks] == ["regression"]
    with pytest.raises(ValueError, match=r"no task column\(s\) \['nope'\]"):
        load_file(path, tasks=["nope"])
    with pytest.raises(ValueError, match=r"features \['task:cls'\] are task columns"):
        load_file(path, tasks=["bin"], features=["f1", "task:cls"])


@pytest.mark.parametrize(
    "fractions, message",
    [
        ((-0.1, 0.2), r"fractions=\(-0.1, 0.2\): the validation fraction -0.1 must"),
        ((0.2, 1.0), r"the test fraction 1.0 must be in \[0, 1\)"),
        ((0.0, 0.2), "the val split holds 0 example"),
        ((0.2, 0.0), "the test split holds 0 example"),
        ((0.5, 0.5), "validation \\+ test = 1 leaves no train examples"),
        ((0.2,), "must be two numbers"),
    ],
)
def test_from_arrays_refuses_bad_fractions(fractions, message):
    from tgjax.data.base import from_arrays
    from tgjax.tasks import Task

    x = np.random.default_rng(0).normal(size=(500, 3))
    y = (np.arange(500) % 2)[:, None].astype(np.float32)
    with pytest.raises(ValueError, match=message):
        from_arrays("toy", (Task("a", "binary"),), x, y, fractions=fractions)
    data = from_arrays("toy", (Task("a", "binary"),), x, y, fractions=(0.1, 0.3))
    assert (len(data.train), len(data.val), len(data.test)) == (300, 50, 150)


def test_npz_without_task_arrays_says_how_to_name_them(tmp_path):
    path = tmp_path / "only_x.npz"
    np.savez(path, x=np.ones((6, 2)))
    with pytest.raises(ValueError, match="no task arrays found") as info:
        load_file(path)
    assert "separate array [examples] named after the task" in str(info.value)
    np.savez(path, x=np.ones((6, 2)), a=np.arange(6) % 2)
    with pytest.raises(ValueError, match=r"no task array\(s\) \['b'\]; each task"):
        load_file(path, tasks=["b"])


def test_huge_feature_and_target_scales_standardise_in_float64():
    from tgjax.data.base import from_arrays, split_indices
    from tgjax.tasks import Task

    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[:, 1] *= 1e25
    r = rng.normal(size=n) * 3 + 10
    y = np.c_[np.arange(n) % 2, r * 1e20].astype(np.float32)
    tasks = (Task("a", "binary"), Task("r", "regression"))
    data = from_arrays("big", tasks, x, y)
    tr, _, te = split_indices(n, (0.2, 0.2), 0)
    # The 1e25 column keeps its spread instead of collapsing to a constant.
    col = x[tr, 1].astype(np.float64)
    np.testing.assert_allclose(
        data.train.x[:, 1], (col - col.mean()) / col.std(), rtol=1e-5, atol=1e-6
    )
    assert data.train.x[:, 1].std() == pytest.approx(1.0, rel=1e-4)
    # The 1e20 target: finite statistics, standardised labels, original units.
    t = y[tr, 1].astype(np.float64)
    assert data.target_mean[1] == pytest.approx(t.mean(), rel=1e-6)
    assert data.target_std[1] == pytest.approx(t.std(), rel=1e-6)
    assert 2e20 < data.target_std[1] < 4e20
    assert data.train.y[:, 1].std() == pytest.approx(1.0, rel=1e-4)
    back = data.test.y[:, 1] * np.float64(data.target_std[1]) + data.target_mean[1]
    np.testing.assert_allclose(back, y[te, 1], rtol=1e-5)
    # An MAE of 0.5 standard deviations is finite in the original units.
    assert np.isfinite(0.5 * float(data.target_std[1]))
    with pytest.raises(ValueError, match=r"beyond the float32 range.*column 2"):
        from_arrays("big", tasks, np.c_[x[:, :2], np.full(n, 1e39)], y)
    with pytest.raises(ValueError, match=r"beyond the float32 range.*target column"):
        from_arrays("big", tasks, x, np.c_[y[:, :1], np.full(n, 1e300)])


@pytest.mark.parametrize("value", [1e20, 1e30, -1e30])
def test_an_outlier_regression_label_is_named(tmp_path, value):
    # Finite in float32, but its squared error would overflow: the loss of
    # whichever split holds it would be infinite.
    from tgjax.data.base import split_indices

    rows = ["f1,task:a,task:r"]
    for i in range(60):
        rows.append(f"{i % 5},{i % 2},{(i % 9) * 0.5}")
    _, _, test = split_indices(60, (0.2, 0.2), 0)
    row = int(test[0])
    rows[row + 1] = f"3,1,{value:g}"
    path = tmp_path / "outlier.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"'r'.*example {row},.*overflow float32"):
        load_file(path, kinds={"r": "regression"})
    # In the train split the same value only widens the train statistics.
    train_row = int(split_indices(60, (0.2, 0.2), 0)[0][0])
    rows[row + 1] = f"3,1,{(row % 9) * 0.5}"
    rows[train_row + 1] = f"3,1,{value:g}"
    path.write_text("\n".join(rows) + "\n")
    data = load_file(path, kinds={"r": "regression"})
    assert np.isfinite(data.train.y).all() and np.isfinite(data.target_std).all()


def test_csv_feature_and_target_scaled_by_1e25_load(tmp_path):
    rows = ["f1,big,task:a,task:r"]
    for i in range(40):
        rows.append(f"{i % 5},{(i % 7) * 1e25},{i % 2},{(i % 9 + 0.5) * 1e20}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_file(path, kinds={"r": "regression"})
    assert data.train.x[:, 1].std() == pytest.approx(1.0, rel=1e-4)
    assert np.isfinite(data.train.y).all()
    assert 1e20 < data.target_std[1] < 1e21


def test_inferred_kinds_remapping_and_notes(tmp_path):
    rng = np.random.default_rng(1)
    n = 60
    pm = np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    pm[5] = np.nan
    path = tmp_path / "kinds.npz"
    np.savez(
        path,
        x=rng.normal(size=(n, 2)),
        pm=pm,
        twelve=1 + np.arange(n) % 2,
        small=np.arange(n) % 10,
        big=np.arange(n) % 60,
        r=rng.normal(size=n),
    )
    data = load_file(path)
    kinds = {t.name: (t.kind, t.num_classes) for t in data.tasks}
    assert kinds == {
        "pm": ("binary", 2),
        "twelve": ("binary", 2),
        "small": ("multiclass", 10),
        "big": ("regression", 1),
        "r": ("regression", 1),
    }
    ys = np.concatenate([data.train.y, data.val.y, data.test.y])
    # -1/+1 and 1/2 become 0/1 in sorted order; the missing label stays NaN.
    assert set(np.unique(ys[~np.isnan(ys[:, 0]), 0])) == {0.0, 1.0}
    assert np.isnan(ys[:, 0]).sum() == 1
    assert set(np.unique(ys[:, 1])) == {0.0, 1.0}
    raw = load_file(path, standardize=False)
    order = np.argsort(raw.train.x[:, 0])
    pairs = dict(zip(raw.train.x[order, 0], raw.train.y[order, 0], strict=True))
    x_all = np.load(path)["x"].astype(np.float32)
    for xi, label in zip(x_all[:, 0], pm, strict=True):
        if xi in pairs and not np.isnan(label):
            assert pairs[xi] == (label + 1) / 2
    assert data.task_notes["pm"] == "pm: binary, inferred (labels -1/1 mapped to 0/1)"
    assert data.task_notes["twelve"].endswith("(labels 1/2 mapped to 0/1)")
    assert data.task_notes["small"] == (
        "small: multiclass, inferred (10 classes, labels 0..9)"
    )
    assert data.task_notes["big"].startswith("big: regression, inferred (values 0..59")
    assert "pm: binary, inferred (labels -1/1 mapped to 0/1)" in data.description
    assert data.select_tasks(["r", "pm"]).task_notes.keys() == {"r", "pm"}

    # A declared regression kind overrides the inference and keeps raw values.
    over = load_file(path, tasks=["pm", "small"], kinds={"pm": "regression"})
    assert [t.kind for t in over.tasks] == ["regression", "multiclass"]
    back = over.train.y[:, 0] * over.target_std[0] + over.target_mean[0]
    present = back[~np.isnan(back)]
    np.testing.assert_allclose(np.unique(np.round(present, 4)), [-1.0, 1.0])
    assert over.task_notes["pm"].startswith("pm: regression, declared (values -1..1")
    over = load_file(path, tasks=["small"], kinds=["regression"])
    assert over.tasks[0].kind == "regression"
    assert over.target_mean[0] > 3.0
    # A declared binary kind maps two values too; three are refused.
    assert load_file(path, tasks=["twelve"], kinds=["binary"]).train.y.max() == 1.0
    with pytest.raises(ValueError, match=r"binary but has label 9 \(labels \[0, 1"):
        load_file(path, tasks=["small"], kinds=["binary"])
