"""The ``tgjax compare`` subcommand: every grouping method against the oracle."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

# What ``tgjax compare`` writes into --out, and what ``tgjax report`` adds
# to that folder. Nothing else in --out is ever replaced or deleted.
COMPARE_FILES = frozenset({"results.json", "oracle.json", "results.md", "cost.png"})
REPORT_FILES = frozenset({"report.md", "report.html", "figures"})


def check_compare_folder(out: str, overwrite: bool) -> bool:
    """Decides whether ``tgjax compare`` may write its outputs into ``out``.

    Returns:
      True when ``out`` holds earlier comparison outputs that ``overwrite``
      allows to be replaced; False when it is absent or empty.

    Raises:
      ValueError: when ``out`` is a file, holds outputs and ``overwrite`` is
        off, or holds anything that ``tgjax compare`` and ``tgjax report`` do
        not write (never deleted, not even with ``--overwrite``).
    """
    from tgjax.validate import output_folder_names

    names = output_folder_names(
        out,
        lambda n: n in COMPARE_FILES | REPORT_FILES,
        "'tgjax compare' does not write",
    )
    if not names:
        return False
    if not overwrite:
        raise ValueError(
            f"--out {out} already holds comparison outputs ({', '.join(names)}); "
            "pass --overwrite to replace them once the new run has finished, "
            "or choose another --out."
        )
    return True


def _install_outputs(staged: str, out: str) -> None:
    """Moves the finished outputs from ``staged`` into ``out``, one atomic
    rename per file, then drops stale outputs of the earlier comparison (and
    the report made from it)."""
    os.makedirs(out, exist_ok=True)
    new = set(os.listdir(staged))
    for name in sorted(new):
        os.replace(os.path.join(staged, name), os.path.join(out, name))
    for name in sorted((COMPARE_FILES | REPORT_FILES) - new):
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_parser(sub) -> argparse.ArgumentParser:
    """Registers ``compare`` on an argparse subparsers object."""
    from tgjax.cli import int_list  # the main parser is built by tgjax.cli
    from tgjax.compare import MAX_PARTITIONS, METHODS

    p = sub.add_parser(
        "compare",
        help="compare grouping methods on one data set against the exhaustive optimum",
        description="Run grouping methods with the same network, data, budget "
        "and seeds, train every partition into at most K groups (the oracle), "
        "and write results.json, oracle.json, results.md and cost.png.",
    )
    p.add_argument("--dataset", default="yeast", help="built-in data set (yeast)")
    p.add_argument("--tasks", type=_names, default=None, metavar="A,B,...")
    p.add_argument(
        "--subset", type=int, default=None, help="examples drawn at random (qm9)"
    )
    p.add_argument("--groups", type=int, required=True, help="K, most groups")
    p.add_argument(
        "--methods",
        type=_names,
        default=METHODS,
        metavar="M1,M2",
        help=f"methods from {', '.join(METHODS)} (default: all)",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 (5)")
    p.add_argument(
        "--oneshot-seeds",
        type=int,
        default=None,
        help="seeds 0..R-1 for random and dmtg (default: --seeds)",
    )
    p.add_argument("--epochs", type=int, required=True, help="epochs per training")
    p.add_argument("--hidden", type=int_list, default=None, metavar="W1,W2")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate (8e-4)")
    p.add_argument("--assignment-lr", type=float, default=None, help="dmtg's S lr")
    p.add_argument("--tau", type=float, default=None, help="dmtg temperature (2.5)")
    p.add_argument("--settle-threshold", type=float, default=0.9)
    p.add_argument("--settle-max-epochs", type=int, default=200)
    p.add_argument("--lookahead-lr", type=float, default=None, help="TAG lookahead")
    p.add_argument("--top", type=int, default=10, help="oracle top list size (10)")
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument(
        "--max-partitions",
        type=int,
        default=MAX_PARTITIONS,
        metavar="N",
        help="refuse an exhaustive oracle of more than N partitions per seed "
        f"({MAX_PARTITIONS:,})",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier comparison outputs in --out once the new run has "
        "finished (a folder holding other files is refused)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


# RunConfig settings and the compare flags that set them.
_SETTING_FLAGS = {
    "assignment_learning_rate": "--assignment-lr",
    "learning_rate": "--lr",
    "batch_size": "--batch-size",
    "hidden": "--hidden",
    "tau": "--tau",
}


def _flag_names(message: str) -> str:
    """A RunConfig message with its setting names replaced by compare's flags."""
    for setting, flag in _SETTING_FLAGS.items():
        if message.startswith(setting + " "):
            return flag + message[len(setting) :]
    return message


