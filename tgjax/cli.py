"""The ``tgjax`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import shutil
import sys
import time

from tgjax import compare_cli

DESCRIPTION = """\
tgjax learns which tasks of a multi-task problem should share a network.
It trains K branches with all N task heads on each, learns an N x K matrix of
assignment logits with the Gumbel-softmax relaxation in one run, reads the
groups off it, prunes unused heads and branches, fine-tunes and evaluates.
"""


def int_list(text: str) -> tuple[int, ...]:
    """Parses a flag value such as ``64,64`` into integers."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default=None,
        help="built-in data set (default: yeast); see 'tgjax datasets'",
    )
    data.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="your own data: .npz with 'x' and one array per task, or a CSV "
        "with feature and task columns (see --task-columns)",
    )
    data.add_argument(
        "--task-columns",
        default=None,
        metavar="A,B,...",
        help="CSV columns that are tasks (default: columns named task:*)",
    )
    data.add_argument(
        "--task-kinds",
        default=None,
        metavar="A=KIND,...",
        help="with --data: kind of named tasks (binary, multiclass or "
        "regression); the others are inferred from their labels",
    )
    data.add_argument(
        "--tasks",
        default=None,
        metavar="A,B,...",
        help="use only these tasks, in this order",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder of on-disk data sets (default: $TGJAX_DATA_DIR)",
    )
    mode = data.add_mutually_exclusive_group()
    mode.add_argument(
        "--stream",
        dest="stream",
        action="store_const",
        const=True,
        default=None,
        help="read the data in batches through the grain pipeline instead of "
        "keeping it on the devices (the default for --dataset celeba)",
    )
    mode.add_argument(
        "--in-memory",
        "--no-stream",
        dest="stream",
        action="store_const",
        const=False,
        help="keep the whole data set in memory, also for --dataset celeba",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="with streaming: processes that read and decode batches (default "
        "0: a thread of the training process); the batches do not depend on it",
    )

    run = p.add_argument_group("search and training (defaults in RunConfig)")
    run.add_argument(
        "--config",
        default=None,
        metavar="JSON",
        help="settings file: a JSON object of RunConfig settings, or a run "
        'folder\'s config.json (its "run" block); flags override it',
    )
    run.add_argument(
        "--preset",
        choices=("celeba9-parity",),
        default=None,
        help="start from the paper's reference settings (flags still override)",
    )
    run.add_argument("--groups", type=int, default=None, help="K, candidate groups (4)")
    run.add_argument("--epochs", type=int, default=None, help="search epochs (20)")
    run.add_argument(
        "--finetune-epochs", type=int, default=None, help="fine-tuning epochs (15)"
    )
    run.add_argument("--batch-size", type=int, default=None, help="batch size (128)")
    run.add_argument("--lr", type=float, default=None, help="learning rate (8e-4)")
    run.add_argument(
        "--assignment-lr", type=float, default=None, help="learning rate of S (0.03)"
    )
    run.add_argument("--weight-decay", type=float, default=None)
    run.add_argument(
        "--lr-halving-epochs",
        type=int_list,
        default=None,
        metavar="E1,E2",
        help="halve the learning rates at these epochs",
    )
    run.add_argument("--tau", type=float, default=None, help="temperature (2.5)")
    run.add_argument(
        "--tau-schedule", choices=("constant", "exponential", "cosine"), default=None
    )
    run.add_argument("--tau-final", type=float, default=None, help="tau at the end")
    run.add_argument("--sample", choices=("relaxed", "straight_through"), default=None)
    run.add_argument(
        "--sample-scope", choices=("batch", "example", "device"), default=None
    )
    run.add_argument("--init", choices=("tied", "independent"), default=None)
    run.add_argument("--entropy-weight", type=float, default=None)
    run.add_argument("--branch", choices=("mlp", "celeba"), default=None)
    run.add_argument(
        "--hidden", type=int_list, default=None, metavar="W1,W2", help="MLP widths"
    )
    run.add_argument(
        "--baseline",
        choices=("mtl", "stl"),
        default=None,
        help="run a baseline instead of the search: mtl (K=1) or stl (K=N, S=I)",
    )
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--log-every", type=int, default=None, help="steps per log line")

    scale = p.add_argument_group("devices, checkpoints and resuming")
    scale.add_argument(
        "--mesh",
        default=None,
        metavar="data=D,groups=G",
        help="device mesh of the search: batch split over D devices, the K "
        "branches over G (default: all devices on data)",
    )
    scale.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="search steps between checkpoints (default 0: every epoch's end)",
    )
    scale.add_argument(
        "--keep-checkpoints", type=int, default=None, help="newest checkpoints kept (3)"
    )
    scale.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its newest readable checkpoint",
    )
    scale.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process run: address of process 0's coordinator",
    )
    scale.add_argument("--num-processes", type=int, default=None)
    scale.add_argument("--process-id", type=int, default=None)
    scale.add_argument(
        "--distributed",
        action="store_true",
        help="multi-process run configured by the environment (TPU pod, SLURM, "
        "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--out", default=None, help="run folder (default: runs/<data>-<method>-<time>)"
    )
    out.add_argument(
        "--overwrite", action="store_true", help="replace an existing run folder"
    )
    out.add_argument(
        "--with-baselines",
        action="store_true",
        help="also run the MTL and STL baselines and report them side by side",
    )
    out.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files to <run folder>/tensorboard "
        "(needs tgjax[tensorboard])",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--debug", action="store_true", help="show tracebacks")


