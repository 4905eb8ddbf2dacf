"""Figures of a grouping run (matplotlib, written to files)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _pyplot():
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
    plt = _pyplot()
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