def _check_flags(args) -> None:
    """Refuses out-of-range flag values, naming the flag."""
    from tgjax.compare import METHODS

    for flag, value in (
        ("--groups", args.groups),
        ("--epochs", args.epochs),
        ("--seeds", args.seeds),
        ("--oneshot-seeds", args.oneshot_seeds),
        ("--settle-max-epochs", args.settle_max_epochs),
        ("--top", args.top),
        ("--chunk-size", args.chunk_size),
        ("--max-partitions", args.max_partitions),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise ValueError(
            f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(METHODS)}."
        )
    if not 0 < args.settle_threshold < 1:
        raise ValueError(
            f"--settle-threshold must be in (0, 1), got {args.settle_threshold}."
        )
    if args.lookahead_lr is not None and not 0 < args.lookahead_lr < float("inf"):
        raise ValueError(
            f"--lookahead-lr must be a finite number > 0, got {args.lookahead_lr}."
        )


def _check_dataset(name: str, kwargs: dict) -> None:
    """Refuses an unknown --dataset, and --subset for a data set without one."""
    import inspect

    from tgjax.data import DATASETS

    if name not in DATASETS:
        raise ValueError(
            f"--dataset {name}: unknown data set; choose one of "
            f"{', '.join(sorted(DATASETS))}."
        )
    params = inspect.signature(DATASETS[name]).parameters
    if "subset" in kwargs and "subset" not in params:
        takes = sorted(
            n
            for n, f in DATASETS.items()
            if "subset" in inspect.signature(f).parameters
        )
        raise ValueError(
            f"--subset does not apply to --dataset {name}; it draws examples of "
            f"{', '.join(takes) or 'no data set'}. Leave --subset out."
        )


def _check_oracle_size(data, config) -> None:
    """Counts the oracle's partitions before any training and refuses more
    than --max-partitions (compare itself logs the count)."""
    from tgjax.compare import ORACLE_METHODS, oracle_size

    count = oracle_size(len(data.task_names), config)
    if not count:
        return
    methods = ", ".join(m for m in ORACLE_METHODS if m in config.methods)
    n, k, seeds = len(data.task_names), config.groups, len(config.seeds)
    if count > config.max_partitions:
        raise ValueError(
            f"{methods} would train every partition of {n} tasks into at most "
            f"{k} groups: {count:,} partitions on each of {seeds} seed(s), above "
            f"the limit of {config.max_partitions:,}. Choose fewer tasks with "
            f"--tasks, leave {methods} out of --methods, or raise the limit with "
            f"--max-partitions {count}."
        )


def run(args) -> int:
    """Runs ``tgjax compare`` from parsed arguments."""
    from tgjax.compare import CompareConfig, compare, write_outputs
    from tgjax.config import RunConfig
    from tgjax.data import load_dataset

    run_values = {
        key: value
        for key, value in (
            ("hidden", args.hidden),
            ("batch_size", args.batch_size),
            ("learning_rate", args.lr),
            ("assignment_learning_rate", args.assignment_lr),
            ("tau", args.tau),
        )
        if value is not None
    }
    _check_flags(args)
    oneshot = None
    if args.oneshot_seeds is not None:
        oneshot = tuple(range(args.oneshot_seeds))
    try:
        run_config = RunConfig(**run_values)
    except ValueError as e:
        raise ValueError(_flag_names(str(e))) from None
    config = CompareConfig(
        groups=args.groups,
        epochs=args.epochs,
        seeds=tuple(range(args.seeds)),
        oneshot_seeds=oneshot,
        methods=args.methods,
        run=run_config,
        settle_threshold=args.settle_threshold,
        settle_max_epochs=args.settle_max_epochs,
        lookahead_lr=args.lookahead_lr,
        top=args.top,
        chunk_size=args.chunk_size,
        max_partitions=args.max_partitions,
    )
    check_compare_folder(args.out, args.overwrite)
    kwargs = {"subset": args.subset} if args.subset is not None else {}
    _check_dataset(args.dataset, kwargs)
    data = load_dataset(args.dataset, **kwargs)
    if args.tasks:
        data = data.select_tasks(args.tasks)
    if run_config.batch_size > len(data.train):
        raise ValueError(
            f"--batch-size {run_config.batch_size} is larger than the training "
            f"split of {data.name} ({len(data.train)} examples); pass a smaller "
            "--batch-size."
        )
    started = time.time()

    def log(line):
        if not args.quiet:
            print(f"[{time.time() - started:7.1f} s] {line}", file=sys.stderr)

    _check_oracle_size(data, config)

    result = compare(data, config, log=log)
    result["settings"]["wall_seconds"] = round(time.time() - started, 1)
    if args.subset is not None:
        result["settings"]["subset"] = args.subset
    # The new outputs are written next to --out and moved in only when
    # complete, so a failed or interrupted run leaves the old ones in place.
    out = os.path.abspath(args.out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    keep = False
    try:
        write_outputs(staged, result)
        try:  # --out may have changed while the comparison ran
            check_compare_folder(args.out, args.overwrite)
        except ValueError as e:
            keep = True
            raise ValueError(f"{e} The new outputs are kept in {staged}.") from None
        _install_outputs(staged, out)
    finally:
        if not keep:
            shutil.rmtree(staged, ignore_errors=True)
    print(f"results: {os.path.join(args.out, 'results.md')}")
    return 0
