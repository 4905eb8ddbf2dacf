"""Statistics for comparing groupings under seed noise.

Grouping effects are often smaller than the spread between seeds, so every
claim about a grouping is made against a noise band: the groupings whose
mean validation total is within two standard errors of the best one.
"""

from __future__ import annotations

import math

import numpy as np


def rankdata(values) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank.

    Example:
      >>> rankdata([3.0, 1.0, 3.0]).tolist()
      [2.5, 1.0, 2.5]
    """
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long vectors (NaN if constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb) / denom) if denom > 0 else float("nan")


def seed_rank_correlation(values) -> dict:
    """Spearman correlation between the rankings of every pair of seeds.

    Args:
      values: `[groupings, seeds]` validation totals.

    Returns:
      ``{"mean", "min", "max", "pairs"}`` over all seed pairs (NaN entries
      when fewer than two seeds).
    """
    v = np.asarray(values, np.float64)
    rho = [
        spearman(v[:, s], v[:, t])
        for s in range(v.shape[1])
        for t in range(s + 1, v.shape[1])
    ]
    if not rho:
        return {"mean": None, "min": None, "max": None, "pairs": 0}
    return {
        "mean": float(np.mean(rho)),
        "min": float(np.min(rho)),
        "max": float(np.max(rho)),
        "pairs": len(rho),
    }


def noise_band(values, *, paired: bool = True, width: float = 2.0) -> dict:
    """Groupings indistinguishable from the best at ``width`` standard errors.

    The best grouping is the one with the lowest mean over seeds. Grouping p
    is inside the band when ``mean_p - mean_best <= width * se``, where ``se``
    is the standard error of the difference: with ``paired`` (the default,
    right when every grouping of a seed shares that seed's initialisation
    and data order) the standard error of the per-seed differences
    ``v_p,s - v_best,s``; otherwise ``sqrt(se_p^2 + se_best^2)`` from the
    two groupings' own standard deviations. Standard deviations use ddof=1.

    Args:
      values: `[groupings, seeds]` validation totals, seeds >= 2.
      paired: use per-seed differences.
      width: number of standard errors.

    Returns:
      ``{"best": index, "inside": bool [groupings], "count": int,
      "se": [groupings] standard errors of the difference}``.

    Raises:
      ValueError: with fewer than two seeds.
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(
            f"values must be [groupings, seeds] with >= 2 seeds, got {v.shape}."
        )
    n = v.shape[1]
    mean = v.mean(1)
    best = int(np.argmin(mean))
    if paired:
        diff = v - v[best]
        se = diff.std(1, ddof=1) / math.sqrt(n)
    else:
        se_each = v.std(1, ddof=1) / math.sqrt(n)
        se = np.sqrt(se_each**2 + se_each[best] ** 2)
    inside = (mean - mean[best]) <= width * se
    return {"best": best, "inside": inside, "count": int(inside.sum()), "se": se}


def rank_of(score: float, scores) -> tuple[int, float]:
    """Rank (1 = lowest) and percentile of ``score`` among ``scores``.

    The rank counts the scores strictly lower, plus one. The percentile is the
    share of groupings at least as bad: 100 for the best, near 0 for the
    worst, ``100 * (n - rank + 1) / n``.

    Example:
      >>> rank_of(2.0, [1.0, 2.0, 3.0, 4.0])
      (2, 75.0)
    """
    s = np.asarray(scores, np.float64)
    rank = int(np.sum(s < score)) + 1
    return rank, float(100.0 * (len(s) - rank + 1) / len(s))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple:
    """Wilson score interval of a binomial proportion (95% by default).

    Example:
      >>> [round(v, 4) for v in wilson_interval(5, 20)]
      [0.1119, 0.4687]
    """
    if trials <= 0:
        raise ValueError(f"trials must be >= 1, got {trials}.")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}.")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2))
    half /= 1 + z2 / trials
    return max(0.0, centre - half), min(1.0, centre + half)
