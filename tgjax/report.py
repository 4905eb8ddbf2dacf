"""Reports of a run folder or a comparison folder: ``report.md`` and ``report.html``.

A run folder (written by ``tgjax train``) gives figures of the final groups,
of the assignment probabilities over training (a grid of heatmaps and an
animated GIF), per-task loss curves, training curves, the test table against
the baselines when they ran, and the settings.

A comparison folder (written by ``tgjax compare``; its ``results.json`` holds
a ``"records"`` list, one record per method and seed) gives a plot of quality
against cost with error bars over seeds, a summary table per method and the
table of all records.

Both reports are built as one list of blocks, rendered once as Markdown and
once as HTML, so the two always say the same thing. Every file is written
atomically; figures go to ``figures/`` next to the reports.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tgjax import figures
from tgjax.runio import read_jsonl, write_text

RUN_FILES = ("config.json", "metrics.jsonl", "groups.json", "results.json")
FIGURES = "figures"


# Blocks shared by the Markdown and HTML renderers.


@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclasses.dataclass(frozen=True)
class Figure:
    path: str  # relative to the report
    caption: str


@dataclasses.dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


Block = Heading | Paragraph | Bullets | Figure | Table


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Renders blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path})\n\n*{b.caption}*")
        elif isinstance(b, Table):
            lines = [
                "| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                "|" + "---|" * len(b.header),
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _is_number(text: str) -> bool:
    try:
        float(str(text).split(" ")[0].rstrip("%"))
    except ValueError:
        return False
    return True


def render_html(blocks: Sequence[Block], title: str) -> str:
    """Renders blocks as a self-standing HTML page (figures linked relatively)."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = "".join(f"<li>{e(i)}</li>" for i in b.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(b, Figure):
            body.append(
                f'<figure><img src="{e(b.path)}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(str(h))}</th>" for h in b.header)
            rows = []
            for r in b.rows:
                cells = "".join(
                    f'<td class="num">{e(str(c))}</td>'
                    if _is_number(c)
                    else f"<td>{e(str(c))}</td>"
                    for c in r
                )
                rows.append(f"<tr>{cells}</tr>")
            body.append(
                f"<table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# Reading the folders.


def _read_json_file(folder: str, name: str, what: str) -> Any:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: {what}. Point 'tgjax report' at a finished run "
            "folder of 'tgjax train' or an output folder of 'tgjax compare'."
        )
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}: {err.msg}); the run "
            "was probably interrupted while writing it. Rerun it."
        ) from None


def _require(value: Mapping, keys: Sequence[str], path: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{path} should hold a JSON object, not {type(value).__name__}."
        )
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}; it was not written "
            "by this version of tgjax. Rerun the command that made it."
        )


def is_compare_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is an output folder of ``tgjax compare``."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(value, Mapping) and isinstance(value.get("records"), list)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The files of a finished ``tgjax train`` run."""

    config: dict
    metrics: list[dict]
    groups: dict
    results: dict

    @property
    def history(self) -> list[dict]:
        """The logged search steps (records with ``probabilities``)."""
        return [
            m
            for m in self.metrics
            if "probabilities" in m and m.get("phase", "search") == "search"
        ]

    @property
    def epochs(self) -> list[dict]:
        return [m for m in self.metrics if m.get("event") == "epoch"]


