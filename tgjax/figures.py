"""Figures of the report: heatmaps, animations and curves (matplotlib, Pillow).

Every figure names the tasks on its axes and carries a colour bar or legend,
so it reads without the text around it. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

CMAP = "viridis"


def pyplot():
    """Returns ``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Saves a figure atomically (temporary file, then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def figure_to_array(fig) -> np.ndarray:
    """Draws a figure and returns its pixels as a `[height, width, 3]` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _heatmap_size(n_tasks: int, n_groups: int) -> tuple[float, float]:
    return (1.9 + 0.55 * n_groups + 1.0, 0.9 + 0.28 * n_tasks)


def colour_limits(probabilities: np.ndarray) -> tuple[float, float]:
    """Colour range of a heatmap: the data's own range, shared by all panels.

    Early in a search the probabilities sit near 1/groups; a fixed [0, 1] scale
    would show a flat colour, so the scale follows the data and the colour bar
    states it.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    lo, hi = float(p.min()), float(p.max())
    if hi - lo < 1e-6:
        lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    return lo, hi


def _draw_heatmap(ax, probs, task_names, *, labels=True, annotate=False, limits=None):
    n_tasks, n_groups = probs.shape
    lo, hi = limits if limits is not None else colour_limits(probs)
    im = ax.imshow(probs, vmin=lo, vmax=hi, cmap=CMAP, aspect="auto")
    ax.set_xticks(range(n_groups))
    ax.set_xticklabels([str(g) for g in range(n_groups)], fontsize=8)
    ax.set_yticks(range(n_tasks))
    ax.set_yticklabels(task_names if labels else [], fontsize=8)
    if annotate:
        for i in range(n_tasks):
            for g in range(n_groups):
                v = probs[i, g]
                ax.text(
                    g,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if v > lo + 0.6 * (hi - lo) else "white",
                )
    return im


def assignment_heatmap(
    probabilities: np.ndarray,
    task_names: Sequence[str],
    *,
    title: str = "",
    assignment: Sequence[int] | None = None,
):
    """One `[tasks, groups]` heatmap with task names, values and a colour bar.

    Args:
      probabilities: `[tasks, groups]` assignment probabilities.
      task_names: names of the tasks (rows).
      title: title of the figure.
      assignment: `[tasks]` selected groups to outline, if given.

    Returns:
      The matplotlib figure; the caller closes it.
    """
    plt = pyplot()
    probs = np.asarray(probabilities, dtype=np.float64)
    fig, ax = plt.subplots(figsize=_heatmap_size(*probs.shape))
    im = _draw_heatmap(ax, probs, task_names, annotate=True)
    if assignment is not None:
        for i, g in enumerate(assignment):
            ax.add_patch(
                plt.Rectangle(
                    (g - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.6
                )
            )
    ax.set_xlabel("group")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="P(group)", fraction=0.08, pad=0.03)
    fig.tight_layout()
    return fig


def plot_groups(
    probabilities: np.ndarray,
    task_names: Sequence[str],
    assignment: Sequence[int],
    path: str | os.PathLike,
) -> None:
    """The final groups: assignment probabilities with the selected cells outlined.

    Args:
      probabilities: `[tasks, groups]` softmax(S) at the end of the search.
      task_names: names of the tasks.
      assignment: `[tasks]` selected group of each task.
      path: PNG file to write.
    """
    plt = pyplot()
    fig = assignment_heatmap(
        probabilities,
        task_names,
        title="final assignment (red: selected group)",
        assignment=assignment,
    )
    save_figure(fig, path)
    plt.close(fig)


def snapshot_indices(count: int, snapshots: int) -> list[int]:
    """Evenly spaced indices into ``count`` items, first and last included."""
    if count <= 0:
        return []
    snapshots = max(1, min(snapshots, count))
    if snapshots == 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (snapshots - 1)) for i in range(snapshots)})


