"""Every kind of bad input gets one clear error and leaves nothing behind."""

import json

import numpy as np
import pytest

import tgjax
from tgjax import cli
from tgjax.config import RunConfig
from tgjax.data import load_dataset
from tgjax.validate import check_run_folder, check_settings

FAST = ["--epochs", "1", "--finetune-epochs", "1", "--hidden", "8", "--quiet"]


def _run_cli(tmp_path, capsys, args):
    out = tmp_path / "run"
    rc = cli.main(["train", "--out", str(out), *FAST, *args])
    err = capsys.readouterr().err
    return rc, err, out


def _assert_refused(rc, err, out, expected):
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("tgjax: error: ")
    # One paragraph: a single line of output.
    assert err.strip().count("\n") == 0, err
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists()


SETTINGS = [
    (["--groups", "0"], ["groups must be an integer >= 1, got 0", "default, 4"]),
    (["--groups", "-3"], ["groups must be an integer >= 1, got -3"]),
    (["--tau", "0"], ["tau must be a finite number > 0, got 0.0", "default, 2.5"]),
    (["--tau", "-1"], ["tau must be a finite number > 0, got -1.0"]),
    (["--tau", "nan"], ["tau must be a finite number > 0, got nan"]),
    (["--tau", "inf"], ["tau must be a finite number > 0, got inf"]),
    (["--lr", "0"], ["learning_rate must be a finite number > 0, got 0.0"]),
    (["--lr=-1e-3"], ["learning_rate must be a finite number > 0, got -0.001"]),
    (["--assignment-lr", "-1"], ["assignment_learning_rate must be a finite"]),
    (["--epochs", "0"], ["epochs must be an integer >= 1, got 0", "default, 20"]),
    (["--batch-size", "0"], ["batch_size must be an integer >= 1, got 0"]),
    (
        ["--batch-size", "100000"],
        ["batch_size (100000) is larger than the train split (1451", "--batch-size"],
    ),
    (["--weight-decay", "-1"], ["weight_decay must be a finite number >= 0"]),
    (
        ["--tau-schedule", "cosine"],
        ["tau_schedule='cosine' needs tau_final"],
    ),
    (["--tau", "1", "--tau-schedule", "cosine", "--tau-final", "2"], ["must not"]),
    (
        ["--dataset", "yaest"],
        ["Unknown data set 'yaest' (did you mean 'yeast'?)", "--data"],
    ),
    (
        ["--tasks", "Class1,Clas2"],
        ["Unknown task name(s) 'Clas2' (did you mean 'Class2'?)", "known tasks"],
    ),
    (["--tasks", "Class1,Class1"], ["repeated: ['Class1']", "name each task once"]),
    (["--dataset", "digits", "--data", "x.csv"], ["either --dataset or --data"]),
    (["--data-dir", "/nowhere"], ["--data-dir applies to data sets read from disk"]),
]


@pytest.mark.parametrize("args,expected", SETTINGS, ids=lambda v: " ".join(v))
def test_bad_settings_are_refused_before_any_file_is_written(
    tmp_path, capsys, args, expected
):
    rc, err, out = _run_cli(tmp_path, capsys, args)
    _assert_refused(rc, err, out, expected)


CONFIG_FILES = [
    ('{"learning_rte": 0.1}', ["'learning_rte' (did you mean 'learning_rate'?)"]),
    ('{"groups": "4"}', ["groups must be an integer >= 1, got '4'"]),
    ('{"hidden": 5}', ["hidden must be a non-empty list of integers >= 1, got 5"]),
    ('{"hidden": []}', ["hidden must be a non-empty list"]),
    ('{"tau": NaN}', ["tau must be a finite number > 0, got nan"]),
    ('{"sample": 3}', ["sample must be one of ('relaxed', 'straight_through')"]),
    ("", ["is empty", "drop --config"]),
    ('{"groups": 4', ["is not valid JSON"]),
    ("[1, 2]", ["must hold a JSON object", "got a list"]),
    (b"\xff\xfe\x00garbage", ["is not a UTF-8 text file"]),
    (None, ["is a folder"]),
]


