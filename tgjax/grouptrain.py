"""Training fixed groupings from scratch, many groupings in one program.

A grouping with groups G_1..G_m is a network with m branches in which every
task has a head on the branch of each group that contains it. Written as a
`[groups, tasks]` 0/1 membership matrix M, its training loss is
``sum_{g, i} M_gi * L_ig`` with L the search network's `[tasks, groups]` loss
matrix, so the search network with a fixed assignment trains any grouping:
a partition (one group per task, the pruned network of the method), or
overlapping groups (a task served by several groups, as task affinity
grouping allows). Heads of non-members get no gradient and Adam leaves them
unchanged.

:class:`GroupingTrainer` stacks the groupings of one seed on a leading axis
and trains them with one ``vmap`` inside one ``lax.scan`` per epoch. All
groupings of a seed start from the same weights (tied initialisation: every
branch starts from the same weights and so does every head of a task) and
see the same batches, so within a seed they differ only by the grouping;
this common randomness makes the comparison of groupings paired.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tgjax.compiletime import CompileClock
from tgjax.config import RunConfig
from tgjax.data.base import MultiTaskData
from tgjax.pipeline import build_model
from tgjax.tasks import TaskCodes, split_labels, task_errors, task_losses
from tgjax.train import loss_matrix

Grouping = Sequence[Sequence[int]]


def membership(grouping: Grouping, num_tasks: int, num_groups: int) -> np.ndarray:
    """The `[groups, tasks]` 0/1 membership matrix of a grouping.

    Args:
      grouping: groups of task indices (they may overlap).
      num_tasks: N.
      num_groups: rows of the matrix (>= the number of groups; extra rows
        stay empty).

    Raises:
      ValueError: for an empty group, an index out of range, too many groups
        or a task in no group.

    Example:
      >>> membership([(0, 2), (1,)], 3, 2).tolist()
      [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    if len(grouping) > num_groups:
        raise ValueError(
            f"The grouping {grouping} has {len(grouping)} groups; at most "
            f"{num_groups} fit."
        )
    m = np.zeros((num_groups, num_tasks), np.float32)
    for g, members in enumerate(grouping):
        if not len(members):
            raise ValueError(f"Group {g} of {grouping} is empty.")
        for i in members:
            if not 0 <= int(i) < num_tasks:
                raise ValueError(
                    f"Task index {i} in {grouping} is outside [0, {num_tasks})."
                )
            m[g, int(i)] = 1.0
    uncovered = np.flatnonzero(m.sum(0) == 0)
    if uncovered.size:
        raise ValueError(
            f"The grouping {grouping} leaves task(s) {uncovered.tolist()} in no "
            "group; every task needs a group."
        )
    return m


@dataclasses.dataclass
class GroupingScores:
    """What training a list of groupings measured, one row per grouping.

    Each grouping is scored at its best validation epoch; a task served by
    several groups is scored by the group with the lowest validation loss on
    it at that epoch.

    Attributes:
      val_total: `[groupings]` sum over tasks of the validation loss.
      test_total: `[groupings]` sum over tasks of the test loss.
      val_loss, test_loss: `[groupings, tasks]` per-task losses.
      test_metric: `[groupings, tasks]` test error percentage
        (classification) or mean absolute error in original units
        (regression).
      served_by: `[groupings, tasks]` index of the group scoring each task.
      best_epoch: `[groupings]` epoch (from 0) of the best validation total.
      val_history: `[epochs, groupings]` validation total after each epoch.
      steps: optimizer steps of each grouping's training run.
      num_groups: `[groupings]` number of groups (branches) of each grouping.
      wall_seconds: `[groupings]` share of the wall time of its batch of
        groupings (compilation included).
      compile_seconds: `[groupings]` share of the part of that wall time
        spent compiling (non-zero only for the first batch of each shape;
        see :mod:`tgjax.compiletime`).
    """

    val_total: np.ndarray
    test_total: np.ndarray
    val_loss: np.ndarray
    test_loss: np.ndarray
    test_metric: np.ndarray
    served_by: np.ndarray
    best_epoch: np.ndarray
    val_history: np.ndarray
    steps: int
    num_groups: np.ndarray
    wall_seconds: np.ndarray
    compile_seconds: np.ndarray


class GroupingTrainer:
    """Trains many fixed groupings of one data set, vmapped per seed.

    Compiled programs are kept per (number of groups, number of groupings),
    so later seeds and calls reuse them.

    Args:
      data: the data set.
      config: network and optimiser settings (``branch``, ``hidden``,
        ``batch_size``, ``learning_rate``, ``weight_decay``); the
        initialisation is always tied (see the module note).
      epochs: training epochs of every grouping.
      chunk_size: most groupings trained in one program (memory bound).
      eval_batch_size: examples per evaluation batch.

    Example:
      >>> from tgjax.data import load_dataset
      >>> data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
      >>> tr = GroupingTrainer(data, RunConfig(hidden=(8,)), epochs=1)
      >>> s = tr.run([[(0, 1)], [(0,), (1,)]], seed=0)
      >>> s.val_total.shape
      (2,)
    """

    def __init__(
        self,
        data: MultiTaskData,
        config: RunConfig,
        epochs: int,
        *,
        chunk_size: int = 128,
        eval_batch_size: int = 1024,
    ):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}.")
        if config.batch_size > len(data.train):
            raise ValueError(
                f"batch_size ({config.batch_size}) is larger than the training "
                f"split ({len(data.train)} examples)."
            )
        self.data = data
        self.config = dataclasses.replace(config, init="tied")
        self.epochs = epochs
        self.chunk_size = chunk_size
        self.eval_batch_size = eval_batch_size
        self.codes = TaskCodes.from_tasks(data.tasks)
        self.steps_per_epoch = len(data.train) // config.batch_size
        self._fns: dict[int, tuple] = {}
        self._x = jnp.asarray(data.train.x)
        self._y = jnp.asarray(data.train.y)

    @property
    def steps(self) -> int:
        """Optimizer steps of one grouping's training run."""
        return self.steps_per_epoch * self.epochs

    def _optimizer(self):
        c = self.config
        if c.weight_decay:
            return optax.adamw(c.learning_rate, weight_decay=c.weight_decay)
        return optax.adam(c.learning_rate)

    def _functions(self, num_groups: int):
        if num_groups in self._fns:
            return self._fns[num_groups]
        model = build_model(self.config, self.data.tasks, num_groups)
        opt = self._optimizer()
        codes = self.codes
        batch_size = self.config.batch_size

        def init(key, x_example):
            params, mstate = model.init_variables(key, x_example)
            return params, mstate, opt.init(params)

        def step(carry, member, xb, yb):
            params, mstate, opt_state = carry

            def objective(p):
                lm, new_state = loss_matrix(model, p, mstate, xb, yb, codes, train=True)
                return jnp.sum(member.T * lm), new_state

            (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(
                params
            )
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = opt.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
            return (params, new_state, opt_state), loss

        def epoch(carry, members, x, y, key):
            n = x.shape[0]
            steps = n // batch_size
            perm = jax.random.permutation(key, n)[: steps * batch_size]
            perm = perm.reshape(steps, batch_size)

            def body(c, idx):
                return jax.vmap(step, in_axes=(0, 0, None, None))(
                    c, members, x[idx], y[idx]
                )

            return jax.lax.scan(body, carry, perm)

        def evaluate_one(params, mstate, xb, yb):
            out, _ = model.apply(params, mstate, xb, train=False)
            labels, mask = split_labels(yb)
            count = jnp.sum(mask, axis=0).astype(jnp.float32)
            loss = jax.vmap(lambda o: task_losses(o, labels, mask, codes) * count)(out)
            err = jax.vmap(lambda o: task_errors(o, labels, mask, codes)[0])(out)
            return loss.T, err.T, count  # [tasks, groups] sums, [tasks]

        fns = (
            jax.jit(init),
            jax.jit(epoch, donate_argnums=0),
            jax.jit(jax.vmap(evaluate_one, in_axes=(0, 0, None, None))),
        )
        self._fns[num_groups] = fns
        return fns

    def _evaluate(self, fn, params, mstate, split):
        loss = err = count = None
        for start in range(0, len(split), self.eval_batch_size):
            sl = slice(start, start + self.eval_batch_size)
            res = jax.device_get(fn(params, mstate, split.x[sl], split.y[sl]))
            if loss is None:
                loss, err, count = (np.asarray(r, np.float64) for r in res)
            else:
                loss += res[0]
                err += res[1]
                count += res[2]
        safe = np.maximum(count, 1.0)[..., None]
        return loss / safe, err / safe  # [groupings, tasks, groups] means

    def run(
        self,
        groupings: Sequence[Grouping],
        seed: int,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> GroupingScores:
        """Trains every grouping from the seed's initialisation.

        Args:
          groupings: groupings of task indices (groups may overlap).
          seed: seed of the initialisation and of the data order.
          progress: optional ``progress(done, total)``, called after each
            compiled batch of groupings.

        Returns:
          :class:`GroupingScores`, rows in the order of ``groupings``.
        """
        n_tasks = len(self.data.tasks)
        groupings = [tuple(tuple(int(i) for i in g) for g in gr) for gr in groupings]
        if not groupings:
            raise ValueError("groupings is empty; pass at least one grouping.")
        by_size: dict[int, list[int]] = {}
        for p, gr in enumerate(groupings):
            membership(gr, n_tasks, max(len(gr), 1))  # validates
            by_size.setdefault(len(gr), []).append(p)
        n = len(groupings)
        out = {
            "val_total": np.zeros(n),
            "test_total": np.zeros(n),
            "val_loss": np.zeros((n, n_tasks)),
            "test_loss": np.zeros((n, n_tasks)),
            "test_metric": np.zeros((n, n_tasks)),
            "served_by": np.zeros((n, n_tasks), np.int64),
            "best_epoch": np.zeros(n, np.int64),
            "val_history": np.zeros((self.epochs, n)),
            "wall_seconds": np.zeros(n),
            "compile_seconds": np.zeros(n),
        }
        root = jax.random.key(seed)
        k_init, k_data = jax.random.split(root)
        scale = np.where(
            [t.is_classification for t in self.data.tasks],
            100.0,
            np.asarray(self.data.target_std, np.float64),
        )
        done = 0
        for size, members_idx in sorted(by_size.items()):
            init, epoch_fn, eval_fn = self._functions(size)
            for start in range(0, len(members_idx), self.chunk_size):
                idx = members_idx[start : start + self.chunk_size]
                with CompileClock() as clock:
                    self._run_chunk(
                        [groupings[p] for p in idx],
                        np.asarray(idx),
                        size,
                        (init, epoch_fn, eval_fn),
                        k_init,
                        k_data,
                        scale,
                        out,
                    )
                out["wall_seconds"][idx] = clock.wall_seconds / len(idx)
                out["compile_seconds"][idx] = clock.compile_seconds / len(idx)
                done += len(idx)
                if progress is not None:
                    progress(done, n)
        return GroupingScores(
            steps=self.steps,
            num_groups=np.array([len(g) for g in groupings]),
            **out,
        )

    def _run_chunk(self, chunk, rows, size, fns, k_init, k_data, scale, out):
        init, epoch_fn, eval_fn = fns
        n_tasks = len(self.data.tasks)
        members = jnp.asarray(np.stack([membership(g, n_tasks, size) for g in chunk]))
        is_member = np.asarray(members).transpose(0, 2, 1) > 0  # [P, tasks, groups]
        single = init(k_init, self._x[:2])
        carry = jax.tree.map(
            lambda a: jnp.broadcast_to(a, (len(chunk),) + a.shape).copy(), single
        )
        best = np.full(len(chunk), np.inf)
        p_range = np.arange(len(chunk))[:, None]
        t_range = np.arange(n_tasks)[None, :]
        for e in range(self.epochs):
            carry, _ = epoch_fn(
                carry, members, self._x, self._y, jax.random.fold_in(k_data, e)
            )
            params, mstate = carry[0], carry[1]
            v_loss, _ = self._evaluate(eval_fn, params, mstate, self.data.val)
            served = np.argmin(np.where(is_member, v_loss, np.inf), axis=-1)
            v_task = v_loss[p_range, t_range, served]
            v_total = v_task.sum(-1)
            out["val_history"][e, rows] = v_total
            improved = v_total < best
            if not improved.any():
                continue
            t_loss, t_err = self._evaluate(eval_fn, params, mstate, self.data.test)
            t_task = t_loss[p_range, t_range, served]
            t_metric = t_err[p_range, t_range, served] * scale[None, :]
            best = np.where(improved, v_total, best)
            r = rows[improved]
            out["val_total"][r] = v_total[improved]
            out["val_loss"][r] = v_task[improved]
            out["test_loss"][r] = t_task[improved]
            out["test_total"][r] = t_task[improved].sum(-1)
            out["test_metric"][r] = t_metric[improved]
            out["served_by"][r] = served[improved]
            out["best_epoch"][r] = e
