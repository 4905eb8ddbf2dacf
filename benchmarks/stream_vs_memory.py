"""Steps per second of the streamed search against the in-memory search.

Usage: ``python benchmarks/stream_vs_memory.py [--examples 50000] [--epochs 3]
[--batch-size 256] [--workers 0] [--rounds 3]``

Runs the same search (Fashion-MNIST's 10 one-vs-rest tasks, K = 4 MLP
branches of width 64) twice in one process: once on the training split held
on the devices (:func:`tgjax.search.run_search`, compiled ``lax.scan``
chunks), once reading batches through the grain pipeline
(:func:`tgjax.search.run_search_stream`: one jitted step per batch, the
reading, decoding and placing of the next batches in a background thread).
Epoch 0 (compilation) is not timed; the rates are over the later epochs.
The two alternate for ``--rounds`` rounds, so that a change in the
machine's load hits both, and the medians are printed.
It prints both rates, their ratio, the fraction of the streamed loop's time
spent blocked waiting for the next batch, and the loader's own rate (one
epoch of batches read and decoded, no training). About a minute on a 2-core
CPU.

The waiting fraction counts the time the loop could not dispatch a step
because the next batch was not ready; with JAX's asynchronous dispatch the
devices may still be busy with earlier steps then, so it bounds the share of
time lost to the loader from above.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tgjax.config import RunConfig
from tgjax.data.pipeline import fashion_mnist_stream
from tgjax.data.stream import StreamSplit, step_batches
from tgjax.distributed import make_mesh
from tgjax.pipeline import build_model
from tgjax.relax import temperature_schedule
from tgjax.search import run_search, run_search_stream
from tgjax.train import init_state, make_optimizer, make_train_step


def _setup(data, config):
    model = build_model(config, data.tasks, config.groups)
    opt = make_optimizer(config.learning_rate, assignment_learning_rate=0.03)
    mesh = make_mesh(None)
    step = make_train_step(model, data.tasks, opt, sample_shards=mesh.shape["data"])
    x_example = data.train.read([0, 1])["x"]

    def init():
        return init_state(model, opt, jax.random.key(0), jnp.asarray(x_example))

    return init, step.core, temperature_schedule("constant", 2.5), mesh


def _rate(marks, steps_per_epoch):
    """Steps per second between the end of epoch 0 and the last epoch's end."""
    seconds = marks[-1] - marks[0]
    return (len(marks) - 1) * steps_per_epoch / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epoch 0 is not timed)")

    data = fashion_mnist_stream()
    rows = np.arange(args.examples)
    train = data.train
    # The first --examples training images, streamed and in memory.
    sub = StreamSplit(_Subset(train.source, rows), train.operations, train.labels[rows])
    x = sub.read(rows)["x"]
    y = sub.labels
    config = RunConfig(groups=4, hidden=(64,), batch_size=args.batch_size)
    init, step, tau, mesh = _setup(data, config)
    steps_per_epoch = args.examples // args.batch_size
    common = dict(
        seed=0, epochs=args.epochs, batch_size=args.batch_size, mesh=mesh, log_every=50
    )

    def measure():
        marks = []
        run_search(
            init,
            step,
            tau,
            x=x,
            y=y,
            epoch_end=lambda *_: marks.append(time.perf_counter()),
            **common,
        )
        memory, _ = _rate(marks, steps_per_epoch)

        marks, waits, stats = [], [], {}

        def mark(*_):
            marks.append(time.perf_counter())
            waits.append(stats["wait_seconds"])

        run_search_stream(
            init,
            step,
            tau,
            split=sub,
            workers=args.workers,
            epoch_end=mark,
            stats=stats,
            **common,
        )
        streamed, streamed_s = _rate(marks, steps_per_epoch)
        waited = (waits[-1] - waits[0]) / streamed_s

        # The loader alone: one epoch of batches read, decoded and dropped.
        start = time.perf_counter()
        for _ in step_batches(
            sub,
            seed=0,
            batch_size=args.batch_size,
            start=0,
            stop=steps_per_epoch,
            workers=args.workers,
        ):
            pass
        loader = steps_per_epoch / (time.perf_counter() - start)
        return memory, streamed, waited, loader

    rounds = [measure() for _ in range(args.rounds)]
    memory, streamed, waited, loader = (
        float(np.median(v)) for v in zip(*rounds, strict=True)
    )
    ratio = float(np.median([r[1] / r[0] for r in rounds]))

    print(
        f"fashion-mnist, {args.examples} examples, batch {args.batch_size}, "
        f"{steps_per_epoch} steps/epoch, timed epochs 1-{args.epochs - 1}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), "
        f"workers={args.workers}, median of {args.rounds} rounds"
    )
    for i, (m, st, w, ld) in enumerate(rounds):
        print(
            f"  round {i}: in memory {m:.1f}, streamed {st:.1f} steps/s "
            f"({st / m:.2f}), waiting {100 * w:.1f}%, loader {ld:.0f} batches/s"
        )
    print(f"in memory: {memory:8.1f} steps/s")
    print(f"streamed:  {streamed:8.1f} steps/s")
    print(f"streamed / in memory: {ratio:.2f}")
    print(f"streamed loop waiting on the loader: {100 * waited:.1f}% of its time")
    print(f"loader alone: {loader:8.1f} batches/s")


class _Subset:
    """The records ``rows`` of a source."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.source[int(self.rows[int(i)])]

    def read_rows(self, keys):
        return self.source.read_rows(self.rows[keys])


if __name__ == "__main__":
    main()
