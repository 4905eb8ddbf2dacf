"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow).

:class:`TensorBoardLog` is a ``fit`` callback. It mirrors the pipeline's
events into scalars, an image of the assignment matrix per search epoch and a
text summary of the groups:

- ``search/loss``, ``search/tau``, ``search/learning_rate``,
  ``search/assignment_learning_rate`` per logged step;
- ``task_loss/<task>``: the task's loss on the group it is assigned to at that
  step (the argmax of its assignment probabilities);
- ``group_loss/group_<k>``: group k's share of the training loss,
  ``sum_i p_ik L_ik`` with the assignment probabilities p;
- ``assignment/entropy``: mean over tasks of the entropy (nats) of the
  assignment probabilities, 0 when every task has settled on one group;
- ``<phase>/train_loss``, ``<phase>/val_total_loss``,
  ``<phase>/non_empty_groups`` per epoch, for the search and fine-tuning;
- image ``assignment/probabilities`` and text ``groups``.

Fine-tuning steps continue the step count of the search, so both phases share
one x axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

INSTALL_HINT = (
    "TensorBoard logging needs the tensorboardX package; install it with "
    "pip install 'tgjax[tensorboard]' (in a source checkout: pip install "
    "'.[tensorboard]') or drop --tensorboard."
)


def require_tensorboardx() -> None:
    """Raises the install hint when tensorboardX is missing; writes nothing."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None


def assignment_entropy(probabilities: np.ndarray) -> float:
    """Mean entropy, in nats, of each task's assignment distribution.

    Args:
      probabilities: `[tasks, groups]` rows that sum to one.

    Returns:
      A float in ``[0, log(groups)]``.

    Example:
      >>> assignment_entropy(np.array([[1.0, 0.0], [0.5, 0.5]]))  # doctest: +ELLIPSIS
      0.346...
    """
    p = np.asarray(probabilities, dtype=np.float64)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    # + 0.0 turns the -0.0 of one-hot rows (-1 * log 1) into 0.0.
    return float(terms.sum(axis=-1).mean()) + 0.0


def assignment_image(
    probabilities: np.ndarray, task_names: Sequence[str], title: str
) -> np.ndarray:
    """Renders `[tasks, groups]` probabilities as an RGB heatmap.

    Returns:
      A `[height, width, 3]` uint8 array.
    """
    from tgjax.figures import assignment_heatmap, figure_to_array, pyplot

    plt = pyplot()
    fig = assignment_heatmap(probabilities, task_names, title=title)
    image = figure_to_array(fig)
    plt.close(fig)
    return image


class TensorBoardLog:
    """A ``fit`` callback writing TensorBoard event files.

    Args:
      logdir: folder of the event files (created if missing).
      task_names: names of the tasks, in the order of the loss matrix rows.
      images: whether to draw the assignment matrix after each search epoch.

    Raises:
      ImportError: when tensorboardX is not installed.
    """

    def __init__(
        self, logdir: str | os.PathLike, task_names: Sequence[str], images: bool = True
    ):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self.writer = SummaryWriter(logdir=os.fspath(logdir), flush_secs=30)
        self.task_names = list(task_names)
        self.images = images
        self._phase = "search"
        self._offset = 0
        self._next_offset = 0
        self._steps_per_epoch = 1
        self._last = None

    def __call__(self, event: str, payload: dict) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(payload)

    def _on_start(self, payload: dict) -> None:
        self._phase = payload["phase"]
        self._offset = self._next_offset
        self._steps_per_epoch = payload["steps_per_epoch"]
        self._next_offset += payload["epochs"] * payload["steps_per_epoch"]

    def _on_log(self, payload: dict) -> None:
        w, step = self.writer, self._offset + payload["step"]
        w.add_scalar("search/loss", payload["loss"], step)
        w.add_scalar("search/tau", payload["tau"], step)
        w.add_scalar("search/learning_rate", payload["learning_rate"], step)
        if "assignment_learning_rate" in payload:
            w.add_scalar(
                "search/assignment_learning_rate",
                payload["assignment_learning_rate"],
                step,
            )
        probs = np.asarray(payload["probabilities"], dtype=np.float64)
        losses = np.asarray(payload["loss_matrix"], dtype=np.float64)
        w.add_scalar("assignment/entropy", assignment_entropy(probs), step)
        selected = probs.argmax(axis=1)
        for i, name in enumerate(self.task_names):
            w.add_scalar(f"task_loss/{name}", losses[i, selected[i]], step)
        for k, share in enumerate((probs * losses).sum(axis=0)):
            w.add_scalar(f"group_loss/group_{k}", share, step)
        self._last = (step, probs)

    def _on_epoch(self, payload: dict) -> None:
        phase, epoch = payload["phase"], payload["epoch"]
        step = self._offset + (epoch + 1) * self._steps_per_epoch - 1
        w = self.writer
        w.add_scalar(f"{phase}/train_loss", payload["train_loss"], step)
        w.add_scalar(f"{phase}/val_total_loss", payload["val_total_loss"], step)
        w.add_scalar(f"{phase}/non_empty_groups", payload["non_empty_groups"], step)
        if self.images and phase == "search" and self._last is not None:
            log_step, probs = self._last
            image = assignment_image(
                probs, self.task_names, f"step {log_step} (epoch {epoch})"
            )
            w.add_image("assignment/probabilities", image, log_step, dataformats="HWC")

    def _on_groups(self, payload: dict) -> None:
        lines = [
            f"- group {i}: {', '.join(g)}" for i, g in enumerate(payload["groups"])
        ]
        self.writer.add_text("groups", "\n".join(lines), self._next_offset)

    def _on_done(self, payload: dict) -> None:
        test = payload.get("test", {})
        for key in ("total_loss", "total_error_percent", "total_mae"):
            if key in test:
                self.writer.add_scalar(f"test/{key}", test[key], self._next_offset)
        self.writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self.writer.close()