_FLAG_TO_SETTING = {
    "groups": "groups",
    "epochs": "epochs",
    "finetune_epochs": "finetune_epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "assignment_lr": "assignment_learning_rate",
    "weight_decay": "weight_decay",
    "lr_halving_epochs": "lr_halving_epochs",
    "tau": "tau",
    "tau_schedule": "tau_schedule",
    "tau_final": "tau_final",
    "sample": "sample",
    "sample_scope": "sample_scope",
    "init": "init",
    "entropy_weight": "entropy_weight",
    "branch": "branch",
    "hidden": "hidden",
    "baseline": "baseline",
    "seed": "seed",
    "log_every": "log_every",
    "mesh": "mesh",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "stream": "stream",
    "workers": "workers",
}
# Data sets that stream unless --in-memory is given.
STREAM_BY_DEFAULT = ("celeba",)
_DATA_FLAGS = ("dataset", "data", "task_columns", "task_kinds", "tasks", "data_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgjax",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="search the groups, prune, fine-tune and evaluate (default: yeast)",
        description="Run the whole job on a built-in data set or your own file "
        "and write a run folder: config.json, metrics.jsonl, groups.json, "
        "results.json, assignment.png and a checkpoint.",
    )
    _add_run_flags(train)
    report = sub.add_parser(
        "report",
        help="write report.md and report.html with figures for a run folder",
        description="Write report.md, report.html and figures/ for a run folder "
        "of 'tgjax train' (groups, assignment over training as heatmaps and a "
        "GIF, per-task losses, test table, settings) or for an output folder of "
        "'tgjax compare' (quality against cost, tables per method and seed).",
    )
    report.add_argument("folder", metavar="RUN_DIR", help="the folder to report on")
    report.add_argument(
        "--out", default=None, help="where to write the report (default: RUN_DIR)"
    )
    report.add_argument("--debug", action="store_true", help="show tracebacks")
    compare_cli.add_parser(sub)
    datasets = sub.add_parser("datasets", help="list the built-in data sets")
    datasets.add_argument("--debug", action="store_true")
    return parser


_SETTING_TO_FLAG = {s: "--" + f.replace("_", "-") for f, s in _FLAG_TO_SETTING.items()}


def _config_from_args(args):
    from tgjax.config import PRESETS, RunConfig

    values = dict(PRESETS[args.preset]) if args.preset else {}
    given = {}  # setting -> where it was set: a flag or the --config file
    if args.config:
        from tgjax.config import settings_block
        from tgjax.runio import read_json

        # Only the settings the file names override the preset.
        from_file = RunConfig.from_json(args.config).to_dict()
        values.update({k: from_file[k] for k in settings_block(read_json(args.config))})
        given.update({k: f"{k} in {args.config}" for k in _config_keys(args.config)})
    for flag, setting in _FLAG_TO_SETTING.items():
        v = getattr(args, flag)
        if v is not None:
            values[setting] = v
            given[setting] = _SETTING_TO_FLAG[setting]
    if "stream" not in given and not args.data and args.dataset in STREAM_BY_DEFAULT:
        # Image data sets too large for memory stream unless told otherwise.
        values["stream"] = True
    config = RunConfig.from_dict(values)
    _check_conflicts(args, config, given)
    return config


