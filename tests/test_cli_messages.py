"""Command line: what a failed or resumed run leaves, and how messages read."""

import json
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import tgjax
from tgjax import cli

TINY = ["--epochs", "1", "--finetune-epochs", "0", "--hidden", "8", "--quiet"]
BATCH = ["--batch-size", "32"]
TWO = ["--tasks", "Class1,Class2", "--groups", "2"]


def _csv(path, rows, *, task_header="task:a"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    label = np.where(x[:, 0] > 0, 1, -1)  # two values, mapped to 0/1
    lines = [f"f1,f2,{task_header}"]
    lines += [f"{a:.6f},{b:.6f},{c}" for (a, b), c in zip(x, label, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_tensorboardx_writes_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    out = tmp_path / "run"
    argv = ["train", *TWO, *TINY, "--tensorboard", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "tensorboardX" in err and "pip install '.[tensorboard]'" in err
    assert not out.exists()


def test_a_fresh_run_failing_before_its_first_checkpoint_removes_its_folder(
    tmp_path, monkeypatch
):
    import tgjax.resume

    def broken(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(tgjax.resume, "ResumableLog", broken)
    out = tmp_path / "run"
    assert cli.main(["train", *TWO, *TINY, "--out", str(out)]) == 2
    assert not out.exists()


def test_a_folder_without_checkpoint_names_overwrite(tmp_path, capsys):
    from tgjax.validate import check_run_folder

    out = tmp_path / "run"  # what a run killed before its first checkpoint leaves
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="cannot be resumed; pass --overwrite"):
        check_run_folder(str(out), overwrite=False)
    assert cli.main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and f"--out {out} --overwrite" in err
    assert cli.main(["train", "--resume", str(tmp_path / "absent")]) == 2
    assert "the folder does not exist" in capsys.readouterr().err


def test_resume_refuses_changed_data_and_works_from_another_folder(
    tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _csv(work / "moved.csv", 200)
    out = tmp_path / "run"
    assert (
        cli.main(["train", "--data", "moved.csv", *TINY, *BATCH, "--out", str(out)])
        == 0
    )
    settings = json.loads((out / "config.json").read_text())
    assert settings["data"]["flags"]["data"] == str(work / "moved.csv")
    assert settings["data"]["task_notes"] == {
        "a": "a: binary, inferred (labels -1/1 mapped to 0/1)"
    }
    fingerprint = settings["data"]["fingerprint"]
    assert fingerprint["examples"] == settings["data"]["examples"]

    monkeypatch.chdir(tmp_path)
    _csv(work / "moved.csv", 99)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "changed since the run started" in err
    assert "the train split holds 59 examples, not 120" in err
    assert "Restore the data" in err and "start a new run" in err

    # A run folder from before fingerprints resumes without the check.
    _csv(work / "moved.csv", 200)
    del settings["data"]["fingerprint"]
    (out / "config.json").write_text(json.dumps(settings))
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0


def test_same_data_passes_the_fingerprint_check_and_changed_values_do_not(tmp_path):
    data = tgjax.data.load_file(_csv(tmp_path / "d.csv", 60))
    settings = {"data": {"source": "d.csv", "fingerprint": cli.data_fingerprint(data)}}
    cli._check_same_data("r", settings, data)
    again = tgjax.data.load_file(_csv(tmp_path / "d.csv", 60))
    cli._check_same_data("r", settings, again)
    text = (tmp_path / "d.csv").read_text().replace(",-1\n", ",1\n", 1)
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(
        ValueError, match="same numbers of examples, but different values"
    ):
        cli._check_same_data("r", settings, tgjax.data.load_file(tmp_path / "d.csv"))


def test_messages_name_the_command_line_flags(tmp_path, monkeypatch, capsys):
    plain = _csv(tmp_path / "plain.csv", 30, task_header="a")
    assert cli.main(["train", "--data", str(plain), *TINY]) == 2
    assert "--task-columns A,B" in capsys.readouterr().err
    argv = ["train", "--data", str(plain), "--task-columns", "", *TINY]
    assert cli.main(argv) == 2
    assert "--task-columns '' names no column" in capsys.readouterr().err

    monkeypatch.delenv("TGJAX_DATA_DIR", raising=False)
    assert cli.main(["train", "--dataset", "celeba", *TINY]) == 2
    assert "pass --data-dir" in capsys.readouterr().err

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install '\.\[qm9\]'"):
        tgjax.data.load_dataset("qm9")


def test_binary_declared_on_continuous_labels_reads_well(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("f,task:r\n" + "".join(f"{i},{i * 0.37:.2f}\n" for i in range(30)))
    with pytest.raises(ValueError) as e:
        tgjax.data.load_file(path, kinds={"r": "binary"})
    assert "Task 'r' is binary but has labels that are not whole numbers" in str(
        e.value
    )
    assert "(labels [" in str(e.value) and "but has (labels" not in str(e.value)


def test_mesh_messages(monkeypatch):
    from tgjax.distributed import check_fits, make_mesh

    with pytest.raises(ValueError, match="needs 8 devices, but 1 is available"):
        make_mesh("data=8", devices=[object()])
    mesh = types.SimpleNamespace(shape={"data": 1, "groups": 4})
    with pytest.raises(ValueError) as e:
        check_fits(mesh, num_groups=1, batch_size=8, baseline="mtl")
    assert "--mesh groups=1" in str(e.value) and "use --groups" not in str(e.value)


def test_entropy_of_one_hot_rows_is_positive_zero():
    h = tgjax.assignment_entropy(jnp.array([[50.0, -50.0]]))
    assert not np.signbit(np.asarray(h)).any() and "-0" not in str(h)
    from tgjax.tblog import assignment_entropy

    assert str(assignment_entropy(np.array([[1.0]]))) == "0.0"


def test_unknown_flag_after_a_command_shows_its_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tgjax train") and "--no-such-flag" in err
