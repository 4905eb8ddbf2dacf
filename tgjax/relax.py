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

Array = jax.Array


def _out_dtype(logits: Array):
    return logits.dtype if jnp.issubdtype(logits.dtype, jnp.floating) else jnp.float32


_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


def _host_scalar(name: str, value, hint: str = "") -> float:
    """A positive finite float32 number known on the host, or a ValueError."""
    arr = None if isinstance(value, str) else np.asarray(value)
    real = arr is not None and (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
    )
    if not real or arr.ndim != 0:
        raise ValueError(
            f"{name} must be a real scalar number, got {value!r}; pass a Python "
            f"float or a 0-d array.{hint}"
        )
    number = float(arr)
    # The value is used in float32: it must stay finite and a normal number
    # there, or a division by it would give inf or, with flushed subnormals,
    # 0 / 0 = NaN.
    if not (math.isfinite(number) and _F32_TINY <= number <= _F32_MAX):
        raise ValueError(
            f"{name} must be a finite number > 0 that float32 represents "
            f"(between {_F32_TINY:.3g} and {_F32_MAX:.3g}), got {number!r}.{hint}"
        )
    return number


_TAU_HINT = " The reference uses tau=2.5 (CelebA) and tau=4.0 (Taskonomy)."


def check_tau(tau) -> None:
    """Raises ValueError for a temperature that is invalid.

    A temperature known on the host must be a real scalar, finite and > 0 in
    float32 (at least the smallest normal float32). A traced temperature
    (inside ``jit``) only has its shape and dtype checked: its value is not
    known when the function is traced.
    """
    if isinstance(tau, jax.core.Tracer):
        real = jnp.issubdtype(tau.dtype, jnp.floating) or jnp.issubdtype(
            tau.dtype, jnp.integer
        )
        if jnp.shape(tau) != () or not real:
            raise ValueError(
                f"tau must be a real scalar, got a traced {tau.dtype} array of "
                f"shape {jnp.shape(tau)}."
            )
        return
    _host_scalar("tau", tau, _TAU_HINT)


def canonical_tau(tau) -> Array | np.float32:
    """The temperature as one canonical type, so ``jit`` never recompiles for it.

    A host value (Python float, NumPy scalar, concrete JAX array on any
    device) becomes an ``np.float32`` scalar: uncommitted, strongly typed, the
    same abstract value whatever the caller passed. A traced value becomes a
    float32 array.

    Raises:
      ValueError: if ``tau`` is invalid (see :func:`check_tau`).
    """
    check_tau(tau)
    if isinstance(tau, jax.core.Tracer):
        return jnp.asarray(tau, jnp.float32)
    return np.float32(float(np.asarray(tau)))


def _perturbed(key: Array, logits: Array) -> Array:
    """(logits + Gumbel noise) in float32, shifted so that each row's max is 0.

    Subtracting the row maximum first keeps (logits + g) / tau free of
    overflow for any finite logits: the largest entry is exactly 0 and the
    others are <= 0 (a gap beyond the float32 range becomes -inf, whose
    softmax weight and gradient are exactly 0).
    """
    x = jnp.asarray(logits).astype(jnp.float32)
    y = x + jax.random.gumbel(key, x.shape, jnp.float32)
    return y - jax.lax.stop_gradient(jnp.max(y, axis=-1, keepdims=True))


def _one_hot_argmax(y: Array) -> Array:
    # jnp.argmax returns the lowest index among ties: exactly one 1 per row.
    return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=jnp.float32)


@jax.custom_jvp
def _straight_through(hard: Array, soft: Array) -> Array:
    """Forward value ``hard``, derivative that of ``soft``.

    Written as a custom derivative rather than ``hard + soft - sg(soft)`` so
    that the forward value is exactly ``hard`` whatever the compiler does
    with the floating-point sum.
    """
    del soft
    return hard


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    hard, _ = primals
    _, soft_dot = tangents
    return hard, soft_dot