def _config_keys(path) -> list[str]:
    """Settings a --config file (already read and checked) sets to non-defaults."""
    from tgjax.config import RunConfig, settings_block
    from tgjax.runio import read_json

    values = settings_block(read_json(path))
    default = RunConfig().to_dict()
    normal = RunConfig.from_dict(values).to_dict()
    return [k for k in values if normal[k] != default[k]]


def _check_conflicts(args, config, given: dict) -> None:
    """Refuses settings that the rest of the command would silently ignore."""
    if config.baseline is not None and "groups" in given:
        k = "1" if config.baseline == "mtl" else "the number of tasks"
        raise ValueError(
            f"--baseline {config.baseline} fixes K to {k}, so {given['groups']} "
            f"({config.groups}) would be ignored; drop it, or drop --baseline to "
            "search the groups."
        )
    if config.baseline is not None and args.with_baselines:
        raise ValueError(
            f"--with-baselines runs the MTL and STL baselines next to the search; "
            f"with --baseline {config.baseline} there is no search to compare. "
            "Drop one of the two flags."
        )
    if config.tau_schedule == "constant" and "tau_final" in given:
        raise ValueError(
            f"{given['tau_final']} ({config.tau_final}) only applies to a decaying "
            "temperature, but the schedule is constant (tau stays at --tau "
            f"{config.tau}). Pass --tau-schedule cosine or exponential, or drop "
            f"{given['tau_final']}."
        )


def _load_data(args):
    """The data of the flags: a StreamData when the run streams (the resolved
    setting is ``args._stream``; data sets of ``tgjax.data.STREAMS`` then
    never hold their decoded inputs), else a MultiTaskData."""
    from tgjax import data as datasets

    stream = getattr(args, "_stream", False)
    if args.data and args.dataset:
        raise ValueError("Pass either --dataset or --data, not both.")
    if getattr(args, "task_kinds", None) and not args.data:
        raise ValueError(
            "--task-kinds sets the kinds of the tasks of a --data file; the "
            "built-in data sets define their own. Drop --task-kinds or pass --data."
        )
    if args.data:
        columns = None
        if args.task_columns is not None:
            columns = [c.strip() for c in args.task_columns.split(",") if c.strip()]
            if not columns:
                raise ValueError(
                    f"--task-columns {args.task_columns!r} names no column; pass "
                    "the task columns of the file, such as --task-columns a,b, or "
                    "drop it to use the columns named task:*."
                )
        kinds = _parse_task_kinds(args.task_kinds) if args.task_kinds else None
        try:
            data = datasets.load_file(args.data, tasks=columns, kinds=kinds)
        except ValueError as e:
            if str(e).startswith("kinds names unknown task"):
                raise ValueError(
                    f"--task-kinds{str(e)[len('kinds') :]} Use the task names as "
                    "in the file (see --task-columns)."
                ) from None
            raise
    else:
        name = args.dataset or "yeast"
        kwargs = {}
        if args.data_dir:
            loader = datasets.DATASETS.get(name)
            if loader is None or "data_dir" not in inspect.signature(loader).parameters:
                raise ValueError(
                    f"--data-dir applies to data sets read from disk; {name!r} "
                    "ships with a package. Drop --data-dir."
                )
            kwargs["data_dir"] = args.data_dir
        if stream:
            data = datasets.load_stream(name, **kwargs)
        else:
            data = datasets.load_dataset(name, **kwargs)
    if stream:
        data = datasets.stream_from_memory(data)
    if args.tasks is not None:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not names:
            raise ValueError(
                f"--tasks {args.tasks!r} names no task; pass task names such as "
                f"--tasks {','.join(t.name for t in data.tasks[:2])}, or drop "
                "--tasks to use all tasks."
            )
        data = data.select_tasks(names)
    return data


