"""A real two-process run on loopback gives the numbers of one process."""

import pathlib
import sys

import numpy as np

import tgjax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import multiprocess_worker as worker  # noqa: E402
from two_processes import run_two  # noqa: E402


def test_two_processes_with_two_devices_each_match_one_process(tmp_path):
    runs = run_two(str(pathlib.Path(worker.__file__)), tmp_path / "result.json")
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