@pytest.mark.parametrize("content,expected", CONFIG_FILES)
def test_bad_config_files_are_refused(tmp_path, capsys, content, expected):
    path = tmp_path / "settings.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    rc, err, out = _run_cli(tmp_path, capsys, ["--config", str(path)])
    _assert_refused(rc, err, out, [str(path), *expected])


def test_missing_config_file(tmp_path, capsys):
    path = tmp_path / "absent.json"
    rc, err, out = _run_cli(tmp_path, capsys, ["--config", str(path)])
    _assert_refused(rc, err, out, [str(path), "does not exist", "--config"])


def _csv(rows, header="f1,f2,task:a,task:b"):
    return "\n".join([header, *rows]) + "\n"


def _good_rows(n, b=None):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        f1, f2 = rng.normal(size=2)
        bv = str(int(f2 > 0)) if b is None else b
        out.append(f"{f1:.3f},{f2:.3f},{int(f1 > 0)},{bv}")
    return out


DATA_FILES = [
    (
        "text.csv",
        _csv([*_good_rows(20), "1,foo,0,1"]),
        ["row 22, column 'f2': cannot read 'foo' as a number"],
    ),
    ("nan.csv", _csv([*_good_rows(20), "nan,1,0,1"]), ["features must be finite"]),
    ("inf.csv", _csv([*_good_rows(20), "1,-inf,0,1"]), ["features must be finite"]),
    ("short.csv", _csv([*_good_rows(20), "1,2,0"]), ["row 22: expected 4 cells"]),
    ("empty.csv", "", ["empty file", "header row"]),
    ("header.csv", _csv([]), ["no data rows after the header"]),
    (
        "nolabels.csv",
        _csv(_good_rows(20, b="")),
        ["Task 'b' has no labels at all", "drop the column"],
    ),
    (
        "oneclass.csv",
        _csv(_good_rows(20, b="1")),
        ["Task 'b' has only class 1 in the train split", "Drop the task"],
    ),
    (
        "tiny.csv",
        _csv(_good_rows(4)),
        ["holds 1 example(s)", "at least 2", "Add examples"],
    ),
    ("dupe.csv", _csv(_good_rows(20), header="f1,f1,task:a,task:b"), ["unique"]),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ["not a UTF-8 text file"]),
    ("data.parquet", "x", ["unknown format '.parquet'", ".npz or .csv"]),
    ("truncated.npz", None, ["not a readable .npz file"]),
    ("short.npz", "labels", ["must be numeric of shape (30,)"]),
    ("nanx.npz", "nanx", ["features must be finite", "x[2, 1]"]),
    ("folder.csv", "dir", ["is a folder", ".npz or .csv"]),
    ("absent.csv", "absent", ["does not exist"]),
]


@pytest.mark.parametrize("name,content,expected", DATA_FILES, ids=lambda v: str(v))
def test_bad_data_files_are_refused(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    if content is None:
        np.savez(path, x=x, a=(x[:, 0] > 0).astype(float))
        path.write_bytes(path.read_bytes()[:-40])
    elif content == "labels":
        np.savez(path, x=x, a=np.zeros(29))
    elif content == "nanx":
        x[2, 1] = np.nan
        np.savez(path, x=x, a=(x[:, 0] > 0).astype(float))
    elif content == "dir":
        path.mkdir()
    elif content == "absent":
        pass
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    rc, err, out = _run_cli(tmp_path, capsys, ["--data", str(path)])
    _assert_refused(rc, err, out, expected)


def test_repeated_task_columns_are_refused(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text(_csv(_good_rows(20)))
    rc, err, out = _run_cli(
        tmp_path, capsys, ["--data", str(path), "--task-columns", "task:a,task:a"]
    )
    _assert_refused(rc, err, out, ["task names must be unique"])


def _xy(n=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2]], 1).astype(np.float32)
    tasks = [
        tgjax.Task("a", "binary"),
        tgjax.Task("b", "binary"),
        tgjax.Task("r", "regression"),
    ]
    return x, y, tasks


