"""The README's yeast table: DMTG against MTL and STL over several seeds.

Runs the default `tgjax train` settings for each method and seed and prints
a markdown table of test totals (mean and standard deviation over seeds).

    python experiments/readme_yeast.py --seeds 5
"""

import argparse
import dataclasses
import time

import numpy as np

import tgjax
from tgjax.data import load_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    data = load_dataset("yeast")
    rows = {}
    for method in ("dmtg", "mtl", "stl"):
        base = tgjax.RunConfig(baseline=None if method == "dmtg" else method)
        errs, losses, groups, secs = [], [], [], []
        for seed in range(args.seeds):
            start = time.time()
            res = tgjax.fit(data, dataclasses.replace(base, seed=seed))
            secs.append(time.time() - start)
            errs.append(res.test["total_error_percent"])
            losses.append(res.test["total_loss"])
            groups.append(len(res.groups))
        rows[method] = (errs, losses, groups, secs)

    print("| method | groups found | test total error (%) | test total loss | s/run |")
    print("|---|---|---|---|---|")
    for method, (errs, losses, groups, secs) in rows.items():
        print(
            f"| {method} | {min(groups)}-{max(groups)} | "
            f"{np.mean(errs):.1f} ± {np.std(errs, ddof=1):.1f} | "
            f"{np.mean(losses):.3f} ± {np.std(losses, ddof=1):.3f} | "
            f"{np.mean(secs):.0f} |"
        )


if __name__ == "__main__":
    main()
