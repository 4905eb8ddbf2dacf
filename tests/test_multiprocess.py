"""A real two-process run on loopback gives the numbers of one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

import tgjax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import multiprocess_worker as worker  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_two_devices_each_match_one_process(tmp_path):
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
    assert runs[0] == runs[1]  # both processes hold the same result

    x, y, tasks = worker.problem()
    one = worker.summary(
        tgjax.fit_arrays(x, y, tasks, tgjax.RunConfig(mesh="data=1", **worker.CONFIG))
    )
    got = runs[0]
    assert len(got["loss"]) == 2 * (120 // 16)  # 120 training rows
    np.testing.assert_allclose(got["loss"], one["loss"], atol=1e-5)
    assert got["tau"] == one["tau"]
    np.testing.assert_allclose(got["assignment"], one["assignment"], atol=1e-5)
    assert got["groups"] == one["groups"]
    np.testing.assert_allclose(
        got["test_total_loss"], one["test_total_loss"], atol=1e-4
    )