def _parse_task_kinds(text: str) -> dict[str, str]:
    """``NAME=KIND,...`` of --task-kinds as a dict, each kind checked."""
    from tgjax.tasks import KINDS

    kinds = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, kind = (p.strip() for p in item.partition("="))
        if not sep or not name or kind not in KINDS:
            raise ValueError(
                f"--task-kinds {text!r}: {item!r} is not NAME=KIND with KIND one "
                f"of {', '.join(KINDS)}; for example --task-kinds "
                "smoker=binary,age=regression."
            )
        if name in kinds:
            raise ValueError(f"--task-kinds {text!r} names task {name!r} twice.")
        kinds[name] = kind
    if not kinds:
        raise ValueError(
            f"--task-kinds {text!r} names no task; pass NAME=KIND,... or drop it."
        )
    return kinds


def _absolute(path):
    """``path`` made absolute, so that --resume works from any folder."""
    return os.path.abspath(path) if path else path


def data_fingerprint(data) -> dict:
    """What identifies a run's data: example counts and a hash of the splits.

    In-memory data hashes the bytes of every split's inputs and labels;
    streamed data hashes the labels only, so that no record is decoded.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    parts = "labels"
    for split in ("train", "val", "test"):
        s = getattr(data, split)
        arrays = [np.asarray(s.y, np.float32)]
        if getattr(s, "x", None) is not None:
            arrays.insert(0, np.asarray(s.x))
            parts = "inputs and labels"
        for a in arrays:
            a = np.ascontiguousarray(a)
            digest.update(repr((split, a.dtype.str, a.shape)).encode())
            digest.update(memoryview(a).cast("B"))
    return {
        "examples": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
        "hash": f"sha256 of the {parts}: {digest.hexdigest()}",
    }


def _check_same_data(out: str, settings: dict, data) -> None:
    """Refuses to resume on data other than the run's (skipped for old runs)."""
    saved = settings.get("data", {}).get("fingerprint")
    if not saved:
        return
    now = data_fingerprint(data)
    changes = [
        f"the {split} split holds {now['examples'][split]} examples, not "
        f"{n} as when the run started"
        for split, n in saved.get("examples", {}).items()
        if now["examples"].get(split) != n
    ]
    if not changes and now["hash"] != saved.get("hash"):
        changes.append(
            "the splits hold the same numbers of examples, but different values"
        )
    if changes:
        source = settings["data"].get("source", "builtin")
        what = "the data set" if source == "builtin" else f"the data file {source}"
        raise ValueError(
            f"--resume {out}: {what} changed since the run started: "
            f"{'; '.join(changes)}. Restore the data the run was started on, or "
            "start a new run (another --out, or --overwrite)."
        )


def _print_tasks(data) -> None:
    """One line per task with its kind, before training starts."""
    print(f"tasks ({len(data.tasks)}) of {data.name}:", file=sys.stderr)
    for t in data.tasks:
        # Notes of loaded files say how the kind was found and labels mapped.
        note = data.task_notes.get(t.name)
        if note is None:
            note = t.kind if t.kind != "multiclass" else f"multiclass, {t.num_classes}"
        elif note.startswith(f"{t.name}: "):
            note = note[len(t.name) + 2 :]
        print(f"  {t.name}: {note}", file=sys.stderr)


def _prepare_out(args, data, config) -> str:
    from tgjax.validate import check_run_folder

    if args.out:
        out = args.out
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        method = config.baseline or "dmtg"
        out = os.path.join("runs", f"{data.name}-{method}-{stamp}")
    if check_run_folder(out, args.overwrite):
        shutil.rmtree(out)
    args._created_out = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"Cannot create the run folder {out} ({e.strerror or e}); choose "
            "another --out."
        ) from None
    return out