def plot_assignment_grid(
    steps: Sequence[int],
    probabilities: np.ndarray,
    task_names: Sequence[str],
    path: str | os.PathLike,
    snapshots: int = 8,
) -> None:
    """Snapshots of the assignment probabilities over training as heatmaps.

    Args:
      steps: `[logged]` step numbers.
      probabilities: `[logged, tasks, groups]` probabilities at those steps.
      task_names: names of the tasks.
      path: PNG file to write.
      snapshots: number of panels, evenly spaced, first and last included.
    """
    plt = pyplot()
    probs = np.asarray(probabilities, dtype=np.float64)
    picks = snapshot_indices(len(steps), snapshots)
    cols = min(4, len(picks))
    rows = -(-len(picks) // cols)
    n_tasks, n_groups = probs.shape[1:]
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.8 + cols * (0.9 + 0.35 * n_groups), rows * (0.9 + 0.25 * n_tasks)),
        squeeze=False,
        layout="constrained",
    )
    im = None
    limits = colour_limits(probs[picks])
    for j, ax in enumerate(axes.flat):
        if j >= len(picks):
            ax.axis("off")
            continue
        im = _draw_heatmap(
            ax, probs[picks[j]], task_names, labels=j % cols == 0, limits=limits
        )
        ax.set_title(f"step {steps[picks[j]]}", fontsize=9)
        if j // cols == rows - 1:
            ax.set_xlabel("group", fontsize=8)
    fig.colorbar(im, ax=axes, label="P(group)", fraction=0.03)
    save_figure(fig, path)
    plt.close(fig)


def write_assignment_gif(
    steps: Sequence[int],
    probabilities: np.ndarray,
    task_names: Sequence[str],
    path: str | os.PathLike,
    frames: int = 40,
    frame_ms: int = 120,
    hold_ms: int = 1500,
) -> int:
    """An animated GIF of the assignment probabilities over training.

    Args:
      steps: `[logged]` step numbers.
      probabilities: `[logged, tasks, groups]` probabilities at those steps.
      task_names: names of the tasks.
      path: GIF file to write.
      frames: at most this many frames, evenly spaced over the logged steps.
      frame_ms: display time of a frame.
      hold_ms: display time of the last frame, before the loop restarts.

    Returns:
      The number of frames written.
    """
    from PIL import Image

    plt = pyplot()
    probs = np.asarray(probabilities, dtype=np.float64)
    picks = snapshot_indices(len(steps), frames)
    fig, ax = plt.subplots(figsize=_heatmap_size(*probs.shape[1:]))
    im = _draw_heatmap(
        ax, probs[picks[0]], task_names, limits=colour_limits(probs[picks])
    )
    ax.set_xlabel("group")
    fig.colorbar(im, ax=ax, label="P(group)", fraction=0.08, pad=0.03)
    title = ax.set_title("", fontsize=9)
    fig.tight_layout()
    images = []
    for j in picks:
        im.set_data(probs[j])
        title.set_text(f"step {steps[j]}")
        images.append(Image.fromarray(figure_to_array(fig)))
    plt.close(fig)
    # One shared palette keeps the colours steady across frames.
    palette = images[-1].quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    quantized = [
        img.quantize(palette=palette, dither=Image.Dither.NONE) for img in images
    ]
    durations = [frame_ms] * (len(quantized) - 1) + [hold_ms]
    path = os.fspath(path)
    tmp = f"{path}.tmp.gif"
    quantized[0].save(
        tmp,
        save_all=True,
        append_images=quantized[1:],
        duration=durations,
        loop=0,
        optimize=False,
    )
    os.replace(tmp, path)
    return len(quantized)