def load_run_folder(folder: str | os.PathLike) -> RunFolder:
    """Reads and checks the files of a run folder.

    Raises:
      FileNotFoundError: naming the missing file.
      ValueError: naming the file that is broken or incomplete.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} is not a folder; pass the run folder of 'tgjax train' "
            "(its --out) or the output folder of 'tgjax compare'."
        )
    config = _read_json_file(folder, "config.json", "settings of the run")
    groups = _read_json_file(folder, "groups.json", "the groups read off S")
    results = _read_json_file(folder, "results.json", "the test results")
    metrics_path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(
            f"{metrics_path} is missing: the training log. Point 'tgjax report' "
            "at a finished run folder of 'tgjax train'."
        )
    metrics = read_jsonl(metrics_path)
    _require(config, ("data", "run"), os.path.join(folder, "config.json"))
    _require(
        groups,
        ("tasks", "groups", "assignment", "probabilities"),
        os.path.join(folder, "groups.json"),
    )
    _require(
        results, ("method", "groups", "test"), os.path.join(folder, "results.json")
    )
    n_tasks = len(groups["tasks"])
    probs = np.asarray(groups["probabilities"], dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n_tasks:
        raise ValueError(
            f"{os.path.join(folder, 'groups.json')}: probabilities have shape "
            f"{probs.shape}, expected [tasks={n_tasks}, groups]."
        )
    for m in metrics:
        if "probabilities" in m:
            shape = np.shape(m["probabilities"])
            if shape != probs.shape or np.shape(m.get("loss_matrix")) != probs.shape:
                raise ValueError(
                    f"{metrics_path}: step {m.get('step')} logs probabilities of "
                    f"shape {shape} and a loss matrix of shape "
                    f"{np.shape(m.get('loss_matrix'))}, expected {probs.shape} as "
                    "in groups.json; the folder mixes two runs."
                )
    return RunFolder(config, metrics, groups, results)


# Formatting.


def fmt(value: Any) -> str:
    """Formats a number for a table: 4 significant digits, or 2 decimals from 10."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:#.4g}"
    return str(value)


def _totals(test: Mapping) -> list[tuple[str, float]]:
    out = []
    if "total_error_percent" in test:
        out.append(("total error (%)", test["total_error_percent"]))
    if "total_mae" in test:
        out.append(("total MAE", test["total_mae"]))
    out.append(("total loss", test["total_loss"]))
    return out


def _groups_text(groups: Sequence[Sequence[str]]) -> str:
    return "; ".join("{" + ", ".join(g) + "}" for g in groups)


# The run report.


def _run_blocks(run: RunFolder, figure_paths: Mapping[str, str]) -> list[Block]:
    data, settings = run.config["data"], run.config["run"]
    results, groups = run.results, run.groups
    method = results["method"]
    tasks = groups["tasks"]
    blocks: list[Block] = [
        Heading(f"tgjax report: {data.get('name', '?')} ({method})", 1),
    ]
    examples = data.get("examples", {})
    facts = [
        f"data: {data.get('name', '?')}, {len(tasks)} tasks",
        "examples: "
        + ", ".join(f"{k} {v}" for k, v in examples.items())
        + ("" if examples else "unknown"),
        f"candidate groups K: {len(groups['probabilities'][0])}, "
        f"non-empty after the search: {len(groups['groups'])}",
    ]
    if "wall_seconds" in results:
        facts.append(f"wall time: {fmt(float(results['wall_seconds']))} s")
    if "tgjax_version" in run.config:
        facts.append(f"tgjax {run.config['tgjax_version']}")
    blocks.append(Bullets(facts))

    blocks.append(Heading("Groups"))
    blocks.append(
        Bullets([f"group {i}: {', '.join(g)}" for i, g in enumerate(results["groups"])])
    )
    if "groups" in figure_paths:
        blocks.append(
            Figure(
                figure_paths["groups"],
                "Final assignment probabilities softmax(S); the red cell of each "
                "row is the task's group.",
            )
        )

    blocks.append(Heading("Assignment over training"))
    if "grid" in figure_paths:
        blocks.append(
            Figure(
                figure_paths["grid"],
                "Assignment probabilities at evenly spaced logged steps; the colour "
                "scale spans the values shown.",
            )
        )
        blocks.append(
            Figure(figure_paths["gif"], "The same, animated over all logged steps.")
        )
    else:
        blocks.append(
            Paragraph("No search steps were logged (a baseline run), so no history.")
        )
    if "losses" in figure_paths:
        blocks.append(Heading("Per-task loss during the search"))
        blocks.append(
            Figure(
                figure_paths["losses"],
                "Training loss of each task on its selected group (from the logged "
                "loss matrices); grey: the same task on the other groups.",
            )
        )
    if "curves" in figure_paths:
        blocks.append(Heading("Training curves"))
        blocks.append(
            Figure(
                figure_paths["curves"],
                "Train and validation total loss, temperature and non-empty groups "
                "per epoch (search, then fine-tuning).",
            )
        )

    blocks.append(Heading("Test results"))
    blocks.extend(_results_tables(results, tasks))

    blocks.append(Heading("Settings"))
    blocks.append(
        Table(
            ["setting", "value"],
            [[k, json.dumps(v)] for k, v in settings.items()],
        )
    )
    return blocks