class _Progress:
    """Progress bar and metrics log fed by the pipeline's events."""

    def __init__(self, log, quiet: bool, label: str):
        self.log = log
        self.quiet = quiet
        self.label = label
        self.bar = None

    def __call__(self, event: str, payload: dict) -> None:
        from tqdm.auto import tqdm

        if event == "start":
            if self.bar is not None:
                self.bar.close()
            total = payload["epochs"] * payload["steps_per_epoch"]
            self.steps_per_epoch = payload["steps_per_epoch"]
            self.bar = tqdm(
                total=total,
                desc=f"{self.label} {payload['phase']}",
                unit="step",
                disable=self.quiet,
                file=sys.stderr,
                dynamic_ncols=True,
                # Updates come once per epoch; show every one of them.
                mininterval=0,
            )
        elif event == "log":
            self.log.write(payload)
        elif event == "epoch":
            self.log.write({"event": "epoch", **payload})
            if self.bar is not None:
                post = {"loss": f"{payload['train_loss']:.3f}"}
                if "tau" in payload:
                    post["tau"] = f"{payload['tau']:.2f}"
                post["val"] = f"{payload['val_total_loss']:.3f}"
                post["groups"] = payload["non_empty_groups"]
                # Postfix first, so the refresh in update() shows this epoch.
                self.bar.set_postfix(post, refresh=False)
                self.bar.update(self.steps_per_epoch)
        elif event == "groups":
            self.log.write({"event": "groups", **payload})
        elif event == "done" and self.bar is not None:
            self.bar.close()
            self.bar = None


def _start_processes(args) -> None:
    """Joins JAX's multi-process runtime when the flags ask for it."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(v is not None for v in explicit):
        from tgjax.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)


def _sync(name: str) -> None:
    """Waits for every process (a no-op in a single-process run)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _flag_name(args, dest: str) -> str:
    if dest == "stream":
        return "--stream" if args.stream else "--in-memory"
    return "--" + dest.replace("_", "-")


def _resume_settings(args):
    """Config and data flags of the run folder given to --resume."""
    from tgjax.config import RunConfig
    from tgjax.runio import read_json

    given = [
        f
        for f in (*_FLAG_TO_SETTING, *_DATA_FLAGS, "config", "out")
        if f not in ("mesh", "workers")
    ]
    # A store_true flag left off is False; --in-memory sets stream to False.
    given = [
        f
        for f in given
        if getattr(args, f) is not None
        and (getattr(args, f) is not False or f == "stream")
    ]
    if given:
        flags = ", ".join(_flag_name(args, f) for f in given)
        raise ValueError(
            f"--resume takes its settings from {args.resume}/config.json; drop "
            f"{flags} (only --mesh and --workers may change)."
        )
    if not os.path.isdir(args.resume):
        what = "is a file" if os.path.exists(args.resume) else "does not exist"
        raise FileNotFoundError(
            f"--resume {args.resume}: the folder {what}; pass the folder of a run "
            "started by 'tgjax train'."
        )
    path = os.path.join(args.resume, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--resume {args.resume}: no config.json there; pass the folder of a "
            "run started by 'tgjax train'."
        )
    checkpoints = os.path.join(args.resume, "checkpoints")
    if not os.path.isdir(checkpoints) or not any(
        n.isdigit() for n in os.listdir(checkpoints)
    ):
        raise ValueError(
            f"--resume {args.resume}: the run folder holds no checkpoint (the run "
            "stopped before its first one), so there is nothing to resume. Start "
            f"it again with its flags and --out {args.resume} --overwrite."
        )
    settings = read_json(path)
    values = dict(settings["run"])
    if args.mesh is not None:
        values["mesh"] = args.mesh
    if args.workers is not None:
        values["workers"] = args.workers
    if "flags" not in settings.get("data", {}):
        raise ValueError(
            f"{path} does not record the data flags of the run (it was written by "
            "an older tgjax); start the run again."
        )
    for flag, value in settings["data"]["flags"].items():
        setattr(args, flag, value)
    return RunConfig.from_dict(values), settings


