"""Dense (per-pixel) tasks: Taskonomy's five tasks, their losses, metrics,
conv encoder and decoder modules, and the whole search -> prune -> fine-tune
-> test job on in-memory records.

Labels come as :mod:`tgjax.data.taskonomy` records give them, stacked over a
batch::

    y = {"targets": {"depth_zbuffer": [B, H, W, 1] float32,
                     "normal": [B, H, W, 3] float32,
                     "segment_semantic": [B, H, W] int32 (class 0..17),
                     "keypoints2d": [B, H, W, 1], "edge_texture": [B, H, W, 1]},
         "masks": {task: [B, H, W] bool, True where the target is valid}}

Heads output `[batch, H, W, D]` with ``D`` the widest task's channels (18,
segmentation's classes, when it is among the tasks); task i reads its first
``channels`` outputs (see :class:`UpsampleDecoder` for why one decoder serves
all tasks).

Losses (:func:`make_loss_fn`), each per example and masked: the loss of one
example is the mean of a per-pixel loss over its valid pixels, and the batch
loss of a task is the mean over the examples that have at least one valid
pixel (0, with no gradient, when no example has one). Targets at masked
pixels are replaced before any arithmetic (an invalid or NaN target is
harmless), and the per-pixel loss there is selected away, so the (finite)
prediction at a masked pixel changes neither the loss nor any gradient.

- depth_zbuffer, keypoints2d, edge_texture: L1, the absolute error.
- normal: L1 on the three components by default, ``"cosine"`` (1 - cosine
  similarity) as an option. L1 is the default because it needs no
  normalisation of the prediction, so its gradient is defined and bounded
  everywhere, including at a zero prediction, where 1 - cosine has none;
  it also trains the prediction towards the unit target itself, on the same
  scale as the other L1 tasks. The metric is the angle either way.
- segment_semantic: pixel cross-entropy over the 18 class logits; pixels of
  class 0 ("no label") and masked pixels are ignored.

Metrics (:func:`evaluate_dense`), pooled over all valid pixels of a split:
mean absolute error for depth, keypoints and edges; mean angular error in
degrees for normals (between the normalised prediction and target); pixel
accuracy and mean IoU over classes 1..17 for segmentation (prediction =
argmax over classes 1..17, since class 0 is never a valid target; classes
absent from both prediction and target are left out of the mean).

:func:`fit_dense` runs the DMTG job of :func:`tgjax.fit` on such records:
the one-shot search with :func:`tgjax.make_train_step` and the dense loss,
group read-out, pruning, fine-tuning with the shared backbone frozen, and
test metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tgjax.data.stream import (
    FINETUNE_EPOCH_OFFSET,
    StreamSplit,
    eval_batches,
    step_batches,
)
from tgjax.data.taskonomy import TASK_CHANNELS, TASKONOMY_TASKS
from tgjax.model import GroupedModel, prune
from tgjax.relax import read_groups
from tgjax.tasks import Task
from tgjax.train import (
    SearchState,
    hard_outputs,
    init_state,
    make_optimizer,
    make_train_step,
)

Array = jax.Array
DENSE_KINDS = ("l1", "normal", "segmentation")
NORMAL_LOSSES = ("l1", "cosine")

# Integer codes of the per-pixel losses, used inside jitted code.
_L1, _COSINE, _CROSS_ENTROPY = 0, 1, 2
# Target channels carried per task in the packed label array: the widest
# regression target (normals, 3); a class index travels in channel 0.
_TARGET_CHANNELS = 3
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DenseTask:
    """One per-pixel task.

    Attributes:
      name: the task's name, also its key in the records' targets and masks.
      kind: ``"l1"`` (a regression map), ``"normal"`` (3-vector per pixel)
        or ``"segmentation"`` (class index per pixel).
      channels: output channels the task reads (classes for segmentation).
      loss: for ``"normal"``: ``"l1"`` (default) or ``"cosine"``; ``"l1"``
        for ``"l1"`` tasks, ``"cross_entropy"`` for segmentation.
      ignore_class: the segmentation class that is never a target (0).

    Example:
      >>> DenseTask("normal", "normal", 3).loss
      'l1'
    """

    name: str
    kind: str
    channels: int
    loss: str | None = None
    ignore_class: int | None = None

    def __post_init__(self):
        if self.kind not in DENSE_KINDS:
            raise ValueError(
                f"Dense task {self.name!r}: kind must be one of {DENSE_KINDS}, "
                f"got {self.kind!r}."
            )
        if self.kind == "l1":
            want, losses = None, ("l1",)
        elif self.kind == "normal":
            want, losses = 3, NORMAL_LOSSES
        else:
            want, losses = None, ("cross_entropy",)
        if want is not None and self.channels != want:
            raise ValueError(
                f"Dense task {self.name!r}: kind {self.kind!r} has {want} "
                f"channels, got {self.channels}."
            )
        if self.kind == "l1" and not 1 <= self.channels <= _TARGET_CHANNELS:
            raise ValueError(
                f"Dense task {self.name!r}: an l1 task has 1..{_TARGET_CHANNELS} "
                f"channels, got {self.channels}."
            )
        if self.kind == "segmentation" and self.channels < 2:
            raise ValueError(
                f"Dense task {self.name!r}: segmentation needs >= 2 classes, "
                f"got {self.channels}."
            )
        loss = self.loss or losses[0]
        if loss not in losses:
            raise ValueError(
                f"Dense task {self.name!r}: loss must be one of {losses}, "
                f"got {self.loss!r}."
            )
        object.__setattr__(self, "loss", loss)

    @property
    def code(self) -> int:
        if self.kind == "segmentation":
            return _CROSS_ENTROPY
        return _COSINE if self.loss == "cosine" else _L1

    def as_task(self) -> Task:
        """The :class:`tgjax.Task` that stands for it in the train step."""
        if self.kind == "segmentation":
            return Task(self.name, "multiclass", self.channels)
        return Task(self.name, "regression", loss="absolute")


def taskonomy_tasks(
    names: Sequence[str] = TASKONOMY_TASKS, *, normal_loss: str = "l1"
) -> tuple[DenseTask, ...]:
    """The dense tasks of Taskonomy, in the order of ``names``.

    Example:
      >>> [t.kind for t in taskonomy_tasks(["normal", "segment_semantic"])]
      ['normal', 'segmentation']
    """
    kinds = {"normal": "normal", "segment_semantic": "segmentation"}
    out = []
    for name in names:
        if name not in TASK_CHANNELS:
            raise ValueError(
                f"Unknown Taskonomy task {name!r}; choose among "
                f"{list(TASKONOMY_TASKS)}."
            )
        kind = kinds.get(name, "l1")
        out.append(
            DenseTask(
                name,
                kind,
                TASK_CHANNELS[name],
                loss=normal_loss if kind == "normal" else None,
                ignore_class=0 if kind == "segmentation" else None,
            )
        )
    return check_dense_tasks(out)


def check_dense_tasks(tasks: Sequence[DenseTask]) -> tuple[DenseTask, ...]:
    """Validates a dense task list: non-empty, unique names."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("tasks is empty; name at least one dense task.")
    for t in tasks:
        if not isinstance(t, DenseTask):
            raise TypeError(f"tasks must hold DenseTask objects, got {t!r}.")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Dense task names must be unique, got {names}.")
    return tasks


