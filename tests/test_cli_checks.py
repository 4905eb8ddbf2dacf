"""Command-line checks: fine-tuning selection, conflicting flags, run folders."""

import dataclasses
import json
import types

import numpy as np
import pytest

import tgjax
from tgjax import cli

SMALL = ["--epochs", "2", "--finetune-epochs", "1", "--hidden", "16", "--quiet"]
FIVE = ["--tasks", "Class1,Class2,Class3,Class4,Class5"]


def _tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype("float32")
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], 1).astype("float32")
    tasks = [tgjax.Task("a", "binary"), tgjax.Task("b", "binary")]
    return x, y, tasks


def test_fit_records_which_finetuning_epoch_it_kept():
    x, y, tasks = _tiny_data()
    cfg = tgjax.RunConfig(
        groups=2, epochs=1, finetune_epochs=6, batch_size=32, hidden=(8,)
    )
    res = tgjax.fit_arrays(x, y, tasks, cfg)
    # One search epoch leaves the network far from trained: fine-tuning helps.
    assert 0 <= res.finetune_selected_epoch < 6
    assert res.finetune_improved
    assert res.finetune_selected_val_loss == res.val["total_loss"]
    assert res.finetune_selected_val_loss < res.pruned_val_loss

    none = tgjax.fit_arrays(x, y, tasks, dataclasses.replace(cfg, finetune_epochs=0))
    assert none.finetune_selected_epoch == -1 and not none.finetune_improved
    assert none.finetune_selected_val_loss == none.pruned_val_loss
    assert none.val["total_loss"] == none.pruned_val_loss