def plot_task_losses(
    steps: Sequence[int],
    loss_matrices: np.ndarray,
    task_names: Sequence[str],
    assignment: Sequence[int],
    path: str | os.PathLike,
) -> None:
    """Per-task training loss during the search, one panel per task.

    The solid line is the task's loss on its selected (final) group; thin grey
    lines are its losses on the other groups.

    Args:
      steps: `[logged]` step numbers.
      loss_matrices: `[logged, tasks, groups]` logged loss matrices.
      task_names: names of the tasks.
      assignment: `[tasks]` final group of each task.
      path: PNG file to write.
    """
    plt = pyplot()
    losses = np.asarray(loss_matrices, dtype=np.float64)
    n_tasks, n_groups = losses.shape[1:]
    cols = min(4, n_tasks)
    rows = -(-n_tasks // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 2.0 * rows), sharex=True, squeeze=False
    )
    colors = plt.get_cmap("tab10")
    for i, ax in enumerate(axes.flat):
        if i >= n_tasks:
            ax.axis("off")
            continue
        g_sel = int(assignment[i])
        for g in range(n_groups):
            if g != g_sel:
                ax.plot(steps, losses[:, i, g], color="0.7", lw=0.7)
        ax.plot(
            steps,
            losses[:, i, g_sel],
            color=colors(g_sel % 10),
            lw=1.5,
            label=f"group {g_sel}",
        )
        ax.set_title(f"{task_names[i]} (group {g_sel})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for row in axes:
        row[0].set_ylabel("loss", fontsize=8)
    fig.suptitle(
        "training loss per task on its selected group (grey: other groups)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_training_curves(epochs: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Train and validation loss, tau and non-empty groups per epoch.

    Args:
      epochs: the ``{"event": "epoch", ...}`` records of ``metrics.jsonl``,
        search first, then fine-tuning.
      path: PNG file to write.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.0))
    x = np.arange(1, len(epochs) + 1)
    phases = [e.get("phase", "search") for e in epochs]
    ax = axes[0]
    ax.plot(x, [e["train_loss"] for e in epochs], "o-", ms=3, label="train")
    ax.plot(x, [e["val_total_loss"] for e in epochs], "s-", ms=3, label="validation")
    ax.set_ylabel("total loss")
    ax.set_title("loss per epoch", fontsize=9)
    tau = [(xi, e["tau"]) for xi, e in zip(x, epochs, strict=True) if "tau" in e]
    if tau:
        axes[1].plot(*zip(*tau, strict=True), "o-", ms=3, color="tab:purple")
    axes[1].set_ylabel("tau")
    axes[1].set_title("temperature", fontsize=9)
    axes[2].step(x, [e["non_empty_groups"] for e in epochs], where="mid")
    axes[2].set_ylabel("groups")
    axes[2].set_title("non-empty groups", fontsize=9)
    if "finetune" in phases:
        start = phases.index("finetune") + 0.5
        for a in axes:
            a.axvline(start, color="0.5", ls="--", lw=0.8)
        axes[0].text(start, axes[0].get_ylim()[1], " fine-tune", va="top", fontsize=8)
    axes[0].legend(fontsize=8)
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_cost_quality(
    summary: Sequence[Mapping], path: str | os.PathLike, costs: Sequence[str]
) -> None:
    """Quality against cost, one marker per method with error bars over seeds.

    Args:
      summary: one mapping per method with ``method`` and, for each of
        ``val_total``, ``test_total`` and each cost, ``<key>_mean`` and
        ``<key>_std``.
      path: PNG file to write.
      costs: cost keys for the x axes, e.g. ``("run_seconds", "steps")``.
    """
    plt = pyplot()
    labels = {
        "wall_seconds": "wall time, compilation included (s)",
        "run_seconds": "run time without compilation (s)",
        "steps": "training steps",
        "val_total": "validation total",
        "test_total": "test total",
    }
    fig, axes = plt.subplots(
        len(costs), 2, figsize=(9.5, 3.4 * len(costs)), squeeze=False
    )
    markers = "osD^v<>pPX*h"
    colors = pyplot().get_cmap("tab10")
    for r, cost in enumerate(costs):
        for c, quality in enumerate(("val_total", "test_total")):
            ax = axes[r][c]
            for m, row in enumerate(summary):
                xm, ym = row.get(f"{cost}_mean"), row.get(f"{quality}_mean")
                if xm is None or ym is None:
                    continue
                ax.errorbar(
                    xm,
                    ym,
                    xerr=row.get(f"{cost}_std") or 0.0,
                    yerr=row.get(f"{quality}_std") or 0.0,
                    fmt=markers[m % len(markers)],
                    color=colors(m % 10),
                    ms=7,
                    capsize=3,
                    label=f"{row['method']} (n={row['seeds']})",
                )
            ax.set_xlabel(labels.get(cost, cost))
            ax.set_ylabel(labels[quality] + " (lower is better)")
            ax.grid(alpha=0.3)
            if cost in ("wall_seconds", "run_seconds"):
                ax.set_xscale("log")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="upper center",
        ncol=min(4, max(1, len(names))),
        frameon=False,
        fontsize=8,
    )
    fig.suptitle("quality against cost (mean and std over seeds)", y=0.995, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9 if len(costs) == 1 else 0.94))
    save_figure(fig, path)
    plt.close(fig)


def plot_assignment_history(
    steps: Sequence[int],
    probabilities: np.ndarray,
    task_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """Assignment probabilities over training, one panel per task.

    Args:
      steps: `[logged]` step numbers.
      probabilities: `[logged, tasks, groups]` softmax(S) at those steps.
      task_names: names of the tasks.
      path: PNG file to write.
    """
    plt = pyplot()
    probs = np.asarray(probabilities)
    n_tasks, n_groups = probs.shape[1], probs.shape[2]
    cols = min(4, n_tasks)
    rows = -(-n_tasks // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.2 * cols, 2.2 * rows),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    colors = plt.get_cmap("tab10" if n_groups <= 10 else "tab20")
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= n_tasks:
            ax.axis("off")
            continue
        for g in range(n_groups):
            ax.plot(
                steps, probs[:, i, g], color=colors(g % colors.N), label=f"group {g}"
            )
        ax.set_title(task_names[i], fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("P(group)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", ncol=min(n_groups, 8), frameon=False
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save_figure(fig, path)
    plt.close(fig)
