"""The search state, the loss matrix and the pure, jitted train step.

One step samples the assignment z from S, builds the `[tasks, groups]` loss
matrix L with ``vmap`` over groups and tasks, and moves the network weights
and S together through one optax update of a ``multi_transform`` optimizer
(separate optimizers for weights and for S; S never gets weight decay).

The step's PRNG key is ``fold_in(state.key, state.step)``: a restarted run
replays exactly the same noise. tau is a traced argument, so an annealed
schedule never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tgjax.model import GroupedModel
from tgjax.relax import (
    assignment_entropy,
    canonical_tau,
    grouping_loss,
    gumbel_softmax,
)
from tgjax.tasks import (
    Task,
    TaskCodes,
    example_losses,
    split_labels,
    task_errors,
    task_losses,
)

Array = jax.Array
SAMPLES = ("relaxed", "straight_through")
SAMPLE_SCOPES = ("batch", "example", "device")


class SearchState(NamedTuple):
    """Everything a search run carries from step to step (a pytree).

    Attributes:
      params: network weights (``backbone``, ``branches``, ``heads``).
      model_state: non-parameter collections such as batch statistics.
      assignment: `[tasks, groups]` assignment logits S.
      opt_state: state of the ``multi_transform`` optimizer.
      step: int32 scalar, number of updates done.
      key: PRNG key of the run; step keys are folded in from it.
    """

    params: Any
    model_state: Any
    assignment: Array
    opt_state: Any
    step: Array
    key: Array


def make_optimizer(
    learning_rate: float | optax.Schedule = 8e-4,
    *,
    assignment_learning_rate: float | optax.Schedule | None = None,
    weight_decay: float = 0.0,
    freeze_assignment: bool = False,
    freeze_backbone: bool = False,
) -> optax.GradientTransformation:
    """Adam for the weights and Adam for S, joined in one transformation.

    The parity default is the reference's: one Adam with lr 8e-4 for both,
    no weight decay. ``weight_decay`` > 0 turns the weight optimizer into
    AdamW; S never gets weight decay.

    Args:
      learning_rate: weights' learning rate or schedule.
      assignment_learning_rate: S's learning rate; defaults to the weights'.
      weight_decay: decoupled weight decay of the weights.
      freeze_assignment: keep S fixed (the single-task baseline).
      freeze_backbone: keep the shared backbone fixed (fine-tuning).

    Returns:
      An optax transformation over ``{"params": ..., "assignment": S}``.
    """
    if assignment_learning_rate is None:
        assignment_learning_rate = learning_rate
    if weight_decay:
        weights = optax.adamw(learning_rate, weight_decay=weight_decay)
    else:
        weights = optax.adam(learning_rate)
    transforms = {
        "weights": weights,
        "assignment": optax.set_to_zero()
        if freeze_assignment
        else optax.adam(assignment_learning_rate),
        "frozen": optax.set_to_zero(),
    }

    def labels(tree):
        params = {
            name: jax.tree.map(
                lambda _, n=name: (
                    "frozen" if (n == "backbone" and freeze_backbone) else "weights"
                ),
                sub,
            )
            for name, sub in tree["params"].items()
        }
        return {"params": params, "assignment": "assignment"}

    return optax.multi_transform(transforms, labels)


def initial_assignment(
    key: Array, num_tasks: int, num_groups: int, noise: float = 1e-3
) -> Array:
    """S at step 0: ones (the reference's uniform start) plus small noise.

    The noise breaks exact ties, which would otherwise all read out as group
    0; ``noise=0`` gives the reference's exact ones.

    Returns:
      `[tasks, groups]` float32.
    """
    s = jnp.ones((num_tasks, num_groups), jnp.float32)
    if noise:
        s = s + noise * jax.random.normal(key, s.shape, jnp.float32)
    return s


def init_state(
    model: GroupedModel,
    optimizer: optax.GradientTransformation,
    key: Array,
    x: Array,
    *,
    assignment: Array | None = None,
    assignment_noise: float = 1e-3,
) -> SearchState:
    """Initialises a :class:`SearchState`.

    Args:
      model: the search network.
      optimizer: from :func:`make_optimizer` (or any transformation over
        ``{"params", "assignment"}``).
      key: PRNG key of the run.
      x: `[batch, ...]` example inputs.
      assignment: optional initial `[tasks, groups]` logits.
      assignment_noise: std of the noise added to the ones start.

    Example:
      >>> import jax, jax.numpy as jnp, tgjax
      >>> from tgjax.model import MLP
      >>> import flax.linen as nn
      >>> m = tgjax.GroupedModel(MLP((8,)), nn.Dense(2), num_groups=2, num_tasks=3)
      >>> st = tgjax.init_state(m, tgjax.make_optimizer(), jax.random.key(0),
      ...                       jnp.zeros((4, 5)))
      >>> st.assignment.shape
      (3, 2)
    """
    k_model, k_s, k_run = jax.random.split(key, 3)
    params, model_state = model.init_variables(k_model, x)
    if assignment is None:
        assignment = initial_assignment(
            k_s, model.num_tasks, model.num_groups, assignment_noise
        )
    assignment = jnp.asarray(assignment, jnp.float32)
    if assignment.shape != (model.num_tasks, model.num_groups):
        raise ValueError(
            f"assignment must have shape [tasks, groups] = "
            f"{(model.num_tasks, model.num_groups)}, got {assignment.shape}."
        )
    opt_state = optimizer.init({"params": params, "assignment": assignment})
    return SearchState(
        params, model_state, assignment, opt_state, jnp.zeros((), jnp.int32), k_run
    )


def loss_matrix(
    model: GroupedModel,
    params,
    model_state,
    x: Array,
    y: Array,
    codes: TaskCodes,
    *,
    train: bool = False,
    rng: Array | None = None,
    per_example: bool = False,
    loss_fn: Callable[[Array, Any], Array] | None = None,
):
    """The `[tasks, groups]` loss matrix L of the search network.

    L_ik is the batch-mean loss of task i predicted by head (k, i) on branch
    k; a task without labels in the batch has L_ik = 0 and no gradient.

    Args:
      model, params, model_state: the search network and its variables.
      x: `[batch, ...]` inputs.
      y: `[batch, tasks]` labels, NaN where missing.
      codes: :class:`tgjax.tasks.TaskCodes` of the tasks.
      train: training mode.
      rng: dropout key.
      per_example: return `[batch, tasks, groups]` per-example terms whose sum
        over the batch is L (for per-example assignment samples).
      loss_fn: your own ``loss_fn(outputs, y) -> [tasks]`` replacing the
        built-in losses, with outputs `[tasks, batch, ...]` of one group and
        ``y`` passed through untouched (any pytree, e.g. dense targets). It
        must return 0 for a task without labels. Not combinable with
        ``per_example``.

    Returns:
      ``(L, new_model_state)``.
    """
    outputs, new_state = model.apply(params, model_state, x, train=train, rng=rng)
    if loss_fn is None:
        check_head_outputs(outputs.shape, codes)
    if loss_fn is not None:
        if per_example:
            raise ValueError(
                "per_example=True needs the built-in per-example losses; drop "
                "loss_fn or sample one assignment per batch."
            )
        per_group = jax.vmap(lambda out: loss_fn(out, y))(outputs)
        return per_group.T, new_state
    labels, mask = split_labels(y)
    if per_example:
        count = jnp.maximum(jnp.sum(mask, axis=0), 1).astype(jnp.float32)

        def one_group(out):
            per = jax.vmap(example_losses, in_axes=(0, 1, 1, 0, 0))(
                out,
                labels,
                mask,
                jnp.asarray(codes.loss_code),
                jnp.asarray(codes.num_classes),
            )
            return per / count[:, None]  # [tasks, batch]

        terms = jax.vmap(one_group)(outputs)  # [groups, tasks, batch]
        return jnp.transpose(terms, (2, 1, 0)), new_state
    per_group = jax.vmap(lambda out: task_losses(out, labels, mask, codes))(outputs)
    return per_group.T, new_state


def _locate_faults(grads: dict, new_assignment: Array) -> tuple[Array, Array]:
    """Where gradients or the updated S stopped being finite.

    Heads are `[groups, tasks, ...]` and branches `[groups, ...]`, so a
    non-finite entry maps to its task and group at the cost of a few
    reductions, read on the host only when the step's ``finite`` is False.

    Returns:
      ``(fault, branch_fault)``: `[tasks, groups]` booleans, True where a head
      gradient, S's gradient or the updated S is non-finite; `[groups]`
      booleans, True where a branch gradient is non-finite.
    """

    def bad_over(leaves, ndim):
        flags = [
            jnp.any(~jnp.isfinite(g.reshape(g.shape[:ndim] + (-1,))), axis=-1)
            for g in leaves
        ]
        return jnp.any(jnp.stack(flags), axis=0) if flags else None

    fault = ~jnp.isfinite(grads["assignment"]) | ~jnp.isfinite(new_assignment)
    heads = bad_over(jax.tree.leaves(grads["params"].get("heads", {})), 2)
    if heads is not None:
        fault |= heads.T
    groups = new_assignment.shape[1]
    branch_fault = bad_over(jax.tree.leaves(grads["params"].get("branches", {})), 1)
    if branch_fault is None:
        branch_fault = jnp.zeros((groups,), bool)
    return fault, branch_fault


def check_head_outputs(
    shape: tuple[int, ...], codes: TaskCodes, names: Sequence[str] | None = None
) -> None:
    """Checks search outputs `[groups, tasks, batch, D]` against the tasks.

    The built-in losses read ``num_classes`` outputs of each task's head, so
    every head must be at least as wide as the widest task
    (:func:`tgjax.tasks.output_size`). Shapes are static, so this runs once,
    when the step or loss is traced.

    Raises:
      ValueError: naming the head width, the widest task and the fix.
    """
    n_tasks = len(codes.num_classes)
    if len(shape) < 4 or shape[1] != n_tasks:
        got = shape[1] if len(shape) >= 2 else "?"
        raise ValueError(
            f"The model gives outputs for {got} task(s) but there are {n_tasks} "
            f"tasks; build GroupedModel(..., num_tasks={n_tasks})."
        )
    width, need = int(shape[-1]), int(np.max(codes.num_classes))
    if width < need:
        i = int(np.argmax(codes.num_classes))
        who = f"task {names[i]!r}" if names is not None else f"task {i}"
        raise ValueError(
            f"The task heads give {width} output(s), but {who} needs {need} "
            f"(its num_classes; a binary task needs 2). Build the model with "
            "head=nn.Dense(output_size(tasks)) (tgjax.output_size) so every "
            "head is as wide as the widest task."
        )


def make_train_step(
    model: GroupedModel,
    tasks: Sequence[Task],
    optimizer: optax.GradientTransformation,
    *,
    sample: str = "relaxed",
    sample_scope: str = "batch",
    entropy_weight: float = 0.0,
    fixed_assignment: Array | None = None,
    loss_fn: Callable[[Array, Any], Array] | None = None,
    sample_shards: int = 1,
    jit: bool = True,
) -> Callable[[SearchState, dict, Any], tuple[SearchState, dict]]:
    """Builds the pure search step ``step(state, batch, tau) -> (state, metrics)``.

    Args:
      model: the search network.
      tasks: the N tasks.
      optimizer: the transformation the state was initialised with.
      sample: ``"relaxed"`` (Gumbel-softmax, the reference) or
        ``"straight_through"``.
      sample_scope: ``"batch"`` (one assignment per step, the reference),
        ``"example"`` (an independent assignment per example) or ``"device"``
        (an independent assignment for each of ``sample_shards`` equal,
        contiguous slices of the batch: one per data-parallel device).
      entropy_weight: weight of the mean row entropy of softmax(S) added to
        the objective (> 0 pushes rows towards one-hot).
      fixed_assignment: `[tasks, groups]` z used instead of a sample (the
        single-task baseline is the identity with K = N).
      loss_fn: optional ``loss_fn(outputs, y) -> [tasks]`` replacing the
        built-in per-task losses (see :func:`loss_matrix`).
      sample_shards: number of batch slices of ``sample_scope="device"``;
        the batch size must be a multiple of it.
      jit: compile the step (on by default).

    Returns:
      ``step(state, batch, tau)`` with ``batch = {"x": [batch, ...],
      "y": [batch, tasks]}``. Metrics: ``loss`` (the objective without the
      regulariser), ``loss_matrix`` `[tasks, groups]`, ``assignment`` z,
      ``probabilities`` softmax(S) after this step's update (as the returned
      state holds it), ``tau``, ``finite`` (False when the loss, a gradient
      or S stopped being finite), and where it happened:
      ``fault`` `[tasks, groups]` (head gradient, S's gradient or S) and
      ``branch_fault`` `[groups]` (branch gradient).
    """
    if sample not in SAMPLES:
        raise ValueError(f"sample must be one of {SAMPLES}, got {sample!r}.")
    if sample_scope not in SAMPLE_SCOPES:
        raise ValueError(
            f"sample_scope must be one of {SAMPLE_SCOPES}, got {sample_scope!r}."
        )
    if loss_fn is not None and sample_scope != "batch":
        raise ValueError(
            f"sample_scope={sample_scope!r} needs the built-in per-example losses; "
            "drop loss_fn or use sample_scope='batch'."
        )
    if isinstance(sample_shards, bool) or not isinstance(sample_shards, int):
        raise TypeError(f"sample_shards must be an int, got {sample_shards!r}.")
    if sample_shards < 1:
        raise ValueError(f"sample_shards must be >= 1, got {sample_shards}.")
    codes = TaskCodes.from_tasks(tasks)
    names = [t.name for t in tasks]
    if model.num_tasks != len(tasks):
        raise ValueError(
            f"GroupedModel has num_tasks={model.num_tasks} but make_train_step "
            f"got {len(tasks)} tasks; build the model with "
            f"num_tasks={len(tasks)} (len(tasks))."
        )
    features = getattr(model.head, "features", None)
    if loss_fn is None and isinstance(features, int):
        check_head_outputs((model.num_groups, len(tasks), 1, features), codes, names)
    hard = sample == "straight_through"
    per_example = sample_scope != "batch" and fixed_assignment is None
    shards = sample_shards if sample_scope == "device" else None
    fixed = (
        None if fixed_assignment is None else jnp.asarray(fixed_assignment, jnp.float32)
    )

    def step(state: SearchState, batch: dict, tau: Array):
        key = jax.random.fold_in(state.key, state.step)
        k_sample, k_dropout = jax.random.split(key)
        x, y = batch["x"], batch["y"]
        if loss_fn is None:
            present = jnp.any(~jnp.isnan(jnp.asarray(y, jnp.float32)), axis=0)
        else:
            present = jnp.ones((len(codes.loss_code),), bool)

        def objective(trainable):
            s = trainable["assignment"]
            if fixed is not None:
                z = fixed
            elif shards is not None:
                if x.shape[0] % shards:
                    raise ValueError(
                        f"The batch ({x.shape[0]}) must be a multiple of "
                        f"sample_shards ({shards}) for sample_scope='device'."
                    )
                s_b = jnp.broadcast_to(s, (shards,) + s.shape)
                z = gumbel_softmax(k_sample, s_b, tau, hard=hard)
            elif per_example:
                s_b = jnp.broadcast_to(s, (x.shape[0],) + s.shape)
                z = gumbel_softmax(k_sample, s_b, tau, hard=hard)
            else:
                z = gumbel_softmax(k_sample, s, tau, hard=hard)
            lm, new_state = loss_matrix(
                model,
                trainable["params"],
                state.model_state,
                x,
                y,
                codes,
                train=True,
                rng=k_dropout,
                per_example=per_example,
                loss_fn=loss_fn,
            )
            if shards is not None:
                lm = jnp.sum(lm.reshape((shards, -1) + lm.shape[1:]), axis=1)
            if per_example:
                keep = present[None, :, None]
                total = jnp.sum(jnp.where(keep, z * lm, 0.0))
                lm = jnp.sum(lm, axis=0)
                z = jnp.mean(z, axis=0)
            else:
                total = grouping_loss(z, lm, mask=present)
            obj = total
            if entropy_weight:
                obj = obj + entropy_weight * jnp.mean(assignment_entropy(s))
            return obj, (total, lm, z, new_state)

        trainable = {"params": state.params, "assignment": state.assignment}
        grads, (total, lm, z, new_model_state) = jax.grad(objective, has_aux=True)(
            trainable
        )
        # optax mixes Python floats with its int32 step count; keep its
        # update traceable under callers' strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
            new = optax.apply_updates(trainable, updates)
        fault, branch_fault = _locate_faults(grads, new["assignment"])
        finite = jnp.isfinite(total) & jnp.all(jnp.isfinite(new["assignment"]))
        finite &= jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        metrics = {
            "loss": total,
            "loss_matrix": lm,
            "assignment": z,
            "probabilities": jax.nn.softmax(new["assignment"], axis=-1),
            "tau": tau,
            "finite": finite,
            "fault": fault,
            "branch_fault": branch_fault,
        }
        new_state = SearchState(
            new["params"],
            new_model_state,
            new["assignment"],
            opt_state,
            state.step + 1,
            state.key,
        )
        return new_state, metrics

    core = jax.jit(step) if jit else step

    def train_step(state, batch, tau):
        return core(state, batch, canonical_tau(tau))

    train_step.core = step  # the unjitted pure function, for scans and tests
    train_step.jitted = core
    return train_step


def make_epoch_fn(
    step_fn: Callable,
    tau_schedule: Callable[[Array], Array],
    batch_size: int,
) -> Callable:
    """A compiled epoch: shuffle on device, then ``lax.scan`` over the steps.

    Args:
      step_fn: a pure step ``(state, batch, tau) -> (state, metrics)``, such as
        ``make_train_step(...).core``.
      tau_schedule: function of the step returning tau.
      batch_size: examples per step; the last incomplete batch is dropped.

    Returns:
      ``epoch(state, x, y, key) -> (state, stacked_metrics)`` where x and y
      hold the whole (device-resident) training split and ``key`` orders it.
    """

    def epoch(state, x, y, key):
        n = x.shape[0]
        steps = n // batch_size
        perm = jax.random.permutation(key, n)[: steps * batch_size]
        perm = perm.reshape(steps, batch_size)

        def body(st, idx):
            batch = {"x": x[idx], "y": y[idx]}
            return step_fn(st, batch, tau_schedule(st.step))

        return jax.lax.scan(body, state, perm)

    return jax.jit(epoch, donate_argnums=0)


def hard_outputs(model: GroupedModel, params, model_state, x, groups) -> Array:
    """Search-network outputs with each task read from its selected head.

    Returns:
      `[tasks, batch, D]`.
    """
    out, _ = model.apply(params, model_state, x, train=False)
    groups = jnp.asarray(groups)
    return out[groups, jnp.arange(out.shape[1])]


def evaluate_outputs(outputs_fn, x: np.ndarray, y: np.ndarray, codes, batch_size=1024):
    """Per-task mean loss and mean error over a whole split, batch by batch.

    Args:
      outputs_fn: jitted ``x -> [tasks, batch, D]``.
      x, y: the split, labels `[examples, tasks]` with NaN for missing.
      codes: :class:`TaskCodes`.

    Returns:
      dict of `[tasks]` NumPy arrays: ``loss``, ``error`` (error rate or MAE in
      standardised units) and ``count``.
    """
    batches = (
        (x[start : start + batch_size], y[start : start + batch_size])
        for start in range(0, len(x), batch_size)
    )
    return evaluate_batches(outputs_fn, batches, codes, y.shape[1])


def evaluate_batches(outputs_fn, batches, codes, num_tasks: int):
    """:func:`evaluate_outputs` over an iterable of ``(x, y)`` batches.

    Every batch counts, a last smaller one included, so the result equals
    :func:`evaluate_outputs` on the concatenated batches when they are cut at
    the same places.
    """
    loss_sum = np.zeros(num_tasks)
    err_sum = np.zeros(num_tasks)
    count = np.zeros(num_tasks)
    for xb, yb in batches:
        out = outputs_fn(xb)
        # Split on the host: the NaN of a missing label is data, not a fault,
        # and never enters a device operation that jax_debug_nans watches.
        yb = np.asarray(yb, np.float32)
        mask = ~np.isnan(yb)
        lab = np.where(mask, yb, 0.0).astype(np.float32)
        c = np.asarray(jnp.sum(mask, axis=0), np.float64)
        loss_sum += np.asarray(task_losses(out, lab, mask, codes), np.float64) * c
        e, _ = task_errors(out, lab, mask, codes)
        err_sum += np.asarray(e, np.float64)
        count += c
    safe = np.maximum(count, 1)
    return {"loss": loss_sum / safe, "error": err_sum / safe, "count": count}