def _results_tables(results: Mapping, tasks: Sequence[str]) -> list[Block]:
    label = {"dmtg": "DMTG", "mtl": "MTL (K = 1)", "stl": "STL (K = N)"}
    rows = [(results["method"], results)]
    rows += list(results.get("baselines", {}).items())
    total_names = [name for name, _ in _totals(results["test"])]
    summary = []
    for name, res in rows:
        test = res["test"]
        totals = dict(_totals(test))
        val = res.get("val", {})
        summary.append(
            [
                label.get(name, name),
                str(len(res["groups"])),
                *[fmt(totals.get(t)) for t in total_names],
                fmt(val.get("total_loss")),
            ]
        )
    blocks: list[Block] = [
        Table(
            ["method", "groups", *[f"test {t}" for t in total_names], "val total loss"],
            summary,
        )
    ]
    if len(rows) > 1:
        blocks.append(
            Paragraph(
                "The baselines went through the same pipeline: MTL is one shared "
                "branch (K = 1), STL one branch per task (K = N, S = I)."
            )
        )
    per_task = []
    for t in tasks:
        first = rows[0][1]["test"]["tasks"].get(t, {})
        per_task.append(
            [
                t,
                first.get("metric", ""),
                *[fmt(r["test"]["tasks"].get(t, {}).get("value")) for _, r in rows],
            ]
        )
    blocks.append(
        Table(["task", "metric", *[label.get(n, n) for n, _ in rows]], per_task)
    )
    groups_rows = [[label.get(n, n), _groups_text(r["groups"])] for n, r in rows]
    blocks.append(Table(["method", "groups"], groups_rows))
    return blocks


def _run_figures(run: RunFolder, fig_dir: str) -> dict[str, str]:
    tasks = run.groups["tasks"]
    assignment = run.groups["assignment"]
    paths: dict[str, str] = {}

    def out(key: str, name: str) -> str:
        paths[key] = f"{FIGURES}/{name}"
        return os.path.join(fig_dir, name)

    figures.plot_groups(
        run.groups["probabilities"], tasks, assignment, out("groups", "groups.png")
    )
    history = run.history
    if history:
        steps = [h["step"] for h in history]
        probs = np.array([h["probabilities"] for h in history])
        figures.plot_assignment_grid(steps, probs, tasks, out("grid", "assignment.png"))
        figures.write_assignment_gif(steps, probs, tasks, out("gif", "assignment.gif"))
        figures.plot_task_losses(
            steps,
            np.array([h["loss_matrix"] for h in history]),
            tasks,
            assignment,
            out("losses", "task_losses.png"),
        )
    if run.epochs:
        figures.plot_training_curves(run.epochs, out("curves", "training.png"))
    return paths


# The comparison report.


def summarize_records(records: Sequence[Mapping]) -> list[dict]:
    """Mean and standard deviation over seeds, per method, in order of appearance.

    Args:
      records: ``tgjax compare`` records with at least ``method``.

    Returns:
      One dict per method: ``method``, ``seeds`` and, for every numeric field
      among ``val_total``, ``test_total``, ``wall_seconds``, ``run_seconds``
      (wall time without compilation), ``compile_seconds``, ``steps`` (or
      compare's ``train_steps``) and ``oracle_percentile``, ``<field>_mean``
      and ``<field>_std`` (sample standard deviation; 0 for one seed);
      ``in_noise_band`` as the fraction of seeds inside the oracle's noise
      band when recorded.
    """
    by_method: dict[str, list[Mapping]] = {}
    for r in records:
        if "steps" not in r and "train_steps" in r:
            r = {**r, "steps": r["train_steps"]}
        by_method.setdefault(str(r["method"]), []).append(r)
    out = []
    for method, rs in by_method.items():
        row: dict[str, Any] = {"method": method, "seeds": len(rs)}
        for key in (
            "val_total",
            "test_total",
            "wall_seconds",
            "run_seconds",
            "compile_seconds",
            "steps",
        ):
            _mean_std(row, key, rs)
        _mean_std(row, "oracle_percentile", rs)
        _mean_std(row, "oracle_rank", rs)
        band = [
            bool(r["in_noise_band"]) for r in rs if r.get("in_noise_band") is not None
        ]
        if band:
            row["in_noise_band"] = sum(band) / len(band)
        out.append(row)
    return out


