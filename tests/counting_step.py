"""A search 'step' that only counts which examples it was given.

Used by the streaming tests: the state holds one counter per training
example, so after an epoch it says how often the compiled step saw each one.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Counts(NamedTuple):
    step: jax.Array
    counts: jax.Array


def counting_search(n: int):
    """``(init_fn, step_fn, tau)`` for :func:`tgjax.search.run_search_stream`."""

    def init():
        return Counts(jnp.zeros((), jnp.int32), jnp.zeros((n,), jnp.int32))

    def step(state, batch, tau):
        counts = state.counts.at[batch["index"]].add(1)
        # The inputs reach the step too: a NaN in them would be a fault.
        finite = jnp.all(jnp.isfinite(batch["x"]))
        metrics = {
            "loss": jnp.sum(batch["x"]).astype(jnp.float32),
            "tau": tau,
            "probabilities": jnp.ones((1, 1)),
            "loss_matrix": jnp.ones((1, 1)),
            "finite": finite,
        }
        return Counts(state.step + 1, counts), metrics

    def tau(step):
        return jnp.float32(1.0)

    return init, step, tau


def per_epoch_counts(epoch_counts: list) -> list[np.ndarray]:
    """Counts of each epoch alone, from the running totals at epoch ends."""
    out, before = [], 0
    for total in epoch_counts:
        out.append(np.asarray(total) - before)
        before = np.asarray(total)
    return out
