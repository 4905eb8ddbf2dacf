"""DMTG on Taskonomy's five dense tasks, small enough for a CPU.

Reads a Taskonomy copy in the omnidata layout
(``<data-dir>/<domain>/taskonomy/<building>/point_<p>_view_<v>_domain_<domain>.png``)
with the buildings of the "tiny" split (or your own), decodes the images at a
small resolution (64x64 by default), runs search -> groups -> prune ->
fine-tune with :func:`tgjax.dense.fit_dense` and prints the test metrics:

    python experiments/taskonomy_tiny.py --data-dir /data/omnidata \
        --max-per-split 64 --epochs 3

``--buildings '{"train": ["hanson"], "val": ["ihlen"], "test": ["uvalda"]}'``
uses other buildings; ``--out results.json`` saves groups and metrics.

The splits stream by default: images are decoded batch by batch while
training (``--workers N`` decodes in N processes), so the data never has to
fit in memory. ``--in-memory`` decodes every record first and trains on the
stacked arrays instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tgjax.data import taskonomy as tk
from tgjax.dense import DenseConfig, fit_dense


def load_split(split, args, buildings):
    """Decoded records of one split, at most ``--max-per-split``, evenly spaced."""
    source, ops = tk.taskonomy_source(
        split,
        args.data_dir,
        buildings=buildings,
        tasks=args.tasks,
        image_size=args.image_size,
    )
    picks = tk.evenly_spaced(len(source), args.max_per_split)
    return [ops[0].map(source[int(i)]) for i in picks]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the omnidata root folder")
    p.add_argument("--buildings", default="tiny", help='"tiny" or a JSON dict')
    p.add_argument(
        "--tasks",
        type=lambda s: tuple(t for t in s.split(",") if t),
        default=tk.TASKONOMY_TASKS,
        help="comma-separated Taskonomy tasks (default: all five)",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-per-split", type=int, default=64, help="0: no limit")
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tau", type=float, default=4.0)
    p.add_argument("--width", type=int, default=16, help="encoder base width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write groups and metrics to this JSON file")
    p.add_argument(
        "--in-memory",
        dest="stream",
        action="store_false",
        help="decode every record before training instead of streaming",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="decoding processes when streaming"
    )
    args = p.parse_args(argv)
    buildings = args.buildings
    if buildings != "tiny":
        buildings = json.loads(buildings)

    start = time.perf_counter()
    if args.stream:
        splits = tk.taskonomy_stream(
            args.data_dir,
            buildings=buildings,
            tasks=args.tasks,
            image_size=args.image_size,
            max_per_split=args.max_per_split,
        )
        how = "streamed"
    else:
        splits = {s: load_split(s, args, buildings) for s in ("train", "val", "test")}
        how = "in memory"
    load_s = time.perf_counter() - start
    sizes = {s: len(r) for s, r in splits.items()}
    print(
        f"records {sizes} at {args.image_size}x{args.image_size}, {how} "
        f"({load_s:.1f} s)"
    )
    w = args.width
    config = DenseConfig(
        tasks=tuple(args.tasks),
        groups=args.groups,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        batch_size=min(args.batch_size, sizes["train"]),
        learning_rate=args.lr,
        tau=args.tau,
        stem_width=w,
        encoder_widths=(w, 2 * w),
        decoder_widths=(2 * w, w),
        seed=args.seed,
    )

    def show(event, payload):
        if event == "epoch":
            print(
                f"{payload['phase']:8s} epoch {payload['epoch']}: train loss "
                f"{payload['train_loss']:.4f}, val total loss "
                f"{payload['val_total_loss']:.4f}",
                flush=True,
            )
        elif event == "groups":
            print(f"groups: {payload['groups']}", flush=True)

    result = fit_dense(
        splits["train"],
        splits["val"],
        splits["test"],
        config,
        callback=show,
        workers=args.workers,
    )
    print(f"test metrics (fine-tuning epoch kept: {result.finetune_selected_epoch}):")
    for name, m in result.test["tasks"].items():
        values = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("pixels",))
        print(f"  {name}: {values}")
    total = time.perf_counter() - start
    print(f"total test loss {result.test['total_loss']:.4f}; {total:.1f} s in all")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": vars(args) | {"tasks": list(args.tasks)},
                    "records": sizes,
                    "groups": result.groups,
                    "probabilities": np.asarray(result.probabilities).tolist(),
                    "test": result.test,
                    "val": result.val,
                    "history": result.history,
                    "seconds": total,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