def _mean_std(row: dict, key: str, records: Sequence[Mapping]) -> None:
    values = [
        float(r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    if values:
        row[f"{key}_mean"] = float(np.mean(values))
        row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pm(row: Mapping, key: str) -> str:
    if f"{key}_mean" not in row:
        return ""
    return f"{fmt(row[f'{key}_mean'])} ± {fmt(row[f'{key}_std'])}"


def load_compare_folder(folder: str | os.PathLike) -> tuple[list[dict], Any]:
    """Reads the records (and the oracle, when present) of a comparison folder."""
    folder = os.fspath(folder)
    results = _read_json_file(folder, "results.json", "the comparison records")
    path = os.path.join(folder, "results.json")
    records = results.get("records") if isinstance(results, Mapping) else None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} holds no records; the comparison ran no method.")
    for i, r in enumerate(records):
        _require(r, ("method", "val_total", "test_total"), f"{path} record {i}")
    oracle = None
    if os.path.isfile(os.path.join(folder, "oracle.json")):
        oracle = _read_json_file(folder, "oracle.json", "the exhaustive search")
    return records, oracle


def _compare_blocks(
    folder: str, records: Sequence[Mapping], oracle: Any, figure_path: str
) -> list[Block]:
    summary = summarize_records(records)
    blocks: list[Block] = [Heading("tgjax report: comparison of grouping methods", 1)]
    methods = ", ".join(r["method"] for r in summary)
    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None})
    blocks.append(
        Bullets(
            [
                f"methods: {methods}",
                f"seeds: {', '.join(str(s) for s in seeds) or 'not recorded'}",
                f"records: {len(records)}",
            ]
        )
    )
    blocks.append(
        Figure(
            figure_path,
            "Validation and test total (lower is better) against cost; markers "
            "are means over seeds, bars one standard deviation.",
        )
    )
    blocks.append(Heading("Summary per method"))
    has_oracle = any("oracle_percentile_mean" in r for r in summary)
    # Run seconds exclude compilation, which the first method needing a
    # program pays; older folders only have wall seconds.
    split = any("run_seconds_mean" in r for r in summary)
    seconds = ["run_seconds", "compile_seconds"] if split else ["wall_seconds"]
    seconds_head = ["run s", "compile s"] if split else ["wall s"]
    header = ["method", "seeds", "val total", "test total", *seconds_head, "steps"]
    if has_oracle:
        header += ["oracle rank", "oracle percentile", "in noise band"]
    rows = []
    for r in summary:
        row = [
            r["method"],
            str(r["seeds"]),
            _pm(r, "val_total"),
            _pm(r, "test_total"),
            *[_pm(r, key) for key in seconds],
            _pm(r, "steps"),
        ]
        if has_oracle:
            band = r.get("in_noise_band")
            row += [
                _pm(r, "oracle_rank"),
                _pm(r, "oracle_percentile"),
                "" if band is None else f"{100 * band:.0f}% of seeds",
            ]
        rows.append(row)
    blocks.append(Table(header, rows))

    blocks.append(Heading("All records"))
    task_names: list[str] = []
    for r in records:
        for t in _task_values(r):
            if t not in task_names:
                task_names.append(t)
    header = [
        "method",
        "seed",
        "val total",
        "test total",
        *seconds_head,
        "steps",
        "groups",
    ]
    rows = []
    for r in records:
        values = _task_values(r)
        groups = r.get("groups")
        rows.append(
            [
                str(r["method"]),
                fmt(r.get("seed")),
                fmt(r.get("val_total")),
                fmt(r.get("test_total")),
                *[fmt(r.get(key)) for key in seconds],
                fmt(r.get("steps", r.get("train_steps"))),
                _groups_text(groups) if isinstance(groups, list) else fmt(groups),
                *[fmt(values.get(t)) for t in task_names],
            ]
        )
    blocks.append(Table(header + [f"test {t}" for t in task_names], rows))
    if split:
        blocks.append(
            Paragraph(
                "run s is wall time without compilation; compile s is tracing "
                "and XLA compilation, paid by whichever method first needs a "
                "program of a given shape, so it depends on the order the "
                "methods ran in. The figure plots run s and steps."
            )
        )
    extra = [
        name
        for name in ("results.md", "oracle.json")
        if os.path.isfile(os.path.join(folder, name))
    ]
    if extra:
        blocks.append(Paragraph("Also in this folder: " + ", ".join(extra) + "."))
    if isinstance(oracle, Mapping) and isinstance(oracle.get("best"), Mapping):
        best = oracle["best"]
        if isinstance(best.get("groups"), list):
            blocks.append(
                Paragraph(
                    "Best partition of the exhaustive search: "
                    + _groups_text(best["groups"])
                )
            )
    return blocks