def head_channels(tasks: Sequence[DenseTask]) -> int:
    """D: output channels of the shared decoder head, the widest task's."""
    return max(t.channels for t in tasks)


# ---------------------------------------------------------------------------
# Losses


def pack_labels(y: Mapping, tasks: Sequence[DenseTask]) -> tuple[Array, Array]:
    """Stacks a label dict into one array per kind of content.

    Args:
      y: ``{"targets": {...}, "masks": {...}}`` over a batch.
      tasks: the dense tasks.

    Returns:
      ``(targets, masks)``: `[tasks, batch, H, W, 3]` float32 (a class index
      in channel 0 for segmentation; unused channels 0) and `[tasks, batch,
      H, W]` bool. Targets are 0 wherever the mask is False, and the mask is
      False on segmentation's ignored class.
    """
    targets, masks = [], []
    for t in tasks:
        tgt = jnp.asarray(y["targets"][t.name])
        mask = jnp.asarray(y["masks"][t.name]).astype(bool)
        if t.kind == "segmentation":
            cls = tgt.astype(jnp.int32)
            if t.ignore_class is not None:
                mask = mask & (cls != t.ignore_class)
            tgt = cls.astype(jnp.float32)[..., None]
        tgt = tgt.astype(jnp.float32)
        if tgt.shape[:-1] != mask.shape:
            raise ValueError(
                f"Task {t.name!r}: target {tgt.shape} and mask {mask.shape} do "
                "not cover the same pixels."
            )
        pad = _TARGET_CHANNELS - tgt.shape[-1]
        tgt = jnp.pad(tgt, [(0, 0)] * (tgt.ndim - 1) + [(0, pad)])
        targets.append(jnp.where(mask[..., None], tgt, 0.0))
        masks.append(mask)
    return jnp.stack(targets), jnp.stack(masks)


def _unit(v: Array) -> Array:
    """v / |v| along the last axis, 0 for a zero vector, finite gradient."""
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + _EPS)


def pixel_losses(out: Array, target: Array, code, channels) -> Array:
    """Per-pixel loss of one task, before masking.

    Args:
      out: `[batch, H, W, D]` head outputs.
      target: `[batch, H, W, 3]` packed targets (see :func:`pack_labels`).
      code: the task's loss code (traced under ``vmap`` over tasks).
      channels: how many output channels the task reads.

    Returns:
      `[batch, H, W]` float32.
    """
    out = out.astype(jnp.float32)
    width = out.shape[-1]
    reg = out[..., :_TARGET_CHANNELS]
    if reg.shape[-1] < _TARGET_CHANNELS:
        pad = _TARGET_CHANNELS - reg.shape[-1]
        reg = jnp.pad(reg, [(0, 0)] * (reg.ndim - 1) + [(0, pad)])
    lead = (1,) * (out.ndim - 1)
    used = (jnp.arange(_TARGET_CHANNELS) < channels).astype(jnp.float32)
    used = used.reshape(lead + (_TARGET_CHANNELS,))
    l1 = jnp.sum(jnp.abs(reg - target) * used, axis=-1) / jnp.maximum(
        channels, 1
    ).astype(jnp.float32)
    cosine = 1.0 - jnp.sum(_unit(reg * used) * _unit(target), axis=-1)
    # Outputs beyond a task's classes get a large negative logit, not -inf,
    # so neither the softmax nor its gradient sees inf - inf.
    valid = (jnp.arange(width) < channels).reshape(lead + (width,))
    logits = jnp.where(valid, out, -1e9)
    cls = jnp.clip(target[..., 0].astype(jnp.int32), 0, channels - 1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, cls[..., None], axis=-1)[..., 0]
    return jnp.select([code == _L1, code == _COSINE], [l1, cosine], ce)


