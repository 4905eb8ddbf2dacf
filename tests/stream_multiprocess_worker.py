"""One process of the two-process streaming test (see test_stream_multiprocess.py).

Usage: python stream_multiprocess_worker.py PROCESS_ID PORT OUT_JSON
"""

import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

N, BATCH, EPOCHS = 40, 8, 2


class LoggedRows:
    """Rows of an array that remember which ones were read."""

    def __init__(self, x):
        self.x = x
        self.read = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(int(i))
        return {"x": self.x[int(i)]}


def main():
    process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    from tgjax.distributed import initialize

    initialize(f"127.0.0.1:{port}", 2, process_id)
    import jax
    from counting_step import counting_search, per_epoch_counts

    import tgjax
    from tgjax.data.stream import StreamSplit, stream_from_memory
    from tgjax.distributed import make_mesh
    from tgjax.search import run_search_stream

    assert jax.process_count() == 2 and len(jax.devices()) == 4
    x = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    source = LoggedRows(x)
    split = StreamSplit(source, (), np.zeros((N, 1), np.float32))
    init, step, tau = counting_search(N)
    seen = []
    state, _ = run_search_stream(
        init,
        step,
        tau,
        split=split,
        seed=1,
        epochs=EPOCHS,
        batch_size=BATCH,
        mesh=make_mesh("data=2,groups=2"),
        epoch_end=lambda st, e, losses: seen.append(np.asarray(st.counts)),
    )

    # A whole streamed run on both processes.
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(200, 5)).astype(np.float32)
    ys = np.stack([xs[:, 0] > 0, xs[:, 1] > 0], 1).astype(np.float32)
    tasks = [tgjax.Task(n, "binary") for n in "ab"]
    data = tgjax.data.from_arrays("arrays", tasks, xs, ys)
    config = tgjax.RunConfig(
        groups=2,
        epochs=2,
        finetune_epochs=1,
        batch_size=16,
        hidden=(8,),
        mesh="data=2,groups=2",
        stream=True,
    )
    result = tgjax.fit(stream_from_memory(data), config)
    with open(f"{out}.{process_id}", "w") as f:
        json.dump(
            {
                "read": source.read,
                "steps": int(state.step),
                "epochs": [c.tolist() for c in per_epoch_counts(seen)],
                "history": [h["loss"] for h in result.history],
                "assignment": np.asarray(result.search_state.assignment).tolist(),
                "test_total_loss": result.test["total_loss"],
            },
            f,
        )


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    main()
