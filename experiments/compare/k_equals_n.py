"""K = N on yeast: how many groups stay non-empty, and dmtg against stl.

Runs ``tgjax.fit`` with K = N groups (dmtg) and with the STL baseline (the
identity assignment, frozen) on the same seeds and budget (the same search
and fine-tuning epochs), and writes one record per seed plus paired
differences of the validation and test totals.

    PYTHONPATH=. python experiments/compare/k_equals_n.py --seeds 5 \
        --out experiments/compare/yeast14-kn
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import tgjax
from tgjax.data import load_dataset


def _paired(a, b) -> dict:
    d = np.asarray(a) - np.asarray(b)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "se": se, "wins": int((d < 0).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--assignment-lr", type=float, default=0.01)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    data = load_dataset("yeast")
    n = len(data.task_names)
    records = []
    for seed in range(args.seeds):
        for method, extra in (("dmtg", {"groups": n}), ("stl", {"baseline": "stl"})):
            cfg = tgjax.RunConfig(
                epochs=args.epochs,
                finetune_epochs=args.finetune_epochs,
                assignment_learning_rate=args.assignment_lr,
                hidden=(64,),
                seed=seed,
                **extra,
            )
            res = tgjax.fit(data, cfg)
            probs = np.asarray(res.probabilities)
            rec = {
                "method": method,
                "seed": seed,
                "non_empty_groups": len(res.groups),
                "groups": res.groups,
                "assignment_confidence": float(probs.max(1).min()),
                "val_total": float(res.val["total_loss"]),
                "test_total": float(res.test["total_loss"]),
            }
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "groups"}))
    dm = [r for r in records if r["method"] == "dmtg"]
    st = [r for r in records if r["method"] == "stl"]
    counts = [r["non_empty_groups"] for r in dm]
    summary = {
        "tasks": n,
        "groups": n,
        "seeds": args.seeds,
        "non_empty_groups": {
            "per_seed": counts,
            "mean": float(np.mean(counts)),
            "min": int(min(counts)),
            "max": int(max(counts)),
        },
        "dmtg_minus_stl_val": _paired(
            [r["val_total"] for r in dm], [r["val_total"] for r in st]
        ),
        "dmtg_minus_stl_test": _paired(
            [r["test_total"] for r in dm], [r["test_total"] for r in st]
        ),
        "settings": vars(args),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"records": records, "summary": summary}, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
