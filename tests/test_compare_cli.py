"""The ``tgjax compare`` command line: the output folder, the partition
limit and the wording of its messages (no training needed)."""

import dataclasses
import json
import os

import pytest

import tgjax.compare
from tgjax import cli

ARGS = ["compare", "--tasks", "Class1,Class2", "--groups", "2", "--epochs", "1"]


def _fake_compare(calls):
    def compare(data, config, log=None):
        calls.append(config)
        return {"settings": {"new": True}, "records": [], "oracle": None}

    return compare


def _fake_write(out_dir, result):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result["settings"], f)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("new\n")


@pytest.fixture
def fake_run(monkeypatch):
    calls = []
    monkeypatch.setattr(tgjax.compare, "compare", _fake_compare(calls))
    monkeypatch.setattr(tgjax.compare, "write_outputs", _fake_write)
    return calls


def _old_outputs(folder):
    folder.mkdir()
    (folder / "results.json").write_text('{"old": true}')
    (folder / "oracle.json").write_text("{}")
    (folder / "results.md").write_text("old\n")


def test_foreign_files_are_refused_even_with_overwrite(tmp_path, fake_run, capsys):
    out = tmp_path / "cmp"
    _old_outputs(out)
    (out / "thesis.tex").write_text("\\chapter{}")
    assert cli.main([*ARGS, "--out", str(out), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "thesis.tex" in err and "not even with --overwrite" in err
    assert (out / "thesis.tex").read_text() == "\\chapter{}"
    assert (out / "results.json").read_text() == '{"old": true}'
    assert not fake_run  # refused before any training


def test_out_that_is_a_file_is_refused(tmp_path, fake_run, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep")
    assert cli.main([*ARGS, "--out", str(out), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "keep" and not fake_run


def test_existing_outputs_need_overwrite(tmp_path, fake_run, capsys):
    out = tmp_path / "cmp"
    _old_outputs(out)
    assert cli.main([*ARGS, "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "old\n"


def test_overwrite_replaces_outputs_only_after_success(tmp_path, fake_run):
    out = tmp_path / "cmp"
    _old_outputs(out)
    (out / "figures").mkdir()  # written by 'tgjax report' from the old results
    (out / "report.md").write_text("old report")
    assert cli.main([*ARGS, "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["results.json", "results.md"]
    assert json.loads((out / "results.json").read_text())["new"] is True
    assert [n for n in os.listdir(tmp_path) if n != "cmp"] == []  # no staging left


def test_a_failed_run_keeps_the_old_outputs(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    _old_outputs(out)

    def crash(data, config, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(tgjax.compare, "compare", crash)
    assert cli.main([*ARGS, "--out", str(out), "--overwrite", "--quiet"]) != 0
    assert sorted(os.listdir(out)) == ["oracle.json", "results.json", "results.md"]
    assert (out / "results.json").read_text() == '{"old": true}'


def test_a_file_added_during_the_run_keeps_both(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    _old_outputs(out)

    def compare(data, config, log=None):
        (out / "notes.txt").write_text("mine")
        return {"settings": {"new": True}, "records": [], "oracle": None}

    monkeypatch.setattr(tgjax.compare, "compare", compare)
    monkeypatch.setattr(tgjax.compare, "write_outputs", _fake_write)
    assert cli.main([*ARGS, "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "old\n"
    (staged,) = [p for p in tmp_path.iterdir() if p.name != "cmp"]
    assert (staged / "results.md").read_text() == "new\n"


def test_new_folder_is_created(tmp_path, fake_run):
    out = tmp_path / "a" / "b"
    assert cli.main([*ARGS, "--out", str(out), "--quiet"]) == 0
    assert sorted(os.listdir(out)) == ["results.json", "results.md"]


# The oracle's size is counted before any training.


def test_all_fourteen_yeast_tasks_refuse_the_oracle_up_front(
    tmp_path, fake_run, capsys
):
    args = ["compare", "--groups", "4", "--epochs", "1", "--out", str(tmp_path / "c")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "11,188,907 partitions" in err and "14 tasks" in err
    for fix in ("--tasks", "--methods", "--max-partitions"):
        assert fix in err
    assert not fake_run and not (tmp_path / "c").exists()


def test_max_partitions_sets_the_limit(tmp_path, fake_run, capsys):
    args = [*ARGS, "--tasks", "Class1,Class2,Class3", "--out", str(tmp_path / "c")]
    assert cli.main([*args, "--max-partitions", "3"]) == 2
    assert "4 partitions" in capsys.readouterr().err and not fake_run
    assert cli.main([*args, "--max-partitions", "4"]) == 0
    assert len(fake_run) == 1 and fake_run[0].max_partitions == 4


def test_oracle_progress_lines(capsys):
    from tgjax.compare import CompareConfig, compare
    from tgjax.config import RunConfig
    from tgjax.data import load_dataset

    data = load_dataset("yeast").select_tasks(["Class1", "Class2", "Class3"])
    cc = CompareConfig(
        groups=2,
        epochs=1,
        seeds=(0,),
        methods=("exhaustive",),
        run=RunConfig(hidden=(8,)),
        chunk_size=2,
    )
    lines = []
    compare(data, cc, log=lines.append)
    assert lines[0].startswith("oracle (exhaustive): 4 partitions of 3 tasks")
    assert any("4/4 partitions trained" in line for line in lines)
    with pytest.raises(ValueError, match="max_partitions"):
        compare(data, dataclasses.replace(cc, max_partitions=3))


# Messages name the command-line flags.


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--groups", "0"], "--groups"),
        (["--top", "0"], "--top"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--settle-max-epochs", "0"], "--settle-max-epochs"),
        (["--methods", "mtl,foo"], "--methods"),
        (["--settle-threshold", "1.5"], "--settle-threshold"),
        (["--lr", "-1"], "--lr"),
        (["--assignment-lr", "-1"], "--assignment-lr"),
        (["--tau", "0"], "--tau"),
        (["--hidden", "0"], "--hidden"),
        (["--batch-size", "100000"], "--batch-size"),
        (["--lookahead-lr", "-1"], "--lookahead-lr"),
        (["--subset", "10"], "--subset"),
        (["--dataset", "nope"], "--dataset"),
    ],
)
def test_messages_name_the_flag(tmp_path, fake_run, capsys, extra, flag):
    argv = [*ARGS, *extra, "--out", str(tmp_path / "c"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {flag} " in err or f"error: {flag}:" in err, err
    assert not fake_run