def cmd_train(args) -> int:
    import jax
    import numpy as np

    import tgjax
    from tgjax.checkpoint import Checkpoints, save_checkpoint
    from tgjax.figures import plot_assignment_history
    from tgjax.pipeline import num_groups, search_steps_per_epoch
    from tgjax.resume import ResumableLog
    from tgjax.runio import read_jsonl, write_json
    from tgjax.validate import RESUME_HINT, NumericalError, check_fit_inputs

    _start_processes(args)
    lead = jax.process_index() == 0

    # Validate everything before the run folder is touched.
    if args.tensorboard and lead:
        from tgjax.tblog import require_tensorboardx

        require_tensorboardx()
    if args.resume:
        config, settings = _resume_settings(args)
        args._stream = config.stream
        data = _load_data(args)
        check_fit_inputs(data, config)
        _check_same_data(args.resume, settings, data)
        out = args.resume
    else:
        config = _config_from_args(args)
        args._stream = config.stream
        data = _load_data(args)
        for note in check_fit_inputs(data, config):
            if lead:
                print(f"tgjax: note: {note}", file=sys.stderr)
        if lead and not args.quiet:
            _print_tasks(data)
        settings = {
            "data": {
                "name": data.name,
                "source": _absolute(args.data) or "builtin",
                "flags": {
                    f: _absolute(getattr(args, f))
                    if f in ("data", "data_dir")
                    else getattr(args, f)
                    for f in _DATA_FLAGS
                },
                "tasks": [t.to_dict() for t in data.tasks],
                "task_notes": {
                    t.name: data.task_notes[t.name]
                    for t in data.tasks
                    if t.name in data.task_notes
                },
                "examples": {
                    "train": len(data.train),
                    "val": len(data.val),
                    "test": len(data.test),
                },
                "fingerprint": data_fingerprint(data),
            },
            "run": config.to_dict(),
            # K as run: 1 for --baseline mtl, N for stl, else "groups".
            "effective_groups": num_groups(config, len(data.tasks)),
            "tgjax_version": tgjax.__version__,
        }
        out = _prepare_out(args, data, config) if lead else args.out
    metrics_path = os.path.join(out or "", "metrics.jsonl")
    log = _NullLog()
    checkpoints = None
    boards = []

    def observer(log, name):
        """Progress bar, plus TensorBoard logs with --tensorboard."""
        progress = _Progress(log, args.quiet or not lead, name)
        if not args.tensorboard or not lead:
            return progress
        from tgjax.tblog import TensorBoardLog

        board = TensorBoardLog(
            os.path.join(out, "tensorboard", name), [t.name for t in data.tasks]
        )
        boards.append(board)
        return _Fanout(progress, board)

    started = time.time()
    try:
        # From here on a fresh run that fails before its first checkpoint
        # removes what it wrote, so that the same command can run again.
        if lead and not args.resume:
            write_json(os.path.join(out, "config.json"), settings)
        _sync("run folder ready")
        if out is None:
            raise ValueError(
                "A multi-process run needs --out, the same in every process."
            )
        if lead:
            log = ResumableLog(metrics_path)
        checkpoints = Checkpoints(
            os.path.join(out, "checkpoints"), keep=config.keep_checkpoints
        )
        steps_per_epoch = search_steps_per_epoch(len(data.train), config)
        progress = observer(log, config.baseline or "dmtg")

        def callback(event, payload):
            if event == "resume" and lead:
                for step, reason in payload["skipped"]:
                    print(
                        f"tgjax: checkpoint {step} is damaged and was skipped "
                        f"({reason})",
                        file=sys.stderr,
                    )
                log.rewind(payload["step"], steps_per_epoch)
                print(f"tgjax: resuming at step {payload['step']}", file=sys.stderr)
            progress(event, payload)

        result = tgjax.fit(
            data,
            config,
            callback=callback,
            checkpoints=checkpoints,
            resume=bool(args.resume),
        )
        seconds = time.time() - started
        baselines = {}
        if args.with_baselines and config.baseline is None:
            for name in ("mtl", "stl"):
                base_started = time.time()
                base_cfg = dataclasses.replace(config, baseline=name)
                res = tgjax.fit(data, base_cfg, callback=observer(_NullLog(), name))
                baselines[name] = {
                    "groups": res.groups,
                    "test": res.test,
                    "val": res.val,
                    "wall_seconds": round(time.time() - base_started, 2),
                }
    except NumericalError as e:
        # Keep what was learnt: the log so far plus the reason it stopped.
        saved = _saved_steps(checkpoints)
        message = str(e).replace(
            RESUME_HINT,
            f", or continue from the last checkpoint with 'tgjax train --resume {out}'"
            if saved
            else "",
        )
        log.write({"event": "error", "kind": "numerical", "message": message})
        _close_all(log, checkpoints, boards)
        after = (
            f" 'tgjax train --resume {out}' continues from its newest checkpoint "
            f"(step {saved[-1]})."
            if saved
            else f" No checkpoint was written yet; rerun with --out {out} "
            "--overwrite to start again."
        )
        raise NumericalError(
            f"{message} The settings and the metrics up to "
            f"the failing step are in {os.path.join(out, 'config.json')} and "
            f"{os.path.join(out, 'metrics.jsonl')}.{after}"
        ) from e
    except KeyboardInterrupt:
        saved = _saved_steps(checkpoints)
        _close_all(log, checkpoints, boards)
        if lead:
            args._interrupt_reported = True
            if saved:
                print(
                    f"tgjax: interrupted; the run folder {out} keeps checkpoints up "
                    f"to step {saved[-1]}: 'tgjax train --resume {out}' "
                    "continues it.",
                    file=sys.stderr,
                )
            elif args.resume:
                print(
                    f"tgjax: interrupted; the run folder {out} holds no readable "
                    "checkpoint, so it cannot be resumed.",
                    file=sys.stderr,
                )
            else:
                _remove_fresh_run(args, out)
                print(
                    "tgjax: interrupted before the first checkpoint; removed the "
                    f"run folder {out}, so the same command starts afresh.",
                    file=sys.stderr,
                )
        raise
    except Exception:
        saved = _saved_steps(checkpoints)
        _close_all(log, checkpoints, boards)
        if lead and not args.resume and out is not None:
            if saved:
                print(
                    f"tgjax: the run stopped; its folder {out} keeps checkpoints up "
                    f"to step {saved[-1]}: 'tgjax train --resume {out}' continues "
                    "it once the cause is fixed.",
                    file=sys.stderr,
                )
            else:
                # Nothing worth keeping: free the folder so a rerun is not refused.
                _remove_fresh_run(args, out)
        raise
    finally:
        _close_all(log, checkpoints, boards)
    total_seconds = time.time() - started

    final = os.path.join(out, "checkpoint")
    if lead and os.path.exists(final):  # left by an earlier attempt of a resume
        shutil.rmtree(final)
    _sync("final checkpoint")
    save_checkpoint(
        final,
        jax.device_get(
            {
                "search": result.search_state,
                "pruned": {
                    "params": result.pruned.params,
                    "state": result.pruned.state,
                    "kept": np.asarray(result.pruned.kept),
                    "task_branch": np.asarray(result.pruned.task_branch),
                },
            }
        ),
    )
    if not lead:
        return 0

    write_json(os.path.join(out, "groups.json"), result.groups_json())
    results = {
        "method": config.baseline or "dmtg",
        "effective_groups": num_groups(config, len(data.tasks)),
        "groups": result.groups,
        "assignment_confidence": round(float(result.probabilities.max(1).mean()), 6),
        "test": result.test,
        "val": result.val,
        "finetune_epochs": config.finetune_epochs,
        "finetune_selected_epoch": int(result.finetune_selected_epoch),
        "finetune_selected_val_total_loss": round(
            float(result.finetune_selected_val_loss), 6
        ),
        "pruned_val_total_loss": round(float(result.pruned_val_loss), 6),
        # The main run's own time; each baseline records its own.
        "wall_seconds": round(seconds, 2),
    }
    if baselines:
        results["baselines"] = baselines
        results["total_wall_seconds"] = round(total_seconds, 2)
    write_json(os.path.join(out, "results.json"), results)
    # The whole log, so that a resumed run plots its steps before the resume.
    history = [r for r in read_jsonl(metrics_path) if "step" in r]
    if history:
        plot_assignment_history(
            [h["step"] for h in history],
            np.array([h["probabilities"] for h in history]),
            result.tasks,
            os.path.join(out, "assignment.png"),
        )
    _print_summary(result, results, out)
    return 0


