"""The whole job: search, read the groups, prune, fine-tune, evaluate.

:func:`fit` runs the four stages on a :class:`tgjax.data.MultiTaskData` and
returns a :class:`FitResult`. It holds the epoch loop; everything inside an
epoch is one compiled call (``lax.scan`` over device-resident data). A
:class:`tgjax.data.StreamData`, or any data with ``RunConfig(stream=True)``,
is read in batches through grain instead, one compiled step per batch (see
:func:`tgjax.search.run_search_stream`). Progress and logging are the
caller's: pass ``callback`` to receive events.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tgjax.checkpoint import Checkpoints
from tgjax.config import RunConfig
from tgjax.data.base import MultiTaskData, from_arrays
from tgjax.data.stream import (
    FINETUNE_EPOCH_OFFSET,
    StreamData,
    StreamSplit,
    eval_batches,
    step_batches,
    stream_from_memory,
)
from tgjax.distributed import check_fits, make_mesh, replicated
from tgjax.model import MLP, CelebAEncoder, GroupedModel, prune
from tgjax.relax import read_groups, temperature_schedule
from tgjax.search import (
    Prefetcher,
    run_search,
    run_search_stream,
    stream_layout,
    to_local,
)
from tgjax.tasks import (
    Task,
    TaskCodes,
    check_tasks,
    output_size,
    split_labels,
    task_losses,
)
from tgjax.train import (
    SearchState,
    evaluate_batches,
    evaluate_outputs,
    hard_outputs,
    init_state,
    make_optimizer,
    make_train_step,
)
from tgjax.validate import (
    NumericalError,
    check_arrays,
    check_fit_inputs,
    fault_message,
    find_fault,
)

Callback = Callable[[str, dict], None]


@dataclasses.dataclass
class PrunedNetwork:
    """The network after pruning: surviving branches and one head per task.

    Attributes:
      params, state: variables (branches `[kept, ...]`, heads `[tasks, ...]`).
      kept: original group index of each surviving branch.
      task_branch: `[tasks]` index into ``kept`` of each task's branch.
    """

    params: Any
    state: Any
    kept: np.ndarray
    task_branch: np.ndarray


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` found and measured.

    Attributes:
      tasks: task names.
      groups: task names of each non-empty group, ordered by group index.
      assignment: `[tasks]` group index (into the search's K groups).
      probabilities: `[tasks, groups]` softmax(S) at the end of the search.
      test, val: metrics of the final pruned model (see :func:`evaluate`).
      history: the logged search metrics, one dict per logged step.
      search_state: the final :class:`SearchState`.
      pruned: the fine-tuned :class:`PrunedNetwork`.
      config: the settings used.
      finetune_selected_epoch: the fine-tuning epoch whose weights ``pruned``
        holds (the best validation total loss); -1 means the pruned network
        before fine-tuning, i.e. no fine-tuning epoch improved on it.
      finetune_selected_val_loss: the validation total loss of that epoch.
      pruned_val_loss: the validation total loss of the pruned network
        before fine-tuning.
    """

    tasks: list[str]
    groups: list[list[str]]
    assignment: np.ndarray
    probabilities: np.ndarray
    test: dict
    val: dict
    history: list[dict]
    search_state: SearchState
    pruned: PrunedNetwork
    config: RunConfig
    finetune_selected_epoch: int = -1
    finetune_selected_val_loss: float = float("nan")
    pruned_val_loss: float = float("nan")

    @property
    def finetune_improved(self) -> bool:
        """Whether a fine-tuning epoch beat the pruned network on validation."""
        return self.finetune_selected_epoch >= 0

    def groups_json(self) -> dict:
        return {
            "tasks": self.tasks,
            "groups": self.groups,
            "assignment": [int(g) for g in self.assignment],
            "probabilities": np.asarray(self.probabilities).round(6).tolist(),
        }


def num_groups(config: RunConfig, num_tasks: int) -> int:
    """K of a run: 1 for the MTL baseline, N for STL, else ``config.groups``."""
    if config.baseline == "mtl":
        return 1
    if config.baseline == "stl":
        return num_tasks
    return config.groups