def gumbel_softmax(key: Array, logits: Array, tau, *, hard: bool = False) -> Array:
    """Relaxed or straight-through Gumbel-softmax sample of each row.

    With g = ``jax.random.gumbel(key, logits.shape, float32)``, i.i.d.
    Gumbel(0, 1) noise drawn once per call, the relaxed sample is
    softmax((logits + g) / tau) along the last axis. With ``hard=True`` the
    forward value is the one-hot of argmax(logits + g) (exactly one 1 per row,
    ties to the lowest index) and the gradient is exactly that of the relaxed
    sample. The same key gives the same g as :func:`sample_one_hot`.

    Numerics: computed in float32 for every input dtype, with the row maximum
    of (logits + g) subtracted before the division by tau, so the sample and
    its gradient are finite for any finite logits (even 1e30 apart) and any
    valid tau (even 1e-6). The gradient with respect to the logits is bounded
    by the incoming cotangent divided by tau. Logits so large that g is lost
    in their rounding (|logits| >~ 1e8 for float32) tie, and ties go to the
    lowest index.

    Args:
      key: a JAX PRNG key; the same key gives the same sample.
      logits: `[..., groups]` unnormalised logits, e.g. S of shape
        `[tasks, groups]`. Any floating (or integer) dtype; computed in
        float32.
      tau: temperature > 0; a Python float, NumPy scalar or (traced) 0-d
        array. A host value must be finite and a normal float32 number.
      hard: straight-through sample instead of the relaxed one.

    Returns:
      `[..., groups]` sample in the floating dtype of ``logits`` (float32 for
      integer logits); each row sums to 1 up to rounding in that dtype, and
      exactly 1 with ``hard=True``.

    Raises:
      ValueError: if ``tau`` is known on the host and is not a finite float32
        number > 0, or is not a scalar.

    Example:
      >>> import jax, jax.numpy as jnp, tgjax
      >>> z = tgjax.gumbel_softmax(jax.random.key(0), jnp.ones((3, 2)), 2.5)
      >>> z.shape, z.dtype
      ((3, 2), dtype('float32'))
      >>> h = tgjax.gumbel_softmax(jax.random.key(0), jnp.ones((3, 2)), 2.5,
      ...                          hard=True)
      >>> [float(v) for v in h.sum(axis=-1)]
      [1.0, 1.0, 1.0]
    """
    check_tau(tau)
    logits = jnp.asarray(logits)
    y = _perturbed(key, logits)
    soft = jax.nn.softmax(y / jnp.asarray(tau, jnp.float32), axis=-1)
    if hard:
        soft = _straight_through(_one_hot_argmax(jax.lax.stop_gradient(y)), soft)
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
      ValueError: if ``logits`` is not `[tasks, groups]` with groups >= 1, or
        a row holds NaN (the message names the first such task).

    Example:
      >>> import numpy as np, tgjax
      >>> tgjax.read_groups(np.array([[0.1, 2.0], [1.0, 1.0]])).tolist()
      [1, 0]
    """
    s = np.asarray(jax.device_get(logits), dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(
            f"logits must have shape [tasks, groups] with groups >= 1, got shape "
            f"{s.shape}."
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
    h = -jnp.sum(p * safe_logp, axis=-1)
    # One-hot rows give -0.0 (-1 * log 1); report them as 0.
    return jnp.where(h == 0, 0.0, h)


TAU_SCHEDULES = ("constant", "exponential", "cosine")


def temperature_schedule(
    kind: str = "constant",
    init_value: float = 2.5,
    *,
    final_value: float | None = None,
    decay_steps: int | None = None,
) -> Callable[[Array], Array]:
    """A temperature schedule: a function of the step returning tau > 0.

    The decaying kinds move from ``init_value`` at step 0 to the floor
    ``final_value`` at step ``decay_steps`` and hold it afterwards; steps
    before 0 give ``init_value``. Every value lies in [final_value,
    init_value], so tau > 0 at every step.

    Args:
      kind: ``"constant"`` (the reference: tau never changes),
        ``"exponential"`` (geometric decay, init * (final / init) **
        (step / decay_steps)) or ``"cosine"`` (final + (init - final) *
        (1 + cos(pi * step / decay_steps)) / 2).
      init_value: tau at step 0, finite and > 0 in float32.
      final_value: the floor of the decaying kinds, 0 < final <= init;
        not accepted by ``"constant"``.
      decay_steps: integer steps to reach the floor, >= 1; not accepted by
        ``"constant"``.

    Returns:
      ``schedule(step) -> float32 scalar``, usable inside ``jit`` with a
      traced integer step.

    Raises:
      ValueError: naming the invalid argument.

    Example:
      >>> import tgjax
      >>> s = tgjax.temperature_schedule("cosine", 4.0, final_value=0.5,
      ...                                decay_steps=100)
      >>> float(s(0)), float(s(100)), float(s(1000))
      (4.0, 0.5, 0.5)
    """
    if not isinstance(kind, str) or kind not in TAU_SCHEDULES:
        raise ValueError(f"kind must be one of {TAU_SCHEDULES}, got {kind!r}.")
    init = _host_scalar("init_value", init_value)
    init32 = np.float32(init)

    if kind == "constant":
        extra = {
            n: v
            for n, v in (("final_value", final_value), ("decay_steps", decay_steps))
            if v is not None
        }
        if extra:
            raise ValueError(
                f"A constant tau schedule takes no {', '.join(extra)}; got "
                f"{extra}. Use kind='exponential' or 'cosine' to decay tau."
            )

        def constant(step):
            del step
            return jnp.asarray(init32)

        return constant

    if final_value is None or decay_steps is None:
        raise ValueError(
            f"A {kind} tau schedule needs final_value and decay_steps; got "
            f"final_value={final_value!r}, decay_steps={decay_steps!r}."
        )
    final = _host_scalar("final_value", final_value)
    if final > init:
        raise ValueError(
            f"final_value ({final}) must not exceed init_value ({init}); a "
            "temperature schedule decays."
        )
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, (int, np.integer)):
        raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}.")
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps}.")
    final32 = np.float32(final)
    steps = int(decay_steps)
    log_init = np.float32(math.log(init))
    log_ratio = np.float32(math.log(final) - math.log(init))

    def decaying(step):
        # Clipping the step first keeps every intermediate within
        # [final, init]: no overflow for negative or huge steps.
        t = jnp.clip(jnp.asarray(step), 0, steps).astype(jnp.float32) / steps
        if kind == "exponential":
            # exp(log init + t log(final / init)): the exponent stays within
            # [log final, log init], so no factor under- or overflows even
            # when final / init is far below the float32 range.
            value = jnp.exp(log_init + t * log_ratio)
        else:
            value = final32 + (init32 - final32) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        return jnp.clip(value, final32, init32)

    return decaying