def _task_values(record: Mapping) -> dict[str, float]:
    """Per-task test metric of a record, from ``test_tasks`` ({task: value})."""
    tasks = record.get("test_tasks")
    if not isinstance(tasks, Mapping):
        return {}
    out = {}
    for name, v in tasks.items():
        if isinstance(v, Mapping):
            v = v.get("value")
        if isinstance(v, (int, float)):
            out[str(name)] = float(v)
    return out


# Entry point.


@dataclasses.dataclass(frozen=True)
class Report:
    """Paths of the written report."""

    markdown: str
    html: str
    figures: tuple[str, ...]
    kind: str  # "run" or "compare"


def write_report(
    folder: str | os.PathLike, out: str | os.PathLike | None = None
) -> Report:
    """Writes ``report.md``, ``report.html`` and ``figures/`` for a folder.

    Args:
      folder: a run folder of ``tgjax train`` or an output folder of
        ``tgjax compare`` (recognised by the ``records`` list in its
        ``results.json``).
      out: where to write the report; ``folder`` by default.

    Returns:
      The paths written.

    Raises:
      FileNotFoundError: naming a missing file of the folder.
      ValueError: naming a broken file.
    """
    folder = os.fspath(folder)
    out = os.fspath(out) if out is not None else folder
    if is_compare_folder(folder):
        records, oracle = load_compare_folder(folder)
        kind = "compare"
    else:
        run = load_run_folder(folder)
        kind = "run"
    fig_dir = os.path.join(out, FIGURES)
    os.makedirs(fig_dir, exist_ok=True)
    if kind == "compare":
        summary = summarize_records(records)
        # Costs that do not depend on the order methods ran in: run seconds
        # without compilation, and steps; older folders only have wall time.
        costs = [
            c
            for c in ("run_seconds", "steps")
            if any(f"{c}_mean" in r for r in summary)
        ]
        if "run_seconds" not in costs and any(
            "wall_seconds_mean" in r for r in summary
        ):
            costs.insert(0, "wall_seconds")
        if not costs:
            raise ValueError(
                f"{os.path.join(folder, 'results.json')}: no record has "
                "'wall_seconds' or 'steps', so there is no cost to plot against. "
                "Rerun 'tgjax compare' with this version of tgjax."
            )
        name = "cost_quality.png"
        figures.plot_cost_quality(summary, os.path.join(fig_dir, name), costs)
        paths = {"cost": f"{FIGURES}/{name}"}
        blocks = _compare_blocks(folder, records, oracle, paths["cost"])
        title = "tgjax comparison report"
    else:
        paths = _run_figures(run, fig_dir)
        blocks = _run_blocks(run, paths)
        title = f"tgjax report: {run.config['data'].get('name', '')}"
    md_path = os.path.join(out, "report.md")
    html_path = os.path.join(out, "report.html")
    write_text(md_path, render_markdown(blocks))
    write_text(html_path, render_html(blocks, title))
    return Report(
        markdown=md_path,
        html=html_path,
        figures=tuple(os.path.join(out, p) for p in paths.values()),
        kind=kind,
    )
