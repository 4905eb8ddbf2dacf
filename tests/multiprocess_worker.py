"""One process of the two-process test run (see test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT OUT_JSON
"""

import json
import os
import sys

import numpy as np

import tgjax
from tgjax.distributed import initialize

CONFIG = dict(
    groups=4,
    epochs=2,
    finetune_epochs=1,
    batch_size=16,
    hidden=(8,),
    log_every=1,
    assignment_learning_rate=5e-2,
    # Tied branches give equal loss columns, so S's gradient would be rounding
    # noise that Adam scales up; independent ones give S a real signal.
    init="independent",
)


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 0] + x[:, 2] > 0], 1)
    tasks = [tgjax.Task(n, "binary") for n in "abc"]
    return x, y.astype(np.float32), tasks


def summary(result):
    return {
        "loss": [h["loss"] for h in result.history],
        "tau": [h["tau"] for h in result.history],
        "assignment": np.asarray(result.search_state.assignment).tolist(),
        "groups": [int(g) for g in result.assignment],
        "test_total_loss": result.test["total_loss"],
    }


def main():
    process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    initialize(f"127.0.0.1:{port}", 2, process_id)
    import jax

    assert jax.process_count() == 2 and len(jax.devices()) == 4
    x, y, tasks = problem()
    config = tgjax.RunConfig(mesh="data=2,groups=2", **CONFIG)
    result = tgjax.fit_arrays(x, y, tasks, config)
    with open(f"{out}.{process_id}", "w") as f:
        json.dump(summary(result), f)


if __name__ == "__main__":
    # Read when JAX first starts its backend, so before any device is used;
    # set only here, as the test imports this module for its settings.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    main()