def build_model(config: RunConfig, tasks: Sequence[Task], groups: int) -> GroupedModel:
    """The search network of a config: branch type, head width, K and N."""
    branch = CelebAEncoder() if config.branch == "celeba" else MLP(config.hidden)
    return GroupedModel(
        branch=branch,
        head=nn.Dense(output_size(tasks)),
        num_groups=groups,
        num_tasks=len(tasks),
        init=config.init,
    )


def _lr_schedule(config: RunConfig, base: float, steps_per_epoch: int):
    if not config.lr_halving_epochs:
        return base
    boundaries = {int(e) * steps_per_epoch: 0.5 for e in config.lr_halving_epochs}
    return optax.piecewise_constant_schedule(base, boundaries)


def evaluate(
    outputs_fn,
    x: np.ndarray,
    y: np.ndarray,
    data: MultiTaskData,
) -> dict:
    """Per-task metrics and totals of a model on one split.

    Classification tasks report the error percentage, regression tasks the
    mean absolute error in the data's original units.

    Returns:
      ``{"tasks": {name: {"metric", "value", "loss", "count"}},
      "total_loss": ..., "total_error_percent": ... (classification tasks),
      "total_mae": ... (regression tasks, original units)}``.
    """
    codes = TaskCodes.from_tasks(data.tasks)
    return _split_metrics(evaluate_outputs(outputs_fn, x, y, codes), data)


def evaluate_stream(outputs_fn, split: StreamSplit, data, *, workers: int = 0) -> dict:
    """:func:`evaluate` on a streamed split, read in batches of 1024.

    The batches are cut where :func:`evaluate` cuts the in-memory split and
    the last, smaller one counts, so on the same data and weights both give
    the same metrics.
    """
    codes = TaskCodes.from_tasks(data.tasks)
    batches = ((b["x"], b["y"]) for b in eval_batches(split, workers=workers))
    raw = evaluate_batches(outputs_fn, batches, codes, len(data.tasks))
    return _split_metrics(raw, data)


def _split_metrics(raw: dict, data) -> dict:
    per_task, err_total, mae_total = {}, 0.0, 0.0
    for i, t in enumerate(data.tasks):
        if t.is_classification:
            value = 100.0 * raw["error"][i]
            err_total += value
        else:
            value = raw["error"][i] * float(data.target_std[i])
            mae_total += value
        per_task[t.name] = {
            "metric": t.metric_name,
            "value": float(value),
            "loss": float(raw["loss"][i]),
            "count": int(raw["count"][i]),
        }
    out = {"tasks": per_task, "total_loss": float(np.sum(raw["loss"]))}
    if any(t.is_classification for t in data.tasks):
        out["total_error_percent"] = float(err_total)
    if any(not t.is_classification for t in data.tasks):
        out["total_mae"] = float(mae_total)
    return out


def make_pruned_epoch_fn(
    model: GroupedModel,
    tasks: Sequence[Task],
    optimizer: optax.GradientTransformation,
    task_branch: np.ndarray,
    batch_size: int,
):
    """A compiled fine-tuning epoch of the pruned network.

    Each surviving branch is trained on the unweighted sum of its own tasks'
    losses, which is the plain sum over tasks of each task's loss on its own
    head and branch.

    Returns:
      ``epoch((params, state, opt_state), x, y, key) -> (carry, metrics)``
      with stacked per-step metrics ``task_losses`` `[steps, tasks]`,
      ``finite`` `[steps]` (False when a loss, a gradient or the weights stop
      being finite) and ``fault`` `[steps, tasks]` (a non-finite loss or head
      gradient of that task).
    """
    step = make_pruned_step(model, tasks, optimizer, task_branch)

    def epoch(carry, x, y, key):
        n = x.shape[0]
        steps = n // batch_size
        perm = jax.random.permutation(key, n)[: steps * batch_size]
        perm = perm.reshape(steps, batch_size)
        return jax.lax.scan(
            lambda c, idx: step(c, {"x": x[idx], "y": y[idx]}), carry, perm
        )

    return jax.jit(epoch, donate_argnums=0)


