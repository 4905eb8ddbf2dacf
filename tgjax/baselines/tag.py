"""Task affinity grouping (TAG; Fifty et al., NeurIPS 2021).

During one ordinary multi-task run, every step also measures how a gradient
step on task i alone would change the loss of task j on the same batch:

    Z_ij = 1 - L_j(theta_s - lr * grad_s L_i, theta_j) / L_j(theta_s, theta_j)

where theta_s are the shared weights (backbone and branch) and theta_j task
j's head. The affinity of task i on task j is Z_ij averaged over the steps.
Groups are then chosen by exact search: a set of at most K groups maximising
the total affinity, each task scored by the best chosen group that contains
it, its score in group G being the mean affinity onto it from the other
members of G (0 when it is alone). Chosen groups may overlap; a partition
variant restricts the search to partitions.

The exact searches grow too fast beyond about ten tasks (12 tasks and K = 4
give 4e12 candidate sets of groups; 14 tasks into at most 4 groups give 11.2
million partitions). Past the limits below, :func:`select_groups` switches
to bounded searches, deterministic given a seed, that are not guaranteed to
find the optimum: :func:`local_search_partition` (best of many random
partitions, then single-task moves until none improves) and
:func:`local_search_groups` (from that partition, replace or add one group
at a time by the best of all candidate groups until nothing improves).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tgjax.model import GroupedModel
from tgjax.partitions import count_partitions, partitions
from tgjax.tasks import TaskCodes, split_labels, task_losses

MAX_COMBINATIONS = 5_000_000
MAX_PARTITIONS = 200_000
MAX_CANDIDATE_GROUPS = 1 << 16


def _shared_and_heads(params):
    shared = {"backbone": params["backbone"], "branches": params["branches"]}
    return shared, params["heads"]


def lookahead_affinity(
    model: GroupedModel,
    params,
    model_state,
    x,
    y,
    codes: TaskCodes,
    lookahead_lr: float,
):
    """One step's `[tasks, tasks]` lookahead affinities of a K = 1 network.

    Args:
      model: a :class:`GroupedModel` with ``num_groups=1`` (plain MTL).
      params, model_state: its variables.
      x: `[batch, ...]` inputs; y: `[batch, tasks]` labels (NaN = missing).
      codes: the tasks' :class:`TaskCodes`.
      lookahead_lr: learning rate of the plain gradient lookahead step.

    Returns:
      ``(Z, valid)``: Z[i, j] the affinity of task i on task j, and a boolean
      `[tasks, tasks]` mask, False where task j had no label or zero loss in
      the batch (Z is 0 there).
    """
    labels, mask = split_labels(y)
    shared, heads = _shared_and_heads(params)

    def losses(sh):
        p = {"backbone": sh["backbone"], "branches": sh["branches"], "heads": heads}
        out, _ = model.apply(p, model_state, x, train=False)
        return task_losses(out[0], labels, mask, codes)

    before = losses(shared)
    grads = jax.jacrev(losses)(shared)  # leaves [tasks, ...]
    ahead = jax.vmap(
        lambda g: losses(jax.tree.map(lambda s, gi: s - lookahead_lr * gi, shared, g))
    )(grads)  # [tasks i, tasks j]
    valid = jnp.broadcast_to(before[None, :] > 0, ahead.shape)
    z = jnp.where(valid, 1.0 - ahead / jnp.where(valid, before[None, :], 1.0), 0.0)
    return z, valid


def make_affinity_epoch(
    model: GroupedModel,
    codes: TaskCodes,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    lookahead_lr: float,
):
    """A compiled MTL epoch that also sums the lookahead affinities.

    Returns:
      ``epoch((params, state, opt_state), x, y, key) -> (carry, (Z_sum,
      count))`` with `[tasks, tasks]` sums over the epoch's steps.
    """

    def step(carry, batch):
        params, mstate, opt_state = carry
        z, valid = lookahead_affinity(
            model, params, mstate, batch["x"], batch["y"], codes, lookahead_lr
        )
        labels, mask = split_labels(batch["y"])

        def objective(p):
            out, new_state = model.apply(p, mstate, batch["x"], train=True)
            return jnp.sum(task_losses(out[0], labels, mask, codes)), new_state

        (_, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return (params, new_state, opt_state), (z, valid.astype(jnp.float32))

    def epoch(carry, x, y, key):
        n = x.shape[0]
        steps = n // batch_size
        perm = jax.random.permutation(key, n)[: steps * batch_size]
        perm = perm.reshape(steps, batch_size)
        carry, (z, v) = jax.lax.scan(
            lambda c, idx: step(c, {"x": x[idx], "y": y[idx]}), carry, perm
        )
        return carry, (jnp.sum(z, 0), jnp.sum(v, 0))

    return jax.jit(epoch, donate_argnums=0)


def group_scores(affinity: np.ndarray, group: Sequence[int]) -> dict[int, float]:
    """Score of every member of a group: mean affinity onto it from the others.

    Example:
      >>> a = np.array([[0, 1, 3], [2, 0, 5], [4, 6, 0]], float)
      >>> group_scores(a, (0, 1, 2))
      {0: 3.0, 1: 3.5, 2: 4.0}
    """
    group = tuple(group)
    if len(group) == 1:
        return {group[0]: 0.0}
    return {j: float(np.mean([affinity[i, j] for i in group if i != j])) for j in group}


def _score_table(affinity: np.ndarray):
    n = affinity.shape[0]
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    table = np.full((len(subsets), n), -np.inf)
    for k, s in enumerate(subsets):
        for j, v in group_scores(affinity, s).items():
            table[k, j] = v
    return subsets, table


def _subset_table(affinity: np.ndarray):
    """Vectorised :func:`_score_table` over every non-empty subset.

    Returns ``(members, table)``: `[subsets, tasks]` booleans and the
    `[subsets, tasks]` scores (-inf for tasks outside the subset).
    """
    n = affinity.shape[0]
    if (1 << n) - 1 > MAX_CANDIDATE_GROUPS:
        raise ValueError(
            f"{(1 << n) - 1:,} candidate groups of {n} tasks exceed "
            f"{MAX_CANDIDATE_GROUPS:,}; the bounded overlapping search supports "
            "at most 16 tasks (use overlap=False)."
        )
    codes = np.arange(1, 1 << n, dtype=np.int64)
    members = ((codes[:, None] >> np.arange(n)) & 1).astype(bool)
    m = members.astype(np.float64)
    sizes = m.sum(1, keepdims=True)
    inflow = m @ affinity - m * np.diag(affinity)[None, :]
    scores = np.where(sizes > 1, inflow / np.maximum(sizes - 1, 1), 0.0)
    return members, np.where(members, scores, -np.inf)


def _partition_total(a: np.ndarray, labels: np.ndarray) -> float:
    """Total score of the partition given by group labels (one per task)."""
    onehot = labels[:, None] == np.unique(labels)[None, :]  # [tasks, groups]
    m = onehot.astype(np.float64)
    sizes = m.sum(0)  # [groups]
    inflow = (m.T @ a) * m.T - m.T * np.diag(a)[None, :]  # [groups, tasks]
    per_group = np.where(sizes > 1, inflow.sum(1) / np.maximum(sizes - 1, 1), 0.0)
    return float(per_group.sum())


def local_search_partition(
    affinity,
    max_groups: int,
    *,
    seed: int = 0,
    samples: int = 2000,
    starts: int = 8,
) -> tuple[list[tuple[int, ...]], float]:
    """Bounded search for the best partition into at most ``max_groups`` groups.

    Draws ``samples`` random partitions (each task's group uniform in
    0..K-1), and from each of the ``starts`` best of them moves single tasks
    to another group (or a new one while fewer than K are used), taking the
    best improving move, until no move improves the total; returns the best
    local optimum. Deterministic given ``seed``; not guaranteed optimal.

    Example:
      >>> a = -np.ones((4, 4))
      >>> a[:2, :2] = a[2:, 2:] = 2.0
      >>> local_search_partition(a, 3)
      ([(0, 1), (2, 3)], 8.0)
    """
    optima = _partition_optima(
        np.asarray(affinity, np.float64), max_groups, seed, samples, starts
    )
    return max(optima, key=lambda o: o[1])


def _partition_optima(a, max_groups, seed, samples, starts):
    """Local optima of single-task moves from the best random partitions."""
    n = a.shape[0]
    k = min(max_groups, n)
    rng = np.random.default_rng([seed, 7])
    draws = rng.integers(0, k, size=(samples, n))
    totals = np.array([_partition_total(a, d) for d in draws])
    optima = []
    for start in np.argsort(-totals, kind="stable")[:starts]:
        labels = draws[start].copy()
        total = totals[start]
        while True:
            move, move_total = None, total + 1e-12
            for t in range(n):
                for g in range(k):
                    if g == labels[t]:
                        continue
                    trial = labels.copy()
                    trial[t] = g
                    v = _partition_total(a, trial)
                    if v > move_total:
                        move, move_total = (t, g), v
            if move is None:
                break
            labels[move[0]] = move[1]
            total = move_total
        groups = sorted(
            tuple(int(t) for t in np.flatnonzero(labels == g))
            for g in np.unique(labels)
        )
        optima.append((groups, float(total)))
    return optima


def local_search_groups(
    affinity,
    max_groups: int,
    *,
    seed: int = 0,
    samples: int = 2000,
    starts: int = 8,
) -> tuple[list[tuple[int, ...]], float]:
    """Bounded search for at most ``max_groups`` possibly overlapping groups.

    Starts from :func:`local_search_partition`'s partition (a valid set of
    groups) and repeatedly applies the best improving change: replace one
    chosen group by any candidate group (every non-empty subset of the tasks,
    so at most 16 tasks), or add one while fewer
    than K are chosen, keeping every task covered. Stops when no change
    improves the total. Deterministic given ``seed``; not guaranteed optimal.

    Example:
      >>> a = np.array([[0, 1, -5], [1, 0, 1], [-5, 1, 0]], float)
      >>> local_search_groups(a, 2)
      ([(0, 1), (1, 2)], 3.0)
    """
    a = np.asarray(affinity, np.float64)
    n = a.shape[0]
    members, table = _subset_table(a)
    index = {tuple(np.flatnonzero(row)): i for i, row in enumerate(members)}

    def climb(chosen):
        per_task = table[chosen].max(0)
        total = float(per_task.sum())
        while True:
            best_change, best_total = None, total + 1e-12
            for pos in range(len(chosen) + (len(chosen) < max_groups)):
                others = [c for i, c in enumerate(chosen) if i != pos]
                base = table[others].max(0) if others else np.full(n, -np.inf)
                per_task = np.maximum(base[None, :], table)  # [candidates, tasks]
                ok = np.isfinite(per_task).all(1)
                safe = np.where(ok[:, None], per_task, 0.0)
                totals = np.where(ok, safe.sum(1), -np.inf)
                c = int(np.argmax(totals))
                if totals[c] > best_total:
                    best_change, best_total = (pos, c), float(totals[c])
            if best_change is None:
                return chosen, total
            pos, c = best_change
            chosen = chosen[:pos] + [c] + chosen[pos + 1 :]
            total = best_total

    best, total = None, -np.inf
    for start, _ in _partition_optima(a, max_groups, seed, samples, starts):
        chosen, value = climb([index[g] for g in start])
        if value > total + 1e-12:
            best, total = chosen, value
    chosen = best
    groups = sorted({tuple(int(t) for t in np.flatnonzero(members[c])) for c in chosen})
    return groups, total


def select_groups(
    affinity,
    max_groups: int,
    *,
    overlap: bool = True,
    search: str = "auto",
    seed: int = 0,
) -> tuple[list[tuple[int, ...]], float]:
    """Choice of at most ``max_groups`` groups maximising total affinity.

    Every task must be in a chosen group; each task counts the best score it
    has in any chosen group that contains it (see :func:`group_scores`).

    Args:
      affinity: `[tasks, tasks]`, entry (i, j) the affinity of i on j.
      max_groups: K.
      overlap: allow a task in several groups (TAG's own semantics); False
        searches partitions only.
      search: ``"exact"`` (enumerate), ``"bounded"`` (the local searches
        :func:`local_search_groups` / :func:`local_search_partition`), or
        ``"auto"``: exact up to ``MAX_COMBINATIONS`` candidate sets of groups
        (overlapping) or ``MAX_PARTITIONS`` partitions, bounded beyond.
      seed: seed of the bounded search.

    Returns:
      ``(groups, total)``: the chosen groups as sorted tuples of task indices
      (ties broken by enumeration order), and the total score.

    Raises:
      ValueError: when ``search="exact"`` would exceed ``MAX_COMBINATIONS``
        candidates (overlapping groups).

    Example:
      >>> a = np.array([[0, 1, -1], [1, 0, -1], [-1, -1, 0]], float)
      >>> select_groups(a, 2)
      ([(0, 1), (2,)], 2.0)
    """
    a = np.asarray(affinity, np.float64)
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"affinity must be square [tasks, tasks], got {a.shape}.")
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}.")
    if search not in ("auto", "exact", "bounded"):
        raise ValueError(f"search must be auto, exact or bounded, got {search!r}.")
    if search == "auto":
        search = "exact" if _exact_is_small(n, max_groups, overlap) else "bounded"
    if search == "bounded":
        if overlap:
            return local_search_groups(a, max_groups, seed=seed)
        return local_search_partition(a, max_groups, seed=seed)
    if not overlap:
        best, best_total = None, -np.inf
        for part in partitions(n, max_groups):
            total = 0.0
            for g in part:
                total += sum(group_scores(a, g).values())
            if total > best_total + 1e-12:
                best, best_total = part, total
        return [tuple(g) for g in best], float(best_total)
    subsets, table = _score_table(a)
    k = min(max_groups, len(subsets))
    count = sum(math.comb(len(subsets), r) for r in range(1, k + 1))
    if count > MAX_COMBINATIONS:
        raise ValueError(
            f"An exact search over {count:,} sets of groups ({n} tasks, K = "
            f"{max_groups}) is too large; use overlap=False (partitions) or "
            "fewer tasks."
        )
    best, best_total = None, -np.inf
    for r in range(1, k + 1):
        combos = itertools.combinations(range(len(subsets)), r)
        while True:
            chunk = np.array(list(itertools.islice(combos, 200_000)), np.int64)
            if chunk.size == 0:
                break
            per_task = table[chunk].max(axis=1)  # [combos, tasks]
            totals = np.where(
                np.isfinite(per_task).all(1),
                per_task.sum(1, where=np.isfinite(per_task), initial=0.0),
                -np.inf,
            )
            i = int(np.argmax(totals))
            if totals[i] > best_total + 1e-12:
                best_total = float(totals[i])
                best = [subsets[c] for c in chunk[i]]
    return sorted(best), best_total


def _overlap_sets(n: int, max_groups: int) -> int:
    subsets = (1 << n) - 1
    return sum(math.comb(subsets, r) for r in range(1, min(max_groups, subsets) + 1))


def _exact_is_small(n: int, max_groups: int, overlap: bool) -> bool:
    """Whether :func:`select_groups`'s exact search stays within its limits."""
    if overlap:
        return _overlap_sets(n, max_groups) <= MAX_COMBINATIONS
    return count_partitions(n, max_groups) <= MAX_PARTITIONS


def search_kind(n: int, max_groups: int, overlap: bool) -> str:
    """``"exact"`` or ``"bounded"``: what ``search="auto"`` does for N and K."""
    return "exact" if _exact_is_small(n, max_groups, overlap) else "bounded"
