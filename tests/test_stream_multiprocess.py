"""Two processes on loopback stream a search, each reading only its shard."""

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import stream_multiprocess_worker as worker  # noqa: E402
from two_processes import run_two  # noqa: E402


def test_two_processes_read_their_own_shards_and_cover_each_example_once(tmp_path):
    runs = run_two(str(pathlib.Path(worker.__file__)), tmp_path / "result.json")
    n, half = worker.N, worker.N // 2
    # Each process read only its own half of the records.
    assert set(runs[0]["read"]) <= set(range(half))
    assert set(runs[1]["read"]) <= set(range(half, n))
    # Together, every step's global batch covered each example once an epoch.
    steps = (half // (worker.BATCH // 2)) * worker.EPOCHS
    assert runs[0]["steps"] == runs[1]["steps"] == steps
    for run in runs:
        assert len(run["epochs"]) == worker.EPOCHS
        for counts in run["epochs"]:
            np.testing.assert_array_equal(counts, np.ones(n, np.int32))
    # The whole streamed run gives both processes the same result.
    for key in ("history", "assignment", "test_total_loss"):
        assert runs[0][key] == runs[1][key]
    assert len(runs[0]["history"]) > 0
