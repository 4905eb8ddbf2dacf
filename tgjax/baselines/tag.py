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
from tgjax.partitions import partitions
from tgjax.tasks import TaskCodes, split_labels, task_losses

MAX_COMBINATIONS = 5_000_000


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


def select_groups(
    affinity, max_groups: int, *, overlap: bool = True
) -> tuple[list[tuple[int, ...]], float]:
    """Exact choice of at most ``max_groups`` groups maximising total affinity.

    Every task must be in a chosen group; each task counts the best score it
    has in any chosen group that contains it (see :func:`group_scores`).

    Args:
      affinity: `[tasks, tasks]`, entry (i, j) the affinity of i on j.
      max_groups: K.
      overlap: allow a task in several groups (TAG's own semantics); False
        searches partitions only.

    Returns:
      ``(groups, total)``: the chosen groups as sorted tuples of task indices
      (ties broken by enumeration order), and the total score.

    Raises:
      ValueError: when the exact search would exceed ``MAX_COMBINATIONS``
        candidates.

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
