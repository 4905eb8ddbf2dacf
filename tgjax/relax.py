"""The categorical relaxation at the heart of the grouping search.

Every task i holds a row of unnormalised logits S_i over the K groups. These
pure functions draw relaxed, straight-through and discrete samples from the
Categorical(softmax(S_i)) distributions, read the final groups off S, and
form the objective sum_ik z_ik L_ik.

Numerics: the noise and the softmax are computed in float32 whatever the
input dtype, and the row maximum of (S + g) is subtracted before dividing by
the temperature, so every sample and gradient is finite for finite logits and
any tau > 0. Outputs come back in the floating dtype of the logits.

Reference: Gao et al., "DMTG: One-Shot Differentiable Multi-Task Grouping",
ICML 2024; Jang et al., "Categorical Reparameterization with Gumbel-Softmax",
ICLR 2017; Maddison et al., "The Concrete Distribution", ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


def _out_dtype(logits: Array):
    return logits.dtype if jnp.issubdtype(logits.dtype, jnp.floating) else jnp.float32


def check_tau(tau) -> None:
    """Raises ValueError for a temperature known on the host to be invalid.

    Traced temperatures (inside ``jit``) cannot be checked and pass through.
    """
    if isinstance(tau, jax.core.Tracer):
        return
    value = np.asarray(tau)
    if value.size != 1:
        raise ValueError(f"tau must be a scalar, got an array of shape {value.shape}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"tau must be a finite number > 0, got {value!r}; the reference uses "
            "tau=2.5 (CelebA) and tau=4.0 (Taskonomy)."
        )


def _perturbed(key: Array, logits: Array) -> Array:
    """(logits + Gumbel noise) in float32, shifted so that each row's max is 0."""
    x = jnp.asarray(logits).astype(jnp.float32)
    y = x + jax.random.gumbel(key, x.shape, jnp.float32)
    return y - jax.lax.stop_gradient(jnp.max(y, axis=-1, keepdims=True))


def _one_hot_argmax(y: Array) -> Array:
    # jnp.argmax returns the lowest index among ties: exactly one 1 per row.
    return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=jnp.float32)


def gumbel_softmax(key: Array, logits: Array, tau, *, hard: bool = False) -> Array:
    """Relaxed or straight-through Gumbel-softmax sample of each row.

    With g ~ Gumbel(0, 1) drawn once per call, the relaxed sample is
    softmax((logits + g) / tau) along the last axis. With ``hard=True`` the
    forward value is the one-hot of argmax(logits + g) (exactly one 1 per row,
    ties to the lowest index) and the gradient is that of the relaxed sample.

    Args:
      key: a JAX PRNG key; the same key gives the same sample.
      logits: `[..., groups]` unnormalised logits, e.g. S of shape
        `[tasks, groups]`. Any floating dtype; computed in float32.
      tau: temperature > 0; a Python float, NumPy scalar or (traced) array.
      hard: straight-through sample instead of the relaxed one.

    Returns:
      `[..., groups]` sample in the floating dtype of ``logits``; each row
      sums to 1.

    Raises:
      ValueError: if ``tau`` is known on the host and is not finite and > 0.

    Example:
      >>> import jax, jax.numpy as jnp, tgjax
      >>> z = tgjax.gumbel_softmax(jax.random.key(0), jnp.ones((3, 2)), 2.5)
      >>> z.shape
      (3, 2)
    """
    check_tau(tau)
    logits = jnp.asarray(logits)
    y = _perturbed(key, logits)
    soft = jax.nn.softmax(y / jnp.asarray(tau, jnp.float32), axis=-1)
    if hard:
        # hard + (soft - soft) is exactly hard in the forward pass.
        soft = _one_hot_argmax(y) + (soft - jax.lax.stop_gradient(soft))
    return soft.astype(_out_dtype(logits))


def sample_one_hot(key: Array, logits: Array) -> Array:
    """Discrete sample by Gumbel-max: one_hot(argmax(logits + g)).

    Row i is distributed exactly as Categorical(softmax(logits_i)). No
    gradient flows through this sample.

    Args:
      key: a JAX PRNG key.
      logits: `[..., groups]` unnormalised logits.

    Returns:
      `[..., groups]` one-hot rows in the floating dtype of ``logits``.

    Example:
      >>> import jax, jax.numpy as jnp, tgjax
      >>> z = tgjax.sample_one_hot(jax.random.key(0), jnp.zeros((4, 3)))
      >>> [float(v) for v in z.sum(axis=-1)]
      [1.0, 1.0, 1.0, 1.0]
    """
    logits = jnp.asarray(logits)
    z = _one_hot_argmax(jax.lax.stop_gradient(_perturbed(key, logits)))
    return z.astype(_out_dtype(logits))