def example_losses(out, target, mask, code, channels) -> tuple[Array, Array]:
    """Per-example masked mean loss of one task.

    Returns:
      ``(loss, has_pixels)``: `[batch]` float32 mean over each example's
      valid pixels (0 without any) and `[batch]` bool.
    """
    per_pixel = jnp.where(mask, pixel_losses(out, target, code, channels), 0.0)
    count = jnp.sum(mask, axis=(1, 2)).astype(jnp.float32)
    return jnp.sum(per_pixel, axis=(1, 2)) / jnp.maximum(count, 1.0), count > 0


def dense_task_losses(outputs: Array, y: Mapping, tasks) -> Array:
    """Batch loss of every task, ``vmap`` over tasks.

    Args:
      outputs: `[tasks, batch, H, W, D]` head outputs.
      y: the batch's ``{"targets", "masks"}``.
      tasks: the dense tasks.

    Returns:
      `[tasks]` float32: mean over the examples with valid pixels of each
      example's masked mean loss; 0 for a task without any valid pixel.
    """
    tasks = tuple(tasks)
    targets, masks = pack_labels(y, tasks)
    codes = jnp.asarray([t.code for t in tasks], jnp.int32)
    channels = jnp.asarray([t.channels for t in tasks], jnp.int32)
    per_ex, has = jax.vmap(example_losses)(outputs, targets, masks, codes, channels)
    n = jnp.sum(has, axis=1).astype(jnp.float32)
    return jnp.sum(per_ex, axis=1) / jnp.maximum(n, 1.0)


def make_loss_fn(tasks: Sequence[DenseTask]) -> Callable[[Array, Any], Array]:
    """``loss_fn(outputs, y) -> [tasks]`` for :func:`tgjax.make_train_step`.

    :func:`tgjax.loss_matrix` maps it over the groups, so the step's loss
    matrix is `[tasks, groups]` with a ``vmap`` over groups outside and one
    over tasks inside, as for the built-in losses.

    Example:
      >>> import jax.numpy as jnp
      >>> tasks = taskonomy_tasks(["depth_zbuffer"])
      >>> y = {"targets": {"depth_zbuffer": jnp.ones((1, 2, 2, 1))},
      ...      "masks": {"depth_zbuffer": jnp.ones((1, 2, 2), bool)}}
      >>> float(make_loss_fn(tasks)(jnp.zeros((1, 1, 2, 2, 18)), y)[0])
      1.0
    """
    tasks = check_dense_tasks(tasks)

    def loss_fn(outputs, y):
        return dense_task_losses(outputs, y, tasks)

    return loss_fn


# ---------------------------------------------------------------------------
# Metrics


def metric_sums(outputs: Array, y: Mapping, tasks: Sequence[DenseTask]) -> dict:
    """Additive metric statistics of one batch, per task.

    Returns:
      ``{name: {...}}`` with ``abs_sum`` and ``count`` (l1 tasks),
      ``angle_sum`` (degrees) and ``count`` (normals), ``confusion``
      `[C, C]` (segmentation, rows = target, columns = prediction, over
      valid pixels), plus ``loss`` (batch loss) for every task.
    """
    tasks = tuple(tasks)
    targets, masks = pack_labels(y, tasks)
    losses = dense_task_losses(outputs, y, tasks)
    out = {}
    for i, t in enumerate(tasks):
        pred = outputs[i].astype(jnp.float32)
        tgt, mask = targets[i], masks[i]
        count = jnp.sum(mask).astype(jnp.float32)
        stats = {"loss": losses[i], "count": count}
        if t.kind == "l1":
            err = jnp.mean(
                jnp.abs(pred[..., : t.channels] - tgt[..., : t.channels]), -1
            )
            stats["abs_sum"] = jnp.sum(jnp.where(mask, err, 0.0))
        elif t.kind == "normal":
            cos = jnp.sum(_unit(pred[..., :3]) * _unit(tgt), axis=-1)
            angle = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
            stats["angle_sum"] = jnp.sum(jnp.where(mask, angle, 0.0))
        else:
            c = t.channels
            logits = pred[..., :c]
            if t.ignore_class is not None:
                drop = (jnp.arange(c) == t.ignore_class).reshape((1,) * 3 + (c,))
                logits = jnp.where(drop, -jnp.inf, logits)
            p = jnp.argmax(logits, axis=-1)
            g = jnp.clip(tgt[..., 0].astype(jnp.int32), 0, c - 1)
            flat = jnp.where(mask, g * c + p, c * c)  # c * c: a dropped bin
            hist = jnp.bincount(flat.reshape(-1), length=c * c + 1)
            stats["confusion"] = hist[: c * c].reshape(c, c)
        out[t.name] = stats
    return out


def metrics_from_sums(sums: dict, tasks: Sequence[DenseTask]) -> dict:
    """Per-task metrics from accumulated :func:`metric_sums` statistics.

    ``sums[name]["loss"]`` must be the example-weighted loss sum and
    ``sums[name]["examples"]`` the example count.

    Returns:
      ``{"tasks": {name: {metric: value, "loss": ...}}, "total_loss": ...}``.
    """
    per_task, total = {}, 0.0
    for t in tasks:
        s = sums[t.name]
        loss = float(s["loss"]) / max(float(s["examples"]), 1.0)
        total += loss
        m: dict = {"loss": loss, "pixels": int(s["count"])}
        count = max(float(s["count"]), 1.0)
        if t.kind == "l1":
            m["mae"] = float(s["abs_sum"]) / count
        elif t.kind == "normal":
            m["angular_error_deg"] = float(s["angle_sum"]) / count
        else:
            m.update(segmentation_scores(np.asarray(s["confusion"]), t.ignore_class))
        per_task[t.name] = m
    return {"tasks": per_task, "total_loss": total}


