"""Two processes on loopback stream a search, each reading only its shard."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import stream_multiprocess_worker as worker  # noqa: E402
from test_multiprocess import _free_port  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_two_processes_read_their_own_shards_and_cover_each_example_once(tmp_path):
    out = tmp_path / "result.json"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = str(pathlib.Path(worker.__file__))
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=540)[0].decode()[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    runs = [json.loads(pathlib.Path(f"{out}.{i}").read_text()) for i in range(2)]
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