def read_groups(logits) -> np.ndarray:
    """The final assignment: the group of each task, argmax of its row, no noise.

    Args:
      logits: `[tasks, groups]` assignment logits S.

    Returns:
      `[tasks]` int32 NumPy array of group indices; ties go to the lowest
      index.

    Raises:
      ValueError: if ``logits`` is not 2-D or a row holds NaN (names the task).

    Example:
      >>> import numpy as np, tgjax
      >>> tgjax.read_groups(np.array([[0.1, 2.0], [1.0, 1.0]])).tolist()
      [1, 0]
    """
    s = np.asarray(jax.device_get(logits), dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(
            f"logits must have shape [tasks, groups], got shape {s.shape}."
        )
    bad = np.flatnonzero(np.isnan(s).any(axis=1))
    if bad.size:
        raise ValueError(
            f"Assignment logits of task {int(bad[0])} contain NaN, so its group "
            "cannot be read; the search diverged: lower the learning rate or "
            "resume from an earlier checkpoint."
        )
    return np.argmax(s, axis=1).astype(np.int32)


def grouping_loss(assignment: Array, loss_matrix: Array, *, mask=None) -> Array:
    """The search objective sum_i sum_k z_ik * L_ik.

    Args:
      assignment: `[tasks, groups]` relaxed, straight-through or one-hot
        sample z.
      loss_matrix: `[tasks, groups]` losses L, L_ik of task i on branch k.
      mask: optional `[tasks]` booleans; a False task contributes exactly 0
        to the value and to every gradient, even when its row of L is NaN or
        infinite.

    Returns:
      float32 scalar, unnormalised over tasks and groups as in the reference.

    Example:
      >>> import jax.numpy as jnp, tgjax
      >>> float(tgjax.grouping_loss(jnp.eye(2), jnp.array([[1., 5.], [7., 2.]])))
      3.0
    """
    z = jnp.asarray(assignment).astype(jnp.float32)
    loss = jnp.asarray(loss_matrix).astype(jnp.float32)
    if z.shape != loss.shape or z.ndim != 2:
        raise ValueError(
            "assignment and loss_matrix must both be [tasks, groups]; got "
            f"{z.shape} and {loss.shape}."
        )
    if mask is not None:
        keep = jnp.asarray(mask).astype(bool)
        if keep.shape != loss.shape[:1]:
            raise ValueError(
                f"mask must have shape [tasks] = {loss.shape[:1]}, got {keep.shape}."
            )
        keep = keep[:, None]
        loss = jnp.where(keep, loss, 0.0)
        z = jnp.where(keep, z, 0.0)
    return jnp.sum(z * loss)


def assignment_entropy(logits: Array) -> Array:
    """Entropy of softmax(logits) per row, finite with a finite gradient.

    Uses log_softmax and treats 0 * log 0 as 0 without producing a NaN
    anywhere, so it is safe at saturation (one-hot rows).

    Args:
      logits: `[..., groups]` logits, any floating dtype.

    Returns:
      `[...]` float32 entropies in nats, between 0 and log(groups).

    Example:
      >>> import jax.numpy as jnp, tgjax
      >>> round(float(tgjax.assignment_entropy(jnp.zeros((1, 4)))[0]), 4)
      1.3863
    """
    x = jnp.asarray(logits).astype(jnp.float32)
    logp = jax.nn.log_softmax(x, axis=-1)
    p = jnp.exp(logp)
    safe_logp = jnp.where(p > 0, logp, 0.0)
    return -jnp.sum(p * safe_logp, axis=-1)


TAU_SCHEDULES = ("constant", "exponential", "cosine")


def temperature_schedule(
    kind: str = "constant",
    init_value: float = 2.5,
    *,
    final_value: float | None = None,
    decay_steps: int | None = None,
) -> Callable[[Array], Array]:
    """A temperature schedule: a function of the step returning tau > 0.

    Args:
      kind: ``"constant"`` (the reference: tau never changes),
        ``"exponential"`` (geometric decay from ``init_value`` to
        ``final_value`` over ``decay_steps``, then held) or ``"cosine"``
        (cosine decay to the floor ``final_value`` over ``decay_steps``).
      init_value: tau at step 0, finite and > 0.
      final_value: the floor for the decaying kinds, 0 < final <= init.
      decay_steps: steps to reach the floor, >= 1.

    Returns:
      ``schedule(step) -> float32 scalar``, usable inside ``jit``.

    Raises:
      ValueError: naming the invalid argument.

    Example:
      >>> import tgjax
      >>> s = tgjax.temperature_schedule("cosine", 4.0, final_value=0.5,
      ...                                decay_steps=100)
      >>> float(s(0)), float(s(100)), float(s(1000))
      (4.0, 0.5, 0.5)
    """
    if kind not in TAU_SCHEDULES:
        raise ValueError(f"kind must be one of {TAU_SCHEDULES}, got {kind!r}.")

    def positive(name, v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number > 0, got {v!r}.") from None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}.")
        return v

    init_value = positive("init_value", init_value)
    if kind == "constant":
        sched = optax.constant_schedule(init_value)
    else:
        if final_value is None or decay_steps is None:
            raise ValueError(
                f"A {kind} tau schedule needs final_value and decay_steps; got "
                f"final_value={final_value!r}, decay_steps={decay_steps!r}."
            )
        final_value = positive("final_value", final_value)
        if final_value > init_value:
            raise ValueError(
                f"final_value ({final_value}) must not exceed init_value "
                f"({init_value}); a temperature schedule decays."
            )
        if isinstance(decay_steps, bool) or not float(decay_steps).is_integer():
            raise ValueError(
                f"decay_steps must be an integer >= 1, got {decay_steps!r}."
            )
        decay_steps = int(decay_steps)
        if decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1, got {decay_steps}.")
        if kind == "exponential":
            sched = optax.exponential_decay(
                init_value,
                transition_steps=decay_steps,
                decay_rate=final_value / init_value,
                end_value=final_value,
            )
        else:
            sched = optax.cosine_decay_schedule(
                init_value, decay_steps, alpha=final_value / init_value
            )

    def schedule(step):
        # optax schedules mix Python floats and integer steps.
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(sched(step), jnp.float32)

    return schedule