def make_pruned_step(
    model: GroupedModel,
    tasks: Sequence[Task],
    optimizer: optax.GradientTransformation,
    task_branch: np.ndarray,
):
    """The pure fine-tuning step ``(carry, batch) -> (carry, metrics)`` of
    :func:`make_pruned_epoch_fn` (carry: params, state, opt_state, key)."""
    codes = TaskCodes.from_tasks(tasks)
    task_branch = np.asarray(task_branch)

    def step(carry, batch):
        params, mstate, opt_state, rng = carry
        rng, k_drop = jax.random.split(rng)
        labels, mask = split_labels(batch["y"])

        def objective(p):
            out, new_state = model.apply_pruned(
                p, mstate, batch["x"], task_branch, train=True, rng=k_drop
            )
            losses = task_losses(out, labels, mask, codes)
            return jnp.sum(losses), (losses, new_state)

        (_, (losses, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            params
        )
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        fault = ~jnp.isfinite(losses)
        for g in jax.tree.leaves(grads.get("heads", {})):
            fault |= jnp.any(~jnp.isfinite(g.reshape(g.shape[0], -1)), axis=-1)
        finite = ~jnp.any(fault) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        metrics = {"task_losses": losses, "finite": finite, "fault": fault}
        return (params, new_state, opt_state, rng), metrics

    return step


def _raise_fault(metrics: dict, index: int, first: int, tasks) -> None:
    raise NumericalError(fault_message(metrics, index, first + index, tasks))


def _emit(callback: Callback | None, event: str, payload: dict) -> None:
    if callback is not None:
        callback(event, payload)


def fit(
    data: MultiTaskData,
    config: RunConfig | None = None,
    *,
    callback: Callback | None = None,
    checkpoints: Checkpoints | None = None,
    resume: bool = False,
) -> FitResult:
    """Runs search, group read-out, pruning, fine-tuning and test evaluation.

    The search runs on the device mesh of ``config.mesh`` (all devices on the
    data axis by default; see :mod:`tgjax.distributed`); pruning,
    fine-tuning and evaluation run on each process's default device.

    Args:
      data: the multi-task data set with its splits: a
        :class:`tgjax.data.MultiTaskData` (in memory; streamed when
        ``config.stream``) or a :class:`tgjax.data.StreamData` (streamed:
        search, fine-tuning and evaluation read batches, and only the labels
        are held in full).
      config: settings; ``RunConfig()`` by default.
      checkpoints: where the search saves its state every
        ``config.checkpoint_every`` steps (and at its end); None saves none.
      resume: continue the search from the newest readable checkpoint in
        ``checkpoints``. Fine-tuning is not checkpointed: it is restarted
        from the final search state, and with the same seed it repeats the
        same steps.
      callback: optional ``callback(event, payload)``. Events: ``"start"``
        (phase, epochs, steps_per_epoch), ``"log"`` (one logged search step:
        step, epoch, loss, tau, learning_rate, assignment_learning_rate,
        probabilities, loss_matrix),
        ``"epoch"`` (phase, epoch, train_loss, val_total_loss,
        non_empty_groups), ``"groups"`` (the read-out) and ``"done"``.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: for data or settings that cannot be trained on, before any
        work starts (see :func:`tgjax.validate.check_fit_inputs`): too small
        a split, non-finite inputs, labels that do not fit their task, a task
        without train labels or with one class, a batch larger than the train
        split.
      NumericalError: when training produces a non-finite value; the
        message names the step and the task or group. Steps before it have
        been passed to ``callback``.

    Example:
      >>> import tgjax
      >>> from tgjax.data import load_dataset
      >>> data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
      >>> res = tgjax.fit(data, tgjax.RunConfig(groups=2, epochs=1,
      ...                 finetune_epochs=1, hidden=(16,)))
      >>> sorted(sum(res.groups, []))
      ['Class1', 'Class2']
    """
    config = RunConfig() if config is None else config
    check_fit_inputs(data, config)
    stream = config.stream or isinstance(data, StreamData)
    if stream:
        data = stream_from_memory(data)
    tasks = data.tasks
    n_tasks = len(tasks)
    n_train = len(data.train)
    k = num_groups(config, n_tasks)
    model = build_model(config, tasks, k)
    steps_per_epoch = search_steps_per_epoch(n_train, config, stream)
    total_steps = steps_per_epoch * config.epochs
    lr = _lr_schedule(config, config.learning_rate, steps_per_epoch)
    lr_s = _lr_schedule(
        config,
        config.assignment_learning_rate or config.learning_rate,
        steps_per_epoch,
    )
    stl = config.baseline == "stl"
    optimizer = make_optimizer(
        lr,
        assignment_learning_rate=lr_s,
        weight_decay=config.weight_decay,
        freeze_assignment=stl,
    )
    root = jax.random.key(config.seed)
    k_init, k_data = jax.random.split(root)
    del k_init  # drawn again inside the compiled initialisation
    if stream:
        x_example = data.train.read([0, 1])["x"]
    else:
        x_example = np.asarray(data.train.x[:2])
    mesh = make_mesh(config.mesh)
    check_fits(
        mesh, num_groups=k, batch_size=config.batch_size, baseline=config.baseline
    )

    def init():
        return init_state(
            model,
            optimizer,
            jax.random.split(jax.random.key(config.seed))[0],
            x_example,
            assignment=jnp.eye(n_tasks, dtype=jnp.float32) if stl else None,
            assignment_noise=config.assignment_noise,
        )

    if config.tau_schedule == "constant":
        tau_fn = temperature_schedule("constant", config.tau)
    else:
        tau_fn = temperature_schedule(
            config.tau_schedule,
            config.tau,
            final_value=config.tau_final,
            decay_steps=max(total_steps, 1),
        )
    step = make_train_step(
        model,
        tasks,
        optimizer,
        sample=config.sample,
        sample_scope=config.sample_scope,
        entropy_weight=config.entropy_weight,
        fixed_assignment=jnp.eye(n_tasks, dtype=jnp.float32) if stl else None,
        sample_shards=mesh.shape["data"],
    )
    lr_fn = lr if callable(lr) else (lambda _s, v=lr: v)
    lr_s_fn = lr_s if callable(lr_s) else (lambda _s, v=lr_s: v)

    @functools.partial(jax.jit, out_shardings=replicated(mesh))
    def val_outputs(params, mstate, x, groups):
        return hard_outputs(model, params, mstate, x, groups)

    def evaluate_split(outputs_fn, split) -> dict:
        if stream:
            return evaluate_stream(outputs_fn, split, data, workers=config.workers)
        return evaluate(outputs_fn, split.x, split.y, data)

    def epoch_end(st, epoch, losses):
        groups_now = read_groups(st.assignment)
        val = evaluate_split(
            lambda xb: val_outputs(st.params, st.model_state, xb, groups_now),
            data.val,
        )
        _emit(
            callback,
            "epoch",
            {
                "phase": "search",
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "tau": float(tau_fn(int(st.step) - 1)),
                "val_total_loss": val["total_loss"],
                "non_empty_groups": int(len(np.unique(groups_now))),
            },
        )

    # Stage 1: the one-shot search.
    _emit(
        callback,
        "start",
        {
            "phase": "search",
            "epochs": config.epochs,
            "steps_per_epoch": steps_per_epoch,
        },
    )
    if stream:
        search = functools.partial(
            run_search_stream, split=data.train, workers=config.workers
        )
    else:
        search = functools.partial(
            run_search, x=np.asarray(data.train.x), y=np.asarray(data.train.y)
        )
    state, history = search(
        init,
        step.core,
        tau_fn,
        seed=config.seed,
        epochs=config.epochs,
        batch_size=config.batch_size,
        mesh=mesh,
        log_every=config.log_every,
        learning_rate=lr_fn,
        assignment_learning_rate=(lambda _s: 0.0) if stl else lr_s_fn,
        checkpoints=checkpoints,
        checkpoint_every=config.checkpoint_every,
        resume=resume,
        callback=callback,
        check=lambda metrics, index, first: _raise_fault(metrics, index, first, tasks),
        epoch_end=epoch_end,
    )
    # The later stages are small: every process runs them on its own copy.
    state = to_local(state, mesh)

    # Stage 2: read the groups off S and prune.
    assignment = read_groups(state.assignment)
    probabilities = np.asarray(jax.nn.softmax(state.assignment, axis=-1))
    params, mstate, kept, task_branch = prune(
        state.params, state.model_state, assignment
    )
    names = [t.name for t in tasks]
    groups = [[names[i] for i in np.flatnonzero(assignment == g)] for g in kept]
    _emit(
        callback,
        "groups",
        {"groups": groups, "assignment": assignment.tolist(), "kept": kept.tolist()},
    )

    @jax.jit
    def pruned_outputs(params, mstate, x):
        return model.apply_pruned(params, mstate, x, task_branch)[0]

    # Stage 3: fine-tune the pruned network, keeping the best validation epoch.
    # The fine-tuning epoch donates its carry, so the best weights are copies.
    best = jax.tree.map(jnp.copy, (params, mstate))
    best_val = evaluate_split(lambda xb: pruned_outputs(params, mstate, xb), data.val)
    pruned_val_loss = best_val["total_loss"]
    best_epoch = -1  # the pruned network before fine-tuning
    if config.finetune_epochs:
        ft_opt = make_optimizer(config.learning_rate, weight_decay=config.weight_decay)
        ft_opt = _weights_only(ft_opt)
        ft_steps = n_train // config.batch_size
        if stream:
            ft_epoch = _stream_finetune(
                make_pruned_step(model, tasks, ft_opt, task_branch),
                data.train,
                config,
                ft_steps,
            )
        else:
            ft_epoch = _memory_finetune(
                make_pruned_epoch_fn(
                    model, tasks, ft_opt, task_branch, config.batch_size
                ),
                data.train,
                k_data,
            )
        carry = (params, mstate, ft_opt.init(params), jax.random.fold_in(root, 7))
        _emit(
            callback,
            "start",
            {
                "phase": "finetune",
                "epochs": config.finetune_epochs,
                "steps_per_epoch": ft_steps,
            },
        )
        try:
            for epoch in range(config.finetune_epochs):
                carry, ft_metrics = ft_epoch(carry, epoch)
                bad = find_fault(ft_metrics)
                if bad is not None:
                    fault = np.asarray(ft_metrics["fault"][bad])
                    first = names[int(np.flatnonzero(fault)[0])] if fault.any() else ""
                    who = (
                        f"task {first!r} has a non-finite loss or head gradient"
                        if fault.any()
                        else "a shared branch gradient is not finite"
                    )
                    raise NumericalError(
                        f"Fine-tuning stopped at step {epoch * ft_steps + bad} "
                        f"(epoch {epoch}): {who}. Lower the learning rate (--lr) or "
                        "check the inputs for extreme values."
                    )
                losses = np.asarray(ft_metrics["task_losses"]).sum(axis=1)
                p, s = carry[0], carry[1]
                val = evaluate_split(
                    lambda xb, p=p, s=s: pruned_outputs(p, s, xb), data.val
                )
                if val["total_loss"] < best_val["total_loss"]:
                    best, best_val = jax.tree.map(jnp.copy, (p, s)), val
                    best_epoch = epoch
                _emit(
                    callback,
                    "epoch",
                    {
                        "phase": "finetune",
                        "epoch": epoch,
                        "train_loss": float(losses.mean()),
                        "val_total_loss": val["total_loss"],
                        "non_empty_groups": int(len(kept)),
                    },
                )
        finally:
            ft_epoch.close()

    # Stage 4: evaluate the fine-tuned pruned network on the test split.
    params, mstate = best
    test = evaluate_split(lambda xb: pruned_outputs(params, mstate, xb), data.test)
    pruned = PrunedNetwork(params, mstate, kept, task_branch)
    result = FitResult(
        tasks=names,
        groups=groups,
        assignment=assignment,
        probabilities=probabilities,
        test=test,
        val=best_val,
        history=history,
        search_state=state,
        pruned=pruned,
        config=config,
        finetune_selected_epoch=best_epoch,
        finetune_selected_val_loss=float(best_val["total_loss"]),
        pruned_val_loss=float(pruned_val_loss),
    )
    _emit(
        callback,
        "done",
        {
            "test": test,
            "finetune_epochs": config.finetune_epochs,
            "finetune_selected_epoch": best_epoch,
        },
    )
    return result


def search_steps_per_epoch(
    n_train: int, config: RunConfig, stream: bool | None = None
) -> int:
    """Search steps per epoch: ``n_train // batch_size`` in memory; streamed,
    each process's shard over its share of the batch (the same with one
    process). ``stream`` defaults to ``config.stream``."""
    if config.stream if stream is None else stream:
        return stream_layout(n_train, config.batch_size)["steps_per_epoch"]
    return n_train // config.batch_size


def _memory_finetune(epoch_fn, train, k_data):
    """``epoch(carry, e) -> (carry, host metrics)`` on the in-memory split
    (with a no-op ``epoch.close()``)."""
    x_train = jnp.asarray(train.x)
    # NaN marks a missing label: device_put moves it without an operation that
    # jax_debug_nans would flag.
    y_train = jax.device_put(np.asarray(train.y, np.float32))

    def epoch(carry, e):
        key = jax.random.fold_in(k_data, FINETUNE_EPOCH_OFFSET + e)
        carry, metrics = epoch_fn(carry, x_train, y_train, key)
        return carry, jax.device_get(metrics)

    epoch.close = lambda: None
    return epoch


def _stream_finetune(step_fn, train, config: RunConfig, steps_per_epoch: int):
    """``epoch(carry, e) -> (carry, host metrics)`` on batches of a stream;
    ``epoch.close()`` stops the reading thread.

    Every process reads the whole train split (fine-tuning runs on each
    process's own copy of the network), epoch ``e`` in the order of
    :func:`tgjax.data.stream.epoch_order` for ``FINETUNE_EPOCH_OFFSET + e``.
    """
    step = jax.jit(step_fn, donate_argnums=0)
    batches = step_batches(
        train,
        seed=config.seed,
        batch_size=config.batch_size,
        start=0,
        stop=config.finetune_epochs * steps_per_epoch,
        epoch0=FINETUNE_EPOCH_OFFSET,
        workers=config.workers,
    )
    feed = None

    def epoch(carry, e):
        nonlocal feed
        if feed is None:
            feed = Prefetcher(
                batches, lambda b: jax.device_put({"x": b["x"], "y": b["y"]})
            )
        outs = []
        for _ in range(steps_per_epoch):
            carry, metrics = step(carry, feed.get())
            outs.append(metrics)
        host = jax.device_get(outs)
        return carry, {k: np.stack([m[k] for m in host]) for k in host[0]}

    def close():
        if feed is not None:
            feed.close()
        else:
            batches.close()

    epoch.close = close
    return epoch


def _weights_only(opt: optax.GradientTransformation) -> optax.GradientTransformation:
    """Adapts the ``{"params", "assignment"}`` optimizer to a bare params tree."""

    def init(params):
        return opt.init({"params": params, "assignment": jnp.zeros(())})

    def update(grads, state, params=None):
        wrap = {"params": grads, "assignment": jnp.zeros(())}
        p = None if params is None else {"params": params, "assignment": jnp.zeros(())}
        updates, state = opt.update(wrap, state, p)
        return updates["params"], state

    return optax.GradientTransformation(init, update)


def fit_arrays(
    x: np.ndarray,
    y: np.ndarray,
    tasks: Sequence[Task],
    config: RunConfig | None = None,
    *,
    fractions: tuple[float, float] = (0.2, 0.2),
    split_seed: int = 0,
    callback: Callback | None = None,
) -> FitResult:
    """:func:`fit` on NumPy arrays, split at random into train/val/test.

    Args:
      x: `[examples, ...]` inputs.
      y: `[examples, tasks]` labels (class index or value; NaN = missing).
      tasks: one :class:`Task` per label column.
      config: settings.
      fractions: validation and test fractions.
      split_seed: seed of the split.

    Example:
      >>> import numpy as np, tgjax
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(200, 5)).astype("float32")
      >>> y = np.stack([x[:, 0] > 0, x[:, 1] > 0], 1).astype("float32")
      >>> tasks = [tgjax.Task("a", "binary"), tgjax.Task("b", "binary")]
      >>> res = tgjax.fit_arrays(x, y, tasks, tgjax.RunConfig(groups=2, epochs=2,
      ...                        finetune_epochs=1, batch_size=32, hidden=(8,)))
      >>> len(res.assignment)
      2
    """
    x, y = check_arrays(x, y, check_tasks(tasks))
    data = from_arrays("arrays", tasks, x, y, fractions=fractions, seed=split_seed)
    return fit(data, config, callback=callback)
