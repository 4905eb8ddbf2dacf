"""The search network: a shared backbone, K stacked branches, K x N heads.

Any Flax linen modules serve as backbone, branch and head. The K branches are
one module whose parameters are stacked on a leading `groups` axis; the heads
are one module vmapped over `[groups, tasks]`. No Python loop over tasks runs
in the hot path.

How the K branches are evaluated is a per-backend choice with the same
parameters and results: ``jax.vmap`` over the `groups` axis, or a trace-time
loop that applies the branch K times to slices of the stacked parameters.
vmap turns K convolutions with different kernels into one grouped
convolution (``feature_group_count=K``), which accelerators run well but
XLA:CPU runs through a slow generic path (tens of times slower than K plain
convolutions); the loop keeps K ordinary convolutions that XLA:CPU hands to
its fast kernels. Dense layers batch well on every backend.
``branch_strategy="auto"`` therefore picks the loop for branches with
convolutions on CPU and vmap everywhere else.

After the search, :func:`prune` keeps only the branches some task picked and
each task's selected head. The pruned network has parameters stacked as
`[kept_groups, ...]` for branches and `[tasks, ...]` for heads, and a static
map from each task to its branch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
INITS = ("tied", "independent")
BRANCH_STRATEGIES = ("auto", "vmap", "loop")


class MLP(nn.Module):
    """A ReLU multi-layer perceptron on flattened inputs.

    Attributes:
      features: widths of the hidden layers; the last is the output width.
    """

    features: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for width in self.features:
            x = nn.relu(nn.Dense(width)(x))
        return x


# The nine taps of a 3x3 window, in row-major order.
_TAPS = tuple((di, dj) for di in range(3) for dj in range(3))


def _pool_taps(h: Array) -> list[Array]:
    """The nine strided views of a 3x3 stride-2 VALID pool's windows.

    The input is split into its four stride-2 phases (even/odd rows times
    even/odd columns, padded with -inf to even sizes), so every tap is a
    contiguous slice of one phase rather than a strided view of the input.
    """
    b, n, w, c = h.shape
    pad = ((0, 0), (0, n % 2), (0, w % 2), (0, 0))
    if n % 2 or w % 2:
        h = jnp.pad(h, pad, constant_values=-jnp.inf)
    lh, lw = h.shape[1] // 2, h.shape[2] // 2
    ph = h.reshape(b, lh, 2, lw, 2, c)
    mh, mw = (n - 3) // 2 + 1, (w - 3) // 2 + 1
    return [
        ph[:, di // 2 : di // 2 + mh, di % 2, dj // 2 : dj // 2 + mw, dj % 2]
        for di, dj in _TAPS
    ]


def _pool_forward(h: Array) -> tuple[Array, Array]:
    taps = _pool_taps(h)
    out = taps[0]
    for t in taps[1:]:
        out = jnp.maximum(out, t)
    # The first tap (row-major) that holds the window's maximum.
    first = jnp.full(out.shape, len(taps) - 1, jnp.int8)
    for t in reversed(range(len(taps) - 1)):
        first = jnp.where(taps[t] == out, jnp.int8(t), first)
    return out, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _max_pool(n: int, w: int, h: Array) -> Array:
    return _pool_forward(h)[0]


def _max_pool_fwd(n, w, h):
    return _pool_forward(h)  # the residual is the winning tap


def _max_pool_bwd(n, w, first, g):
    b, mh, mw, c = g.shape
    lh, lw = (n + 1) // 2, (w + 1) // 2
    phases = {}
    for t, (di, dj) in enumerate(_TAPS):
        part = jnp.where(first == t, g, jnp.zeros((), g.dtype))
        oh, ow = di // 2, dj // 2
        part = jnp.pad(part, ((0, 0), (oh, lh - mh - oh), (ow, lw - mw - ow), (0, 0)))
        key = (di % 2, dj % 2)
        phases[key] = part if key not in phases else phases[key] + part
    rows = [jnp.stack([phases[(r, 0)], phases[(r, 1)]], axis=3) for r in range(2)]
    grad = jnp.stack(rows, axis=2).reshape(b, 2 * lh, 2 * lw, c)
    return (grad[:, :n, :w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3_stride2(h: Array) -> Array:
    """3x3 max-pool, stride 2, VALID padding, on `[batch, height, width, C]`.

    The same values and the same gradient as
    ``nn.max_pool(h, (3, 3), (2, 2), "VALID")``: each window's gradient goes
    to its first maximum in row-major order (up to the summation order where
    windows overlap). XLA:CPU differentiates a window max through
    select-and-scatter, a slow generic path; here the forward pass records
    which of the nine taps won (one int8 per output) and the backward pass
    writes the gradient into the four stride-2 phases of the input with
    contiguous, fusible elementwise operations.
    """
    return _max_pool(h.shape[1], h.shape[2], h)


class CelebAEncoder(nn.Module):
    """The CelebA group encoder of the DMTG paper, on `[batch, 64, 64, 3]`.

    conv3x3(64, no bias) + BatchNorm + ReLU, max-pool 3 stride 2, one residual
    block of two conv3x3(64) + BatchNorm, average-pool 2, flatten: 14,400
    features for 64x64 inputs.
    """

    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv_bn(h):
            h = nn.Conv(self.width, (3, 3), padding=1, use_bias=False)(h)
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)

        h = nn.relu(conv_bn(x))
        h = max_pool_3x3_stride2(h)
        r = conv_bn(nn.relu(conv_bn(h)))
        h = nn.relu(h + r)
        # A sum pool times a float constant: nn.avg_pool divides by an int
        # window size, which strict dtype promotion rejects.
        h = 0.25 * nn.pool(h, 0.0, jax.lax.add, (2, 2), (2, 2), "VALID")
        return h.reshape((h.shape[0], -1))


def _takes_train(module: nn.Module) -> bool:
    return "train" in inspect.signature(type(module).__call__).parameters


def _apply(module, variables, x, train, rng):
    """Applies a module; returns (output, updated non-parameter collections)."""
    kwargs = {"train": train} if _takes_train(module) else {}
    rngs = {"dropout": rng} if (train and rng is not None) else None
    mutable = [c for c in variables if c != "params"] if train else False
    if mutable:
        out, new = module.apply(variables, x, rngs=rngs, mutable=mutable, **kwargs)
        return out, dict(new)
    out = module.apply(variables, x, rngs=rngs, **kwargs)
    return out, {c: v for c, v in variables.items() if c != "params"}


def _first(tree):
    return jax.tree.map(lambda a: a[0], tree)


def _split(variables) -> tuple[dict, dict]:
    variables = dict(variables)
    return variables.pop("params", {}), variables


@dataclasses.dataclass(frozen=True)
class GroupedModel:
    """K branches and K x N heads over an optional shared backbone.

    Attributes:
      branch: Flax module of one group branch, `[batch, ...] -> [batch, F]`.
      head: Flax module of one task head, `[batch, F] -> [batch, D]`, with D
        the widest task output (see :func:`tgjax.tasks.output_size`).
      num_groups: K.
      num_tasks: N.
      backbone: optional Flax module shared by all branches.
      init: ``"tied"`` (default, as the reference: all K branches start
        identical and so do the K copies of each task head) or
        ``"independent"``.
      branch_strategy: how the K branches run: ``"vmap"`` (one batched
        computation), ``"loop"`` (K calls unrolled at trace time) or
        ``"auto"`` (default: ``"loop"`` on CPU for a branch containing a
        convolution, ``"vmap"`` otherwise). Parameters, outputs and gradients
        are the same for all three.

    Modules whose ``__call__`` takes ``train`` get it; batch statistics and
    other non-parameter collections are carried as model state.
    """

    branch: nn.Module
    head: nn.Module
    num_groups: int
    num_tasks: int
    backbone: nn.Module | None = None
    init: str = "tied"
    branch_strategy: str = "auto"

    def __post_init__(self):
        for name in ("num_groups", "num_tasks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}.")
        if self.branch_strategy not in BRANCH_STRATEGIES:
            raise ValueError(
                f"branch_strategy must be one of {BRANCH_STRATEGIES}, "
                f"got {self.branch_strategy!r}."
            )

    def resolved_branch_strategy(self, x: Array) -> str:
        """``"vmap"`` or ``"loop"``: the strategy used for inputs like ``x``.

        Args:
          x: `[batch, ...]` example inputs (only shapes matter).
        """
        if self.branch_strategy != "auto":
            return self.branch_strategy
        params, state = jax.eval_shape(self.init_variables, jax.random.key(0), x)
        h = x
        if self.backbone is not None:
            h = jax.eval_shape(
                lambda p, s, x: _apply(
                    self.backbone, {"params": p, **s}, x, False, None
                )[0],
                params["backbone"],
                state["backbone"],
                x,
            )
        return self._auto_strategy(h, params["branches"], state["branches"])

    def _auto_strategy(self, h, branch_params, branch_state) -> str:
        """Resolves ``"auto"`` at trace time from the backend and the branch."""
        if self.branch_strategy != "auto":
            return self.branch_strategy
        if jax.default_backend() != "cpu":
            return "vmap"
        one = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
            (branch_params, branch_state),
        )
        jaxpr = jax.make_jaxpr(
            lambda p, s, h: _apply(self.branch, {"params": p, **s}, h, False, None)
        )(*one, jax.ShapeDtypeStruct(h.shape, h.dtype))
        # The printed jaxpr includes nested calls, so this finds convolutions
        # at any depth of the branch.
        return "loop" if "conv_general_dilated" in str(jaxpr) else "vmap"

    def init_variables(self, key: Array, x: Array) -> tuple[dict, dict]:
        """Initialises parameters and model state from one example batch.

        Args:
          key: PRNG key.
          x: `[batch, ...]` example inputs (only shapes matter).

        Returns:
          ``(params, state)``: dicts with keys ``backbone``, ``branches``
          (leaves `[groups, ...]`) and ``heads`` (leaves `[groups, tasks, ...]`).
        """
        k_bb, k_br, k_hd = jax.random.split(key, 3)
        k, n = self.num_groups, self.num_tasks
        if self.backbone is not None:
            bb_vars = self.backbone.init(k_bb, x, **self._kw(self.backbone))
            h, _ = _apply(self.backbone, bb_vars, x, False, None)
        else:
            bb_vars, h = {}, x
        group_keys = jax.random.split(k_br, k)
        head_keys = jax.random.split(k_hd, (k, n))
        if self.init == "tied":
            group_keys = jnp.broadcast_to(group_keys[:1], group_keys.shape)
            head_keys = jnp.broadcast_to(head_keys[:1], head_keys.shape)
        br_vars = jax.vmap(lambda kk: self.branch.init(kk, h, **self._kw(self.branch)))(
            group_keys
        )
        feats, _ = _apply(
            self.branch, jax.tree.map(lambda a: a[0], br_vars), h, False, None
        )
        hd_vars = jax.vmap(jax.vmap(lambda kk: self.head.init(kk, feats)))(head_keys)
        parts = {"backbone": bb_vars, "branches": br_vars, "heads": hd_vars}
        params, state = {}, {}
        for name, v in parts.items():
            params[name], state[name] = _split(v)
        return params, state

    @staticmethod
    def _kw(module):
        return {"train": False} if _takes_train(module) else {}

    def _features(self, params, state, x, train, rng):
        """Backbone then all branches: `[groups, batch, F]` and new state."""
        r_bb, r_br = (None, None) if rng is None else jax.random.split(rng)
        if self.backbone is not None:
            h, bb_state = _apply(
                self.backbone,
                {"params": params["backbone"], **state["backbone"]},
                x,
                train,
                r_bb,
            )
        else:
            h, bb_state = x, state["backbone"]
        n_br = jax.tree.leaves(params["branches"])[0].shape[0]
        br_rngs = None if r_br is None else jax.random.split(r_br, n_br)

        def one_branch(p, s, r):
            return _apply(self.branch, {"params": p, **s}, h, train, r)

        # One branch is a plain call (so K = 1 is exactly plain multi-task
        # learning); otherwise the strategy picks vmap or an unrolled loop.
        strategy = self._auto_strategy(h, params["branches"], state["branches"])
        if strategy == "vmap" and n_br > 1:
            feats, br_state = jax.vmap(
                one_branch, in_axes=(0, 0, 0 if br_rngs is not None else None)
            )(params["branches"], state["branches"], br_rngs)
        else:
            outs = [
                one_branch(
                    jax.tree.map(lambda a, k=k: a[k], params["branches"]),
                    jax.tree.map(lambda a, k=k: a[k], state["branches"]),
                    None if br_rngs is None else br_rngs[k],
                )
                for k in range(n_br)
            ]
            feats = jnp.stack([f for f, _ in outs])
            br_state = jax.tree.map(lambda *a: jnp.stack(a), *[s for _, s in outs])
        return feats, {"backbone": bb_state, "branches": br_state}

    def apply(self, params, state, x, *, train: bool = False, rng=None):
        """All K x N head outputs of the search network.

        Args:
          params, state: from :meth:`init_variables`.
          x: `[batch, ...]` inputs.
          train: training mode (batch statistics update, dropout).
          rng: dropout key, used only when ``train``.

        Returns:
          ``(outputs, new_state)`` with outputs `[groups, tasks, batch, D]`.
        """
        feats, new_state = self._features(params, state, x, train, rng)

        def heads_of_group(hp, hs, f):
            return jax.vmap(
                lambda p, s: _apply(self.head, {"params": p, **s}, f, False, None)[0]
            )(hp, hs)

        if feats.shape[0] == 1:
            out = heads_of_group(
                _first(params["heads"]), _first(state["heads"]), feats[0]
            )[None]
        else:
            out = jax.vmap(heads_of_group)(params["heads"], state["heads"], feats)
        new_state["heads"] = state["heads"]
        return out, new_state

    def apply_pruned(self, params, state, x, task_branch, *, train=False, rng=None):
        """Outputs of a pruned network: each task's own head on its branch.

        Args:
          params, state: from :func:`prune`.
          x: `[batch, ...]` inputs.
          task_branch: `[tasks]` int, the (pruned) branch index of each task.

        Returns:
          ``(outputs, new_state)`` with outputs `[tasks, batch, D]`.
        """
        feats, new_state = self._features(params, state, x, train, rng)
        per_task = feats[jnp.asarray(task_branch)]
        out = jax.vmap(
            lambda p, s, f: _apply(self.head, {"params": p, **s}, f, False, None)[0]
        )(params["heads"], state["heads"], per_task)
        new_state["heads"] = state["heads"]
        return out, new_state


def prune(
    params: dict, state: dict, groups
) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Drops empty groups and unselected heads, keeping trained weights.

    Args:
      params, state: search-network variables (branches `[groups, ...]`,
        heads `[groups, tasks, ...]`).
      groups: `[tasks]` int, the group each task picked (see
        :func:`tgjax.read_groups`).

    Returns:
      ``(params, state, kept, task_branch)``: pruned variables with branches
      `[kept_groups, ...]` and heads `[tasks, ...]`; ``kept`` the original
      indices of the surviving groups, in increasing order (surviving branch
      j carries the weights of original group ``kept[j]``); ``task_branch``
      the index into ``kept`` of each task's branch.

    Example:
      >>> import numpy as np
      >>> from tgjax.model import prune
      >>> p = {"backbone": {}, "branches": {"w": np.arange(3.)},
      ...      "heads": {"w": np.arange(6.).reshape(3, 2)}}
      >>> s = {"backbone": {}, "branches": {}, "heads": {}}
      >>> _, _, kept, tb = prune(p, s, np.array([2, 2]))
      >>> kept.tolist(), tb.tolist()
      ([2], [0, 0])
    """
    groups = np.asarray(groups, dtype=np.int64)
    kept = np.unique(groups)
    task_branch = np.searchsorted(kept, groups)
    tasks = np.arange(groups.shape[0])

    def take_branches(tree):
        return jax.tree.map(lambda a: jnp.asarray(a)[kept], tree)

    def take_heads(tree):
        return jax.tree.map(lambda a: jnp.asarray(a)[groups, tasks], tree)

    new_params = {
        "backbone": params["backbone"],
        "branches": take_branches(params["branches"]),
        "heads": take_heads(params["heads"]),
    }
    new_state = {
        "backbone": state["backbone"],
        "branches": take_branches(state["branches"]),
        "heads": take_heads(state["heads"]),
    }
    return new_params, new_state, kept.astype(np.int32), task_branch.astype(np.int32)