def _label(i, j, v):
    def f(x, y, tasks, kw):
        y = y.copy()
        y[i, j] = v
        return x, y, tasks, kw

    return f


def _feature(v):
    def f(x, y, tasks, kw):
        x = x.copy()
        x[3, 1] = v
        return x, y, tasks, kw

    return f


ARRAYS = [
    ("nan feature", _feature(np.nan), ["x hold 1 NaN or infinite", "x[3, 1] = nan"]),
    ("inf feature", _feature(np.inf), ["x[3, 1] = inf", "impute or drop"]),
    (
        "binary label 2",
        _label(5, 0, 2.0),
        ["Task 'a' is binary with labels 0 or 1", "[2.0]", "example 5"],
    ),
    ("binary label 0.5", _label(5, 1, 0.5), ["Task 'b' is binary", "[0.5]"]),
    ("negative label", _label(7, 0, -1.0), ["[-1.0]", "mark missing labels as NaN"]),
    ("infinite label", _label(4, 0, np.inf), ["Task 'a' is binary", "[inf]"]),
    ("regression inf", _label(4, 2, -np.inf), ["Task 'r' has 1 infinite label"]),
    (
        "multiclass 3 of 3",
        lambda x, y, t, kw: (
            x,
            np.c_[y[:, :2], np.arange(50) % 4].astype(np.float32),
            [*t[:2], tgjax.Task("m", "multiclass", num_classes=3)],
            kw,
        ),
        ["Task 'm' is multiclass with labels 0..2", "[3.0]"],
    ),
    (
        "all missing",
        lambda x, y, t, kw: (x, np.c_[y[:, :2], np.full(50, np.nan)], t, kw),
        ["Task 'r' has no labels in the train split", "Drop the task"],
    ),
    (
        "one class",
        lambda x, y, t, kw: (x, np.c_[np.ones(50), y[:, 1:]], t, kw),
        ["Task 'a' has only class 1 in the train split", "other class"],
    ),
    ("fewer labels", lambda x, y, t, kw: (x, y[:-1], t, kw), ["x has 50 examples"]),
    ("more columns", lambda x, y, t, kw: (x, y, t[:2], kw), ["3 label column(s)"]),
    (
        "empty split",
        lambda x, y, t, kw: (x, y, t, {"fractions": (0.0, 0.2)}),
        ["the val split holds 0 example(s)", "fractions"],
    ),
    (
        "single-sample split",
        lambda x, y, t, kw: (x, y, t, {"fractions": (0.02, 0.2)}),
        ["the val split holds 1 example(s)", "at least 2"],
    ),
    (
        "duplicate task names",
        lambda x, y, t, kw: (x, y, [t[0], t[0], t[2]], kw),
        ["repeated: ['a']", "own name"],
    ),
    (
        "text features",
        lambda x, y, t, kw: (x.astype(str), y, t, kw),
        ["must be numbers", "np.float32"],
    ),
    ("1-d features", lambda x, y, t, kw: (x[:, 0], y, t, kw), ["x[:, None]"]),
    (
        "batch too large",
        lambda x, y, t, kw: (x, y, t, {"batch": 31}),
        ["batch_size (31) is larger than the train split (30"],
    ),
]


@pytest.mark.parametrize("name,change,expected", ARRAYS, ids=[c[0] for c in ARRAYS])
def test_bad_arrays_are_refused_by_fit_arrays(name, change, expected):
    x, y, tasks = _xy()
    x, y, tasks, kw = change(x, y, tasks, {})
    config = RunConfig(batch_size=kw.pop("batch", 8), epochs=1, finetune_epochs=0)
    with pytest.raises(ValueError) as info:
        tgjax.fit_arrays(x, y, tasks, config, **kw)
    message = str(info.value)
    for part in expected:
        assert part in message, (part, message)