# Everything a run writes into its folder before its results.
_RUN_START_FILES = ("config.json", "metrics.jsonl", "checkpoints", "tensorboard")


def _saved_steps(checkpoints) -> list[int]:
    """Steps of the run's complete checkpoints; empty when none can be read."""
    if checkpoints is None:
        return []
    try:
        return checkpoints.steps()
    except Exception:  # noqa: BLE001 - an unreadable folder holds no checkpoint
        return []


def _close_all(log, checkpoints, boards) -> None:
    """Closes the run's writers; safe to call more than once."""
    for closer in (log, checkpoints, *boards):
        if closer is None:
            continue
        try:
            closer.close()
        except Exception:  # noqa: BLE001 - the original error matters more
            pass


def _remove_fresh_run(args, out: str) -> None:
    """Removes what a fresh run wrote to ``out`` (and ``out`` if it made it)."""
    for name in os.listdir(out) if os.path.isdir(out) else ():
        path = os.path.join(out, name)
        if name in _RUN_START_FILES or name.startswith(".tmp"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
    if getattr(args, "_created_out", False):
        try:
            os.rmdir(out)
        except OSError:
            pass


class _Fanout:
    """Passes each pipeline event to several callbacks in turn."""

    def __init__(self, *callbacks):
        self.callbacks = callbacks

    def __call__(self, event: str, payload: dict) -> None:
        for cb in self.callbacks:
            cb(event, payload)


class _NullLog:
    def write(self, record):
        pass

    def rewind(self, step, steps_per_epoch):
        return 0

    def close(self):
        pass


def _print_summary(result, results, out) -> None:
    if result.config.finetune_epochs and not result.finetune_improved:
        print(
            f"note: none of the {result.config.finetune_epochs} fine-tuning epochs "
            "improved the validation loss "
            f"({result.pruned_val_loss:.4g}); reporting the pruned network before "
            "fine-tuning. Try a lower --lr or fewer --finetune-epochs.",
        )
    print(f"groups ({len(result.groups)}, by group index as in groups.json):")
    for k, g in zip(result.pruned.kept, result.groups, strict=True):
        print(f"  {int(k)}: {', '.join(g)}")
    rows = [(results["method"], results["test"])]
    rows += [(k, v["test"]) for k, v in results.get("baselines", {}).items()]
    for name, test in rows:
        parts = [f"total loss {test['total_loss']:.3f}"]
        if "total_error_percent" in test:
            parts.append(f"total error {test['total_error_percent']:.2f}%")
        if "total_mae" in test:
            parts.append(f"total MAE {test['total_mae']:.4g}")
        print(f"test {name}: " + ", ".join(parts))
    print(f"run folder: {out}")


def cmd_report(args) -> int:
    from tgjax.report import write_report

    report = write_report(args.folder, args.out)
    print(f"report: {report.markdown}")
    print(f"        {report.html}")
    for path in report.figures:
        print(f"figure: {path}")
    return 0


def cmd_datasets(args) -> int:
    from tgjax.data import DATASETS

    for name, loader in sorted(DATASETS.items()):
        doc = (loader.__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Show the usage of the command the flag was given to, not tgjax's.
        command = _subparser(parser, args.command) or parser
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    handler = {
        "train": cmd_train,
        "report": cmd_report,
        "compare": compare_cli.run,
        "datasets": cmd_datasets,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        if not getattr(args, "_interrupt_reported", False):
            print("tgjax: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as e:
        if getattr(args, "debug", False):
            raise
        if _expected(e):
            print(f"tgjax: error: {_describe(e)}", file=sys.stderr)
            return 2
        _internal_error(e)
        return 1
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        _internal_error(e)
        return 1


def _subparser(parser, command):
    """The parser of ``command``, or None."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def _internal_error(e: BaseException) -> None:
    print(
        f"tgjax: internal error: {type(e).__name__}: {e}\n"
        "tgjax: run with --debug for the traceback.",
        file=sys.stderr,
    )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _expected(e: BaseException) -> bool:
    """Whether ``e`` reports bad input or a bad environment, not a defect.

    tgjax's own checks raise their errors with a message meant for the user;
    the same exception types raised deep inside a library (a JSON encoder, a
    JAX transformation) mean that tgjax itself went wrong. File-system errors
    and missing packages are the environment's, wherever they surface.
    """
    if isinstance(e, (OSError, ImportError)):
        return True
    tb = e.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return where.startswith(_PACKAGE_DIR + os.sep)


def _describe(e: BaseException) -> str:
    """One paragraph for an expected error; OS errors get the path and a fix."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return (
            f"cannot use {e.filename}: {e.strerror.lower()}. Check that the path "
            "exists, is a file or folder as expected, and is readable."
        )
    return str(e) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