def segmentation_scores(confusion: np.ndarray, ignore_class: int | None = 0) -> dict:
    """Pixel accuracy and mean IoU from a `[C, C]` confusion matrix.

    IoU of class c = TP / (TP + FP + FN); the mean runs over the classes
    other than ``ignore_class`` that occur in the target or the prediction.

    Example:
      >>> import numpy as np
      >>> s = segmentation_scores(np.array([[0, 0, 0], [0, 3, 1], [0, 0, 2]]))
      >>> round(s["pixel_accuracy"], 4), round(s["miou"], 4)
      (0.8333, 0.7083)
    """
    cm = np.asarray(confusion, np.float64)
    keep = np.ones(cm.shape[0], bool)
    if ignore_class is not None:
        keep[ignore_class] = False
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    present = keep & (union > 0)
    iou = tp[present] / union[present]
    total = cm.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "miou": float(iou.mean()) if iou.size else float("nan"),
    }


def evaluate_dense(
    outputs_fn: Callable[[Array], Array],
    x: np.ndarray,
    y: Mapping,
    tasks: Sequence[DenseTask],
    batch_size: int = 32,
) -> dict:
    """Per-task metrics of a model on a whole split, batch by batch.

    Args:
      outputs_fn: ``x -> [tasks, batch, H, W, D]``.
      x: `[examples, H, W, 3]` inputs.
      y: ``{"targets", "masks"}`` of the whole split.
      tasks: the dense tasks.
      batch_size: examples per evaluation batch.

    Returns:
      See :func:`metrics_from_sums`.
    """
    tasks = check_dense_tasks(tasks)

    def batches():
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            yb = jax.tree.map(lambda a, s=start: a[s : s + batch_size], y)
            yield xb, yb

    return _metrics_over(outputs_fn, batches(), tasks)


def evaluate_dense_stream(
    outputs_fn: Callable[[Array], Array],
    split: StreamSplit,
    tasks: Sequence[DenseTask],
    batch_size: int = 32,
    *,
    workers: int = 0,
) -> dict:
    """:func:`evaluate_dense` on a streamed split (see :func:`fit_dense`).

    Reads the split in record order with :func:`tgjax.data.stream.eval_batches`
    (the last, smaller batch included) and adds up :func:`metric_sums` over
    the batches, so the metrics equal :func:`evaluate_dense`'s on the same
    records, whatever the batch size.
    """
    from tgjax.search import Prefetcher

    tasks = check_dense_tasks(tasks)
    steps = -(-len(split) // batch_size)
    feed = Prefetcher(
        eval_batches(split, batch_size=batch_size, workers=workers),
        lambda b: (b["x"], b["y"]),
    )
    try:
        return _metrics_over(outputs_fn, (feed.get() for _ in range(steps)), tasks)
    finally:
        feed.close()


def _metrics_over(outputs_fn, batches, tasks) -> dict:
    """Metrics from :func:`metric_sums` added up over ``(x, y)`` batches."""
    sums_fn = _metric_sums_jit(tasks)
    acc: dict = {}
    for xb, yb in batches:
        sums = jax.device_get(sums_fn(outputs_fn(xb), yb))
        for name, stats in sums.items():
            a = acc.setdefault(name, {"examples": 0.0})
            a["examples"] += len(xb)
            for k, v in stats.items():
                v = np.asarray(v, np.float64)
                if k == "loss":
                    v = v * len(xb)
                a[k] = a[k] + v if k in a else v
    return metrics_from_sums(acc, tasks)


_METRIC_FNS: dict = {}


def _metric_sums_jit(tasks):
    if tasks not in _METRIC_FNS:
        _METRIC_FNS[tasks] = jax.jit(lambda o, y: metric_sums(o, y, tasks))
    return _METRIC_FNS[tasks]


# ---------------------------------------------------------------------------
# Modules


def _norm(width: int) -> nn.Module:
    return nn.GroupNorm(num_groups=math.gcd(width, 8))


class ConvStem(nn.Module):
    """conv3x3 + GroupNorm + ReLU at full resolution: the shared backbone.

    Attributes:
      width: output channels.
    """

    width: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.relu(_norm(self.width)(nn.Conv(self.width, (3, 3))(x)))


class ResidualDown(nn.Module):
    """A residual block that halves the resolution (basic ResNet block).

    conv3x3 stride 2 + GN + ReLU, conv3x3 + GN, plus a 1x1 stride-2
    projection of the input, then ReLU.
    """

    width: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(_norm(self.width)(nn.Conv(self.width, (3, 3), strides=2)(x)))
        h = _norm(self.width)(nn.Conv(self.width, (3, 3))(h))
        skip = _norm(self.width)(nn.Conv(self.width, (1, 1), strides=2)(x))
        return nn.relu(h + skip)


class DenseEncoder(nn.Module):
    """A small ResNet-style encoder producing a spatial feature map.

    Stands in for the Xception of the DMTG paper's Taskonomy setting (which
    this library does not reproduce): an optional stem, then one
    stride-2 residual block per entry of ``widths``. The output is
    `[batch, H / f, W / f, widths[-1]]` with downsampling factor
    ``f = 2 ** len(widths)``; H and W must be multiples of f. GroupNorm
    rather than BatchNorm, so that the small batches of dense tasks need no
    batch statistics.

    Attributes:
      widths: channels of the residual blocks, one halving each.
      stem_width: channels of a :class:`ConvStem` applied first; None leaves
        the stem to a shared backbone.
    """

    widths: Sequence[int] = (16, 32)
    stem_width: int | None = 16

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.widths)

    @nn.compact
    def __call__(self, x):
        h = x if self.stem_width is None else ConvStem(self.stem_width)(x)
        for w in self.widths:
            h = ResidualDown(w)(h)
        return h