def test_fit_names_the_right_types():
    data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
    with pytest.raises(TypeError, match="fit_arrays"):
        tgjax.fit(np.zeros((4, 2)), RunConfig())
    with pytest.raises(TypeError, match="RunConfig.from_dict"):
        tgjax.fit(data, {"groups": 2})


def test_more_groups_than_tasks_is_allowed_with_a_note():
    data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
    notes = check_settings(RunConfig(groups=5), data)
    assert len(notes) == 1
    assert "groups (K = 5) exceeds the 2 tasks" in notes[0]
    assert "K = 2 is the largest useful value" in notes[0]
    assert check_settings(RunConfig(groups=2), data) == []
    assert check_settings(RunConfig(groups=5, baseline="stl"), data) == []


def test_run_folder_with_other_files_is_never_deleted(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (out / "config.json").write_text("{}")
    rc = cli.main(["train", "--out", str(out), "--overwrite", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "thesis.tex" in err and "never deletes" in err
    assert (out / "thesis.tex").read_text() == "precious"
    assert (out / "config.json").read_text() == "{}"


def test_run_folder_checks(tmp_path):
    assert check_run_folder(str(tmp_path / "new"), overwrite=False) is False
    (tmp_path / "empty").mkdir()
    assert check_run_folder(str(tmp_path / "empty"), overwrite=False) is False
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="pass --overwrite"):
        check_run_folder(str(run), overwrite=False)
    assert check_run_folder(str(run), overwrite=True) is True
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_run_folder(str(tmp_path / "file"), overwrite=True)


def test_out_below_a_file_cannot_be_created(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    rc = cli.main(["train", "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "Cannot create the run folder" in err and "--out" in err


def test_internal_errors_are_short_unless_debug(tmp_path, capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("unexpected state 42")

    monkeypatch.setattr(cli, "_load_data", broken)
    rc = cli.main(["train", "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert "internal error: RuntimeError: unexpected state 42" in err
    assert "run with --debug for the traceback" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="unexpected state 42"):
        cli.main(["train", "--out", str(tmp_path / "run"), "--debug", *FAST])


def test_debug_shows_the_original_exception(tmp_path):
    with pytest.raises(ValueError, match="groups must be an integer"):
        cli.main(["train", "--groups", "0", "--debug", *FAST])
    assert not (tmp_path / "run").exists()


def test_numerical_fault_keeps_config_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--tasks",
            "Class1,Class2,Class3",
            "--groups",
            "2",
            "--lr",
            "1e30",
            "--log-every",
            "1",
            "--out",
            str(out),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "Training stopped at step" in err
    assert "Lower the learning rate" in err
    assert str(out / "metrics.jsonl") in err
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["learning_rate"] == 1e30
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    step = int(err.split("Training stopped at step ")[1].split(":")[0])
    logged = [r["step"] for r in lines if "step" in r]
    # Every step before the fault is on disk, none from the failing one on.
    assert logged == list(range(step))
    assert lines[-1]["event"] == "error"
    assert f"step {step}" in lines[-1]["message"]
    assert not (out / "results.json").exists()


def test_unreadable_data_file_names_the_permission_problem(
    tmp_path, capsys, monkeypatch
):
    # Tests run as root, which reads any file; simulate the refusal instead.
    from tgjax.data import files

    path = tmp_path / "locked.csv"
    path.write_text(_csv(_good_rows(20)))

    def refuse(p, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(files, "read_csv", refuse)
    rc, err, out = _run_cli(tmp_path, capsys, ["--data", str(path)])
    _assert_refused(rc, err, out, ["locked.csv", "Permission denied", "permissions"])
