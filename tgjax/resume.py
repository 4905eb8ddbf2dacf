"""Continuing a run folder's metrics log after a resume.

A resumed search restarts at its newest readable checkpoint, which may be
older than the last lines of ``metrics.jsonl``. :class:`ResumableLog` cuts
the log back to the lines that precede that checkpoint before new lines are
appended, so the log holds every logged step exactly once.
"""

from __future__ import annotations

import json
import os

from tgjax.runio import JsonLines, read_jsonl, write_text


def keep_before(record: dict, step: int, steps_per_epoch: int) -> bool:
    """Whether a log line was written before search step ``step`` was reached.

    Search step lines count when their step precedes ``step``, search epoch
    lines when their epoch ended by then; lines of the later stages (groups,
    fine-tuning, baselines) are always written again and so never kept.
    """
    if record.get("phase") != "search":
        return False
    if record.get("event") == "epoch":
        return (int(record["epoch"]) + 1) * steps_per_epoch <= step
    return "step" in record and int(record["step"]) < step


class ResumableLog:
    """The JSON-lines metrics log of a run that can be rewound to a step.

    Args:
      path: the log file; appended to (created if missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._log = JsonLines(self.path, "a")

    def write(self, record: dict) -> None:
        self._log.write(record)

    def rewind(self, step: int, steps_per_epoch: int) -> int:
        """Drops the lines written at or after search step ``step``.

        Returns:
          The number of lines dropped.
        """
        self._log.close()
        records = read_jsonl(self.path) if os.path.exists(self.path) else []
        kept = [r for r in records if keep_before(r, step, steps_per_epoch)]
        write_text(
            self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        )
        self._log = JsonLines(self.path, "a")
        return len(records) - len(kept)

    def close(self) -> None:
        self._log.close()