def test_results_and_summary_say_when_finetuning_did_not_help(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--epochs", "1", "--finetune-epochs", "0", "--hidden", "16", "--quiet"]
    rc = cli.main(["train", *FIVE, "--groups", "2", "--out", str(out), *args])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["finetune_epochs"] == 0
    assert results["finetune_selected_epoch"] == -1
    assert results["finetune_selected_val_total_loss"] == pytest.approx(
        results["val"]["total_loss"], abs=1e-5
    )
    assert results["pruned_val_total_loss"] == pytest.approx(
        results["val"]["total_loss"], abs=1e-5
    )
    # With no fine-tuning epochs asked for there is nothing to warn about.
    assert "did not improve" not in capsys.readouterr().out


def test_summary_notes_that_finetuning_was_discarded(capsys):
    test = {"total_loss": 1.0, "total_error_percent": 10.0}
    result = types.SimpleNamespace(
        config=tgjax.RunConfig(finetune_epochs=15),
        finetune_selected_epoch=-1,
        finetune_improved=False,
        pruned_val_loss=2.5,
        groups=[["a", "c"], ["b"]],
        pruned=types.SimpleNamespace(kept=np.array([1, 3])),
    )
    cli._print_summary(result, {"method": "dmtg", "test": test}, "RUN")
    out = capsys.readouterr().out
    assert "none of the 15 fine-tuning epochs improved the validation loss" in out
    assert "reporting the pruned network before fine-tuning" in out
    # Groups are labelled by their index in groups.json's assignment.
    assert "  1: a, c\n  3: b\n" in out

    result.finetune_selected_epoch, result.finetune_improved = 3, True
    cli._print_summary(result, {"method": "dmtg", "test": test}, "RUN")
    assert "fine-tuning" not in capsys.readouterr().out


def test_celeba_branch_on_tabular_data_is_refused_before_the_run_folder(
    tmp_path, capsys
):
    for flags in (["--branch", "celeba"], ["--preset", "celeba9-parity"]):
        out = tmp_path / "run"
        rc = cli.main(["train", *FIVE, "--out", str(out), *SMALL, *flags])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert "[examples, height, width, 3]" in err
        assert "shape [" in err and "--branch mlp" in err
        assert not out.exists()


def test_celeba_branch_check_accepts_images_only():
    from tgjax.validate import check_branch_inputs

    check_branch_inputs("celeba", (10, 64, 64, 3))
    check_branch_inputs("mlp", (10, 103))
    for shape in ((10, 103), (10, 8, 8), (10, 8, 8, 1), (10, 4, 4, 3)):
        with pytest.raises(ValueError, match=r"\[10, "):
            check_branch_inputs("celeba", shape)


def _failing_fit(exc, save_first=False):
    def fit(data, config, *, callback=None, checkpoints=None, resume=False):
        if save_first:
            checkpoints.save(5, {"w": np.zeros(2, np.float32)}, {"step": 5})
        raise exc

    return fit


@pytest.mark.parametrize("premade", [False, True])
def test_a_fresh_run_that_fails_before_a_checkpoint_leaves_no_folder(
    tmp_path, capsys, monkeypatch, premade
):
    out = tmp_path / "run"
    if premade:
        out.mkdir()
    monkeypatch.setattr(tgjax, "fit", _failing_fit(RuntimeError("boom")))
    rc = cli.main(["train", *FIVE, "--out", str(out), *SMALL])
    assert rc == 1 and "boom" in capsys.readouterr().err
    # A folder made beforehand stays, emptied of what the run wrote.
    assert out.exists() == premade
    if premade:
        assert list(out.iterdir()) == []
    # So the same command is not refused the second time.
    monkeypatch.undo()
    assert cli.main(["train", *FIVE, "--out", str(out), *SMALL]) == 0


def test_a_failed_run_with_checkpoints_is_kept_for_resume(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setattr(tgjax, "fit", _failing_fit(RuntimeError("boom"), True))
    assert cli.main(["train", *FIVE, "--out", str(out), *SMALL]) == 1
    err = capsys.readouterr().err
    assert f"tgjax train --resume {out}" in err
    assert (out / "config.json").exists() and (out / "checkpoints").is_dir()


@pytest.mark.parametrize("save_first", [False, True])
def test_interrupt_says_whether_the_run_can_be_resumed(
    tmp_path, capsys, monkeypatch, save_first
):
    out = tmp_path / "run"
    monkeypatch.setattr(tgjax, "fit", _failing_fit(KeyboardInterrupt(), save_first))
    assert cli.main(["train", *FIVE, "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err
    assert str(out) in err
    assert err.count("interrupted") == 1
    if save_first:
        assert f"'tgjax train --resume {out}' continues it" in err
        assert "up to step 5" in err and (out / "config.json").exists()
    else:
        assert "before the first checkpoint" in err and not out.exists()


def test_overwrite_accepts_a_run_folder_with_reports_and_logs(tmp_path):
    from tgjax.validate import check_run_folder

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "results.json", "report.md", "report.html"):
        (out / name).write_text("{}")
    for name in ("figures", "tensorboard", "checkpoints", "checkpoint"):
        (out / name).mkdir()
        (out / name / "f").write_text("x")
    assert check_run_folder(str(out), overwrite=True) is True
    with pytest.raises(ValueError, match="--overwrite"):
        check_run_folder(str(out), overwrite=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"no tgjax run writes \(notes.txt\)"):
        check_run_folder(str(out), overwrite=True)


def test_numerical_fault_messages_name_the_resume_flag(tmp_path, capsys):
    from tgjax.validate import fault_message

    metrics = {"loss_matrix": np.array([[[np.nan, 1.0], [1.0, 1.0]]])}
    msg = fault_message(metrics, 0, 7, BINARY_TASKS)
    assert "Training stopped at step 7" in msg
    assert "'tgjax train --resume RUN_DIR'" in msg

    out = tmp_path / "run"
    rc = cli.main(["train", *FIVE, "--lr", "1e30", "--out", str(out), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and "Training stopped at step" in err
    # The fault comes before the first checkpoint: nothing to resume from.
    assert "RUN_DIR" not in err and "--resume" not in err
    assert f"No checkpoint was written yet; rerun with --out {out} --overwrite" in err
    assert (out / "config.json").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "error" and "Training stopped at step" in last["message"]
    assert "RUN_DIR" not in last["message"] and "resume" not in last["message"]


BINARY_TASKS = [tgjax.Task("a", "binary"), tgjax.Task("b", "binary")]


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--baseline", "mtl", "--groups", "3"], "--baseline mtl fixes K to 1"),
        (["--baseline", "stl", "--groups", "3"], "so --groups (3) would be ignored"),
        (["--baseline", "stl", "--with-baselines"], "Drop one of the two flags"),
        (["--tau-final", "0.5"], "--tau-final (0.5) only applies to a decaying"),
    ],
)
def test_conflicting_flags_are_refused(tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    rc = cli.main(["train", *FIVE, "--out", str(out), *SMALL, *flags])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err
    assert not out.exists()


def test_conflict_from_a_config_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"groups": 3}))
    rc = cli.main(
        [
            "train",
            *FIVE,
            "--config",
            str(path),
            "--baseline",
            "mtl",
            "--out",
            str(tmp_path / "run"),
            *SMALL,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"groups in {path} (3) would be ignored" in err


def test_effective_groups_and_late_halving_note(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--baseline", "stl", "--lr-halving-epochs", "1,5"]
    assert cli.main(["train", *FIVE, "--out", str(out), *SMALL, *flags]) == 0
    err = capsys.readouterr().err
    assert "lr_halving_epochs 5 (--lr-halving-epochs) at or beyond the 2" in err
    config = json.loads((out / "config.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert config["effective_groups"] == 5 and results["effective_groups"] == 5
    assert len(results["groups"]) == 5


def test_a_runs_config_json_can_be_passed_back_to_config(tmp_path, capsys):
    first = tmp_path / "first"
    flags = ["--groups", "3", "--seed", "4", "--lr", "0.002"]
    assert cli.main(["train", *FIVE, "--out", str(first), *SMALL, *flags]) == 0
    again = tmp_path / "again"
    rc = cli.main(
        [
            "train",
            *FIVE,
            "--config",
            str(first / "config.json"),
            "--seed",
            "5",
            "--out",
            str(again),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    old = json.loads((first / "config.json").read_text())["run"]
    new = json.loads((again / "config.json").read_text())["run"]
    assert new["groups"] == 3 and new["learning_rate"] == 0.002
    assert new["epochs"] == 2 and new["hidden"] == [16]
    assert new["seed"] == 5  # flags override the file
    assert {k: v for k, v in new.items() if k != "seed"} == {
        k: v for k, v in old.items() if k != "seed"
    }
    cfg = tgjax.RunConfig.from_json(first / "config.json")
    assert cfg.groups == 3 and cfg.seed == 4


def _counts_csv(tmp_path):
    """A CSV whose task 'n' holds small integer counts (inferred multiclass)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    lines = ["f1,f2,f3,task:a,task:n"]
    for r in x:
        n = int(np.clip(round(2 + r[1]), 0, 4))
        lines.append(",".join(f"{v:.4f}" for v in r) + f",{int(r[0] > 0)},{n}")
    path = tmp_path / "counts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_task_kinds_flag_sets_the_kind_of_a_file_task(tmp_path, capsys):
    path = _counts_csv(tmp_path)
    base = ["train", "--data", str(path), "--groups", "2", "--batch-size", "32"]
    small = ["--epochs", "1", "--finetune-epochs", "0", "--hidden", "8"]
    out = tmp_path / "inferred"
    assert cli.main([*base, *small, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "tasks (2) of counts:" in err
    assert "  a: binary" in err and "  n: multiclass, inferred (5 classes" in err

    out = tmp_path / "forced"
    flags = ["--task-kinds", "n=regression", "--quiet"]
    assert cli.main([*base, *small, *flags, "--out", str(out)]) == 0
    assert "tasks (2)" not in capsys.readouterr().err  # --quiet
    config = json.loads((out / "config.json").read_text())
    kinds = {t["name"]: t["kind"] for t in config["data"]["tasks"]}
    assert kinds == {"a": "binary", "n": "regression"}
    assert config["data"]["flags"]["task_kinds"] == "n=regression"
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["tasks"]["n"]["metric"] == "mae"


@pytest.mark.parametrize(
    "value,expected",
    [
        ("n=continuous", "'n=continuous' is not NAME=KIND"),
        ("n", "'n' is not NAME=KIND"),
        ("zz=binary", "--task-kinds names unknown task(s) ['zz']"),
        (",", "names no task"),
    ],
)
def test_bad_task_kinds_are_refused(tmp_path, capsys, value, expected):
    path = _counts_csv(tmp_path)
    out = tmp_path / "run"
    rc = cli.main(
        ["train", "--data", str(path), "--task-kinds", value, "--out", str(out), *SMALL]
    )
    err = capsys.readouterr().err
    assert rc == 2 and expected in err
    assert not out.exists()


def test_task_kinds_needs_a_data_file(tmp_path, capsys):
    rc = cli.main(["train", "--task-kinds", "Class1=binary", *SMALL])
    assert rc == 2 and "Drop --task-kinds or pass --data" in capsys.readouterr().err


def test_tasks_flag_ignores_empty_items_and_refuses_an_empty_list(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--tasks", "Class1, Class2,", "--groups", "2", "--out", str(out)]
    assert cli.main(["train", *flags, *SMALL]) == 0
    groups = json.loads((out / "groups.json").read_text())
    assert groups["tasks"] == ["Class1", "Class2"]
    for value in ("", " , "):
        rc = cli.main(["train", "--tasks", value, "--out", str(tmp_path / "e"), *SMALL])
        err = capsys.readouterr().err
        assert rc == 2 and "names no task" in err and "--tasks Class1,Class2" in err
        assert not (tmp_path / "e").exists()


def test_printed_group_labels_match_the_assignment(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--groups", "5", "--out", str(out)]
    assert cli.main(["train", *FIVE, *flags, *SMALL]) == 0
    printed = capsys.readouterr().out
    groups = json.loads((out / "groups.json").read_text())
    for name, k in zip(groups["tasks"], groups["assignment"], strict=True):
        line = next(s for s in printed.splitlines() if s.startswith(f"  {k}: "))
        assert name in line.split(": ", 1)[1].split(", ")


def test_last_logged_probabilities_are_the_final_ones(tmp_path):
    out = tmp_path / "run"
    flags = ["--groups", "3", "--log-every", "1", "--out", str(out)]
    assert cli.main(["train", *FIVE, *flags, *SMALL]) == 0
    groups = json.loads((out / "groups.json").read_text())
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "step" in r]
    last, before = (np.array(r["probabilities"]) for r in logged[-1:-3:-1])
    np.testing.assert_allclose(last, groups["probabilities"], atol=2e-6)
    # The step before differs: S moves every step.
    assert np.abs(before - np.array(groups["probabilities"])).max() > 1e-5


def test_wall_seconds_of_the_run_and_each_baseline(tmp_path):
    out = tmp_path / "run"
    flags = ["--groups", "2", "--with-baselines", "--out", str(out)]
    assert cli.main(["train", *FIVE, *flags, *SMALL]) == 0
    results = json.loads((out / "results.json").read_text())
    own = results["wall_seconds"]
    base = [results["baselines"][k]["wall_seconds"] for k in ("mtl", "stl")]
    assert own > 0 and all(b > 0 for b in base)
    assert results["total_wall_seconds"] >= own + sum(base) - 0.05


def test_a_library_error_is_reported_as_internal_not_as_bad_input(monkeypatch, capsys):
    # A ValueError raised inside a library (here the JSON decoder) is a defect
    # of tgjax, not the user's input: exit 1 and the internal-error text.
    def broken(args):
        return json.loads("{")

    monkeypatch.setattr(cli, "cmd_datasets", broken)
    assert cli.main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert "internal error: JSONDecodeError" in err and "--debug" in err

    # The same type raised by tgjax's own checks is bad input: exit 2.
    def refuses(args):
        from tgjax.validate import check_labels

        return check_labels(np.zeros((2, 1)), [], where="y")

    monkeypatch.setattr(cli, "cmd_datasets", refuses)
    rc = cli.main(["datasets"])
    err = capsys.readouterr().err
    assert (rc, err.startswith("tgjax: error:")) == (2, True), err