class PatchConv3x3(nn.Module):
    """A 3x3 convolution (stride 1, SAME padding) as patches times a matrix.

    The same function and parameters (``kernel`` `[3, 3, C_in, C_out]`,
    ``bias``) as ``nn.Conv(C_out, (3, 3))``, computed as the nine shifted
    copies of the padded input, concatenated, times the reshaped kernel.
    :class:`tgjax.GroupedModel` runs the heads under ``vmap`` over groups and
    tasks; ``vmap`` turns an ``nn.Conv`` with per-head kernels into a grouped
    convolution, whose gradient XLA:CPU computes about 100 times slower than
    plain convolutions, while this form becomes a batched matrix product (its
    gradient 15-20 times faster than the grouped convolution's on 2 CPU
    cores).

    Attributes:
      features: output channels.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        h, w = x.shape[-3], x.shape[-2]
        pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
        xp = jnp.pad(x, pad)
        patches = jnp.concatenate(
            [xp[..., i : i + h, j : j + w, :] for i in range(3) for j in range(3)],
            axis=-1,
        )
        out = jnp.einsum("...k,kf->...f", patches, kernel.reshape(9 * c, self.features))
        return out + bias.reshape((1,) * (out.ndim - 1) + (self.features,))


class UpsampleDecoder(nn.Module):
    """Upsampling decoder head: `[batch, h, w, C] -> [batch, h*u, w*u, D]`.

    One step per entry of ``widths``: nearest-neighbour x2 upsampling, conv3x3
    + GroupNorm + ReLU (resize then convolve, which avoids the checkerboard
    pattern of strided transposed convolutions); then a conv3x3 to
    ``out_channels``. The convolutions are :class:`PatchConv3x3`, which run
    fast under the ``vmap`` that evaluates all heads at once.
    ``u = 2 ** len(widths)`` must equal the encoder's downsampling factor.

    One decoder for all tasks: :class:`tgjax.GroupedModel` builds ONE head
    module and stacks its parameters over `[groups, tasks]`, so every task's
    head must have the same parameter shapes. A per-task wrapper with a
    different output layer per task cannot be stacked that way (and the
    head is not told which task it serves). The decoder therefore outputs
    ``out_channels`` = 18 (:func:`head_channels`), and each task reads its
    first ``channels`` outputs. The waste is only in the last convolution:
    depth, keypoints and edges use 1 of its 18 output channels and normals 3,
    so for those tasks 17 (or 15) x 9 x ``widths[-1]`` weights and their
    full-resolution output maps are computed and never trained (their
    gradient is exactly 0). The decoder body, nearly all of the head's cost,
    is what each task needs anyway.

    Attributes:
      widths: channels of the upsampling steps.
      out_channels: D.
    """

    widths: Sequence[int] = (32, 16)
    out_channels: int = 18

    @nn.compact
    def __call__(self, h):
        for w in self.widths:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.relu(_norm(w)(PatchConv3x3(w)(h)))
        return PatchConv3x3(self.out_channels)(h)


# ---------------------------------------------------------------------------
# The job


@dataclasses.dataclass(frozen=True)
class DenseConfig:
    """Settings of :func:`fit_dense`.

    Defaults follow the DMTG paper's Taskonomy settings where they apply
    (Adam 1e-3 for the weights, tau fixed at 4.0, tied initialisation, shared
    first layers frozen while fine-tuning) and are small elsewhere, so that a
    run fits a laptop CPU. Two choices differ from the reference: S has its
    own Adam rate (0.03; the reference uses 1e-3 over many more steps), and
    the learning rate stays constant (the reference halves it on plateaus).

    Attributes:
      tasks: Taskonomy task names.
      groups: K (ignored by the baselines).
      epochs, finetune_epochs: search and fine-tuning epochs.
      batch_size: examples per step.
      learning_rate, assignment_learning_rate: Adam rates of the weights and
        of S (None: the weights' rate).
      tau: the fixed Gumbel-softmax temperature.
      encoder_widths, stem_width, decoder_widths: module sizes (see
        :class:`DenseEncoder` and :class:`UpsampleDecoder`); decoder_widths
        must have as many entries as encoder_widths.
      shared_backbone: the stem is one module shared by all branches (as the
        paper shares the first layers); False gives each branch its own.
      normal_loss: ``"l1"`` or ``"cosine"``.
      baseline: None (the search), ``"mtl"`` (K = 1: every task on one
        branch) or ``"stl"`` (K = N with S fixed to the identity: one branch
        per task).
      init: ``"tied"`` or ``"independent"``.
      assignment_noise: std of the noise on S's all-ones start.
      seed: seed of initialisation, sampling and data order.
      eval_batch_size: examples per evaluation batch.
    """

    tasks: tuple[str, ...] = TASKONOMY_TASKS
    groups: int = 2
    epochs: int = 5
    finetune_epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-3
    assignment_learning_rate: float | None = 0.03
    tau: float = 4.0
    encoder_widths: tuple[int, ...] = (16, 32)
    stem_width: int = 16
    decoder_widths: tuple[int, ...] = (32, 16)
    shared_backbone: bool = True
    normal_loss: str = "l1"
    baseline: str | None = None
    init: str = "tied"
    assignment_noise: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 32

    def __post_init__(self):
        for name in ("groups", "epochs", "batch_size", "stem_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
        if self.finetune_epochs < 0:
            raise ValueError(
                f"finetune_epochs must be >= 0, got {self.finetune_epochs}."
            )
        if len(self.decoder_widths) != len(self.encoder_widths):
            raise ValueError(
                "decoder_widths must upsample as often as encoder_widths "
                f"downsample: got {len(self.decoder_widths)} and "
                f"{len(self.encoder_widths)} entries."
            )
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau!r}.")
        if self.baseline not in (None, "mtl", "stl"):
            raise ValueError(
                f"baseline must be None, 'mtl' or 'stl', got {self.baseline!r}."
            )
        if self.normal_loss not in NORMAL_LOSSES:
            raise ValueError(
                f"normal_loss must be one of {NORMAL_LOSSES}, got {self.normal_loss!r}."
            )

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.encoder_widths)


def build_dense_model(
    config: DenseConfig, tasks: Sequence[DenseTask], groups: int | None = None
) -> GroupedModel:
    """The search network of a config: stem backbone, encoder branches, decoders."""
    shared = config.shared_backbone
    return GroupedModel(
        branch=DenseEncoder(
            config.encoder_widths, stem_width=None if shared else config.stem_width
        ),
        head=UpsampleDecoder(config.decoder_widths, head_channels(tasks)),
        num_groups=config.groups if groups is None else groups,
        num_tasks=len(tasks),
        backbone=ConvStem(config.stem_width) if shared else None,
        init=config.init,
    )


def stack_records(records, tasks: Sequence[str]) -> tuple[np.ndarray, dict]:
    """Records (or one already stacked dict) -> ``(x, {"targets", "masks"})``.

    Args:
      records: a sequence of decoded Taskonomy records, or a dict with
        ``"x"`` `[n, H, W, 3]`, ``"targets"`` and ``"masks"`` stacked.
      tasks: the task names to keep.
    """
    if isinstance(records, Mapping):
        x = np.asarray(records["x"], np.float32)
        targets, masks = records["targets"], records["masks"]
        y = {
            "targets": {t: np.asarray(targets[t]) for t in tasks},
            "masks": {t: np.asarray(masks[t], bool) for t in tasks},
        }
        return x, y
    records = list(records)
    if not records:
        raise ValueError("No records: every split needs at least one.")
    missing = [t for t in tasks if t not in records[0]["targets"]]
    if missing:
        raise ValueError(f"The records have no targets for tasks {missing}.")
    x = np.stack([np.asarray(r["x"], np.float32) for r in records])
    y = {
        "targets": {t: np.stack([r["targets"][t] for r in records]) for t in tasks},
        "masks": {
            t: np.stack([np.asarray(r["masks"][t], bool) for r in records])
            for t in tasks
        },
    }
    return x, y


@dataclasses.dataclass
class DenseFitResult:
    """What :func:`fit_dense` found and measured.

    Attributes:
      tasks: task names.
      groups: task names of each non-empty group, ordered by group index.
      assignment: `[tasks]` group index of each task.
      probabilities: `[tasks, groups]` softmax(S) at the end of the search.
      test, val: metrics of the final pruned model (:func:`evaluate_dense`).
      history: one dict per epoch (phase, epoch, train_loss, val_total_loss).
      search_state: the final :class:`tgjax.SearchState`.
      params, state: the pruned, fine-tuned variables.
      kept: original group index of each surviving branch.
      task_branch: `[tasks]` index into ``kept`` of each task's branch.
      model: the search network (its ``apply_pruned`` runs the pruned one).
      finetune_selected_epoch: the fine-tuning epoch kept (best validation
        total loss); -1 for the pruned network before fine-tuning.
      seconds: wall-clock seconds of the whole run.
    """

    tasks: list[str]
    groups: list[list[str]]
    assignment: np.ndarray
    probabilities: np.ndarray
    test: dict
    val: dict
    history: list[dict]
    search_state: SearchState
    params: Any
    state: Any
    kept: np.ndarray
    task_branch: np.ndarray
    model: GroupedModel
    finetune_selected_epoch: int = -1
    seconds: float = float("nan")


def _batches(key, n: int, batch_size: int) -> Array:
    steps = n // batch_size
    perm = jax.random.permutation(key, n)[: steps * batch_size]
    return perm.reshape(steps, batch_size)


def _take(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


def fit_dense(
    train_records,
    val_records,
    test_records,
    config: DenseConfig | None = None,
    *,
    callback: Callable[[str, dict], None] | None = None,
    workers: int = 0,
) -> DenseFitResult:
    """DMTG on dense Taskonomy-shaped records held in memory.

    Runs the one-shot search (:func:`tgjax.make_train_step` with the dense
    ``loss_fn``; each epoch one compiled ``lax.scan``), reads the groups off
    S, prunes, fine-tunes each surviving branch on the unweighted sum of its
    tasks' losses with the shared backbone frozen (keeping the epoch with the
    best validation total loss, or the pruned network if none beats it) and
    reports test metrics.

    ``config.baseline`` runs the MTL (K = 1) or STL (K = N, S fixed to the
    identity) baseline through the same stages instead of the search.

    Args:
      train_records, val_records, test_records: decoded records (see
        :mod:`tgjax.data.taskonomy`) or stacked dicts (see
        :func:`stack_records`), all held in memory; or three
        :class:`tgjax.data.stream.StreamSplit` that read their labels from
        the decoded records (``label_fields=("targets", "masks")``, as
        :func:`tgjax.data.taskonomy.taskonomy_stream` builds them). Streamed
        splits are decoded batch by batch while training: the search and
        fine-tuning run one compiled step per batch of
        :func:`tgjax.data.stream.step_batches` (each training record once
        an epoch, an order fixed by the seed and the epoch), and validation
        and test metrics add up :func:`metric_sums` over
        :func:`tgjax.data.stream.eval_batches` (:func:`evaluate_dense_stream`).
      config: settings; ``DenseConfig()`` by default.
      callback: optional ``callback(event, payload)``, events ``"epoch"``
        (phase, epoch, train_loss, val_total_loss), ``"groups"`` and
        ``"done"``.
      workers: decoding processes for streamed splits (0: a thread of this
        process).

    Returns:
      A :class:`DenseFitResult`.

    Raises:
      ValueError: for images whose size is not a multiple of the encoder's
        downsampling factor, a batch larger than the training split, or
        records that lack a task.
      FloatingPointError: when a step produces a non-finite value.
    """
    start_time = time.perf_counter()
    config = DenseConfig() if config is None else config
    tasks = taskonomy_tasks(config.tasks, normal_loss=config.normal_loss)
    names = [t.name for t in tasks]
    given = dict(zip(_SPLITS, (train_records, val_records, test_records), strict=True))
    streamed = isinstance(train_records, StreamSplit)
    if any(isinstance(s, StreamSplit) != streamed for s in given.values()):
        raise TypeError(
            "Pass the train, val and test splits all as StreamSplits or all as "
            "records in memory, not a mix."
        )
    if streamed:
        data = given
        for split, s in data.items():
            if not s.label_fields or len(s) == 0:
                raise ValueError(
                    f"The streamed {split} split must hold records and read its "
                    "labels from them (label_fields=('targets', 'masks'); see "
                    "tgjax.data.taskonomy.taskonomy_stream)."
                )
        first = train_records.read(range(min(2, len(train_records))))
        missing = [t for t in names if t not in first["y"]["targets"]]
        if missing:
            raise ValueError(f"The records have no targets for tasks {missing}.")
        x_init = first["x"]
        shapes = {
            split: first["x"].shape[1:]
            if split == "train"
            else s.read([0])["x"].shape[1:]
            for split, s in data.items()
        }
    else:
        data = {split: stack_records(r, names) for split, r in given.items()}
        shapes = {split: xy[0].shape[1:] for split, xy in data.items()}
        x_init = data["train"][0][:2]
    n_train = len(data["train"]) if streamed else len(data["train"][0])
    f = config.downsampling
    for split, shape in shapes.items():
        if len(shape) != 3 or shape[0] % f or shape[1] % f:
            raise ValueError(
                f"The {split} images have shape {shape}; height and width "
                f"must be multiples of {f} (2 ** len(encoder_widths)). Decode "
                "them at such a size (image_size)."
            )
    if config.batch_size > n_train:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training split "
            f"({n_train} examples)."
        )
    n = len(tasks)
    stl = config.baseline == "stl"
    k = {"mtl": 1, "stl": n}.get(config.baseline, config.groups)
    model = build_dense_model(config, tasks, k)
    loss_fn = make_loss_fn(tasks)
    optimizer = make_optimizer(
        config.learning_rate,
        assignment_learning_rate=config.assignment_learning_rate,
        freeze_assignment=stl,
    )
    identity = jnp.eye(n, dtype=jnp.float32) if stl else None
    root = jax.random.key(config.seed)
    k_init, k_data, k_ft = jax.random.split(root, 3)
    # One compiled initialisation: run eagerly, each of the many small
    # parameter initialisers would be compiled on its own.
    state = jax.jit(
        lambda k: init_state(
            model,
            optimizer,
            k,
            x_init,
            assignment=identity,
            assignment_noise=config.assignment_noise,
        )
    )(k_init)
    step = make_train_step(
        model,
        [t.as_task() for t in tasks],
        optimizer,
        loss_fn=loss_fn,
        fixed_assignment=identity,
        jit=False,
    ).core
    tau = jnp.float32(config.tau)
    steps_per_epoch = n_train // config.batch_size

    @jax.jit
    def search_epoch(st, x, y, key):
        def body(s, idx):
            return step(s, {"x": x[idx], "y": _take(y, idx)}, tau)

        st, m = jax.lax.scan(body, st, _batches(key, x.shape[0], config.batch_size))
        return st, {"loss": m["loss"], "finite": m["finite"]}

    @jax.jit
    def search_step(st, batch):
        st, m = step(st, batch, tau)
        return st, {"loss": m["loss"], "finite": m["finite"]}

    def run_epoch(epoch_fn, step_fn, carry, epoch, key, epoch0):
        """One epoch: a compiled scan in memory, or one step per batch."""
        if not streamed:
            return epoch_fn(carry, x_dev, y_dev, jax.random.fold_in(key, epoch))
        return _stream_epoch(
            step_fn, carry, data["train"], config, epoch, epoch0, workers
        )

    def evaluate(outputs_fn, split):
        if streamed:
            return evaluate_dense_stream(
                outputs_fn, data[split], tasks, config.eval_batch_size, workers=workers
            )
        x, y = data[split]
        return evaluate_dense(outputs_fn, x, y, tasks, config.eval_batch_size)

    @jax.jit
    def search_outputs(params, mstate, x, groups):
        return hard_outputs(model, params, mstate, x, groups)

    def emit(event, payload):
        if callback is not None:
            callback(event, payload)

    if not streamed:
        x_dev = jnp.asarray(data["train"][0])
        y_dev = jax.tree.map(jnp.asarray, data["train"][1])
    history: list[dict] = []
    for epoch in range(config.epochs):
        state, m = run_epoch(search_epoch, search_step, state, epoch, k_data, 0)
        m = jax.device_get(m)
        _check_finite(m["finite"], epoch, steps_per_epoch, "search")
        groups_now = jnp.asarray(read_groups(state.assignment))
        val = evaluate(
            lambda xb, s=state, g=groups_now: search_outputs(
                s.params, s.model_state, xb, g
            ),
            "val",
        )
        record = {
            "phase": "search",
            "epoch": epoch,
            "train_loss": float(np.mean(m["loss"])),
            "val_total_loss": val["total_loss"],
            "probabilities": np.asarray(
                jax.nn.softmax(state.assignment, axis=-1)
            ).tolist(),
        }
        history.append(record)
        emit("epoch", record)

    assignment = read_groups(state.assignment)
    probabilities = np.asarray(jax.nn.softmax(state.assignment, axis=-1))
    # One compiled pruning instead of one small gather per leaf. ``kept`` and
    # ``task_branch`` come from the concrete assignment while tracing.
    index = {}

    def prune_variables(p, s):
        p, s, index["kept"], index["task_branch"] = prune(p, s, assignment)
        return p, s

    params, mstate = jax.jit(prune_variables)(state.params, state.model_state)
    kept, task_branch = index["kept"], index["task_branch"]
    groups = [[names[i] for i in np.flatnonzero(assignment == g)] for g in kept]
    emit("groups", {"groups": groups, "assignment": assignment.tolist()})

    @jax.jit
    def pruned_outputs(p, s, x):
        return model.apply_pruned(p, s, x, task_branch)[0]

    def evaluate_pruned(p, s, split):
        return evaluate(lambda xb: pruned_outputs(p, s, xb), split)

    best = (params, mstate)
    best_val = evaluate_pruned(params, mstate, "val")
    best_epoch = -1
    if config.finetune_epochs:
        ft_opt = _finetune_optimizer(config.learning_rate, freeze_backbone=True)
        ft_step = _make_finetune_step(model, loss_fn, ft_opt, task_branch)
        ft_epoch = _make_finetune_epoch(ft_step, config)
        carry = (params, mstate, ft_opt.init(params))
        for epoch in range(config.finetune_epochs):
            carry, m = run_epoch(
                ft_epoch, jax.jit(ft_step), carry, epoch, k_ft, FINETUNE_EPOCH_OFFSET
            )
            m = jax.device_get(m)
            _check_finite(m["finite"], epoch, steps_per_epoch, "fine-tuning")
            p, s = carry[0], carry[1]
            val = evaluate_pruned(p, s, "val")
            if val["total_loss"] < best_val["total_loss"]:
                best, best_val, best_epoch = (p, s), val, epoch
            record = {
                "phase": "finetune",
                "epoch": epoch,
                "train_loss": float(np.mean(m["loss"])),
                "val_total_loss": val["total_loss"],
            }
            history.append(record)
            emit("epoch", record)
    params, mstate = best
    test = evaluate_pruned(params, mstate, "test")
    emit("done", {"test": test, "finetune_selected_epoch": best_epoch})
    return DenseFitResult(
        tasks=names,
        groups=groups,
        assignment=assignment,
        probabilities=probabilities,
        test=test,
        val=best_val,
        history=history,
        search_state=state,
        params=params,
        state=mstate,
        kept=kept,
        task_branch=task_branch,
        model=model,
        finetune_selected_epoch=best_epoch,
        seconds=time.perf_counter() - start_time,
    )


_SPLITS = ("train", "val", "test")


def _check_finite(finite, epoch: int, steps_per_epoch: int, phase: str) -> None:
    bad = np.flatnonzero(~np.asarray(finite, bool))
    if bad.size:
        raise FloatingPointError(
            f"The {phase} step {epoch * steps_per_epoch + int(bad[0])} (epoch "
            f"{epoch}) produced a non-finite loss, gradient or S; lower the "
            "learning rate or check the inputs."
        )


def _finetune_optimizer(learning_rate, *, freeze_backbone: bool):
    """Adam on a bare params tree; the shared backbone optionally frozen."""

    def labels(params):
        return {
            name: jax.tree.map(
                lambda _, n=name: (
                    "frozen" if (n == "backbone" and freeze_backbone) else "weights"
                ),
                sub,
            )
            for name, sub in params.items()
        }

    return optax.multi_transform(
        {"weights": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels
    )


def _stream_epoch(step, carry, split, config, epoch, epoch0, workers):
    """One epoch of ``step(carry, batch)`` over streamed batches.

    The batches of the epoch come from :func:`step_batches` (an order that
    depends on the seed and ``epoch0 + epoch`` only) through a
    :class:`tgjax.search.Prefetcher`, so decoding overlaps the steps.
    """
    from tgjax.search import Prefetcher

    steps = len(split) // config.batch_size
    batches = step_batches(
        split,
        seed=config.seed,
        batch_size=config.batch_size,
        start=epoch * steps,
        stop=(epoch + 1) * steps,
        epoch0=epoch0,
        workers=workers,
    )
    feed = Prefetcher(batches, lambda b: jax.device_put({"x": b["x"], "y": b["y"]}))
    metrics = []
    try:
        for _ in range(steps):
            carry, m = step(carry, feed.get())
            metrics.append(m)
    finally:
        feed.close()
    return carry, jax.tree.map(lambda *v: jnp.stack(v), *metrics)


def _make_finetune_step(model, loss_fn, optimizer, task_branch):
    """One fine-tuning step of the pruned network (not compiled)."""
    task_branch = np.asarray(task_branch)

    def step(carry, batch):
        params, mstate, opt_state = carry

        def objective(p):
            out, new_state = model.apply_pruned(
                p, mstate, batch["x"], task_branch, train=True
            )
            return jnp.sum(loss_fn(out, batch["y"])), new_state

        (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        return (params, new_state, opt_state), {"loss": loss, "finite": finite}

    return step


def _make_finetune_epoch(step, config):
    """A compiled fine-tuning epoch of ``step`` over in-memory arrays."""

    @jax.jit
    def epoch(carry, x, y, key):
        idx = _batches(key, x.shape[0], config.batch_size)
        return jax.lax.scan(
            lambda c, i: step(c, {"x": x[i], "y": _take(y, i)}), carry, idx
        )

    return epoch
