"""Dense Taskonomy tasks: losses, masks, metrics, modules and the whole job."""

import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data_taskonomy import _fixture

import tgjax
from tgjax import dense
from tgjax.data import taskonomy as tk

D = 18


def _loss_fn(tasks):
    return jax.jit(dense.make_loss_fn(tasks))


def _one(name, **kw):
    return dense.taskonomy_tasks([name], **kw)


def _outputs(rng, batch, h, w):
    return rng.normal(size=(1, batch, h, w, D)).astype(np.float32)


def test_depth_l1_is_a_per_example_mean_over_valid_pixels():
    rng = np.random.default_rng(0)
    out = _outputs(rng, 3, 2, 2)
    tgt = rng.random((3, 2, 2, 1)).astype(np.float32)
    mask = np.array(
        [[[1, 1], [1, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]], bool
    )  # 3, 1 and 0 valid pixels
    y = {"targets": {"depth_zbuffer": tgt}, "masks": {"depth_zbuffer": mask}}
    loss = _loss_fn(_one("depth_zbuffer"))(out, y)
    err = np.abs(out[0, ..., 0] - tgt[..., 0])
    ex0 = err[0][mask[0]].mean()
    ex1 = err[1][mask[1]].mean()
    # The example without valid pixels takes no part in the mean.
    np.testing.assert_allclose(loss, [(ex0 + ex1) / 2], rtol=1e-6)


def test_normal_losses_l1_and_cosine():
    rng = np.random.default_rng(1)
    out = _outputs(rng, 2, 2, 3)
    tgt = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
    tgt /= np.linalg.norm(tgt, axis=-1, keepdims=True)
    mask = rng.random((2, 2, 3)) > 0.3
    mask[:, 0, 0] = True
    y = {"targets": {"normal": tgt}, "masks": {"normal": mask}}
    pred = out[0, ..., :3]
    l1 = np.abs(pred - tgt).mean(-1)
    unit = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    cos = 1.0 - np.sum(unit * tgt, axis=-1)
    for kind, per_pixel in (("l1", l1), ("cosine", cos)):
        loss = _loss_fn(_one("normal", normal_loss=kind))(out, y)
        want = np.mean([per_pixel[b][mask[b]].mean() for b in range(2)])
        np.testing.assert_allclose(loss, [want], rtol=1e-5)


def test_segmentation_cross_entropy_ignores_class_0_and_masked_pixels():
    rng = np.random.default_rng(2)
    out = _outputs(rng, 2, 3, 3)
    cls = rng.integers(1, 18, (2, 3, 3)).astype(np.int32)
    cls[0, 0, :] = 0  # no label
    mask = cls != 0
    mask[1, 2, 2] = False  # masked although it has a class
    y = {"targets": {"segment_semantic": cls}, "masks": {"segment_semantic": mask}}
    # Class 0 is ignored even where the given mask says valid.
    everywhere = np.ones_like(mask)
    everywhere[1, 2, 2] = False
    y_all = {
        "targets": {"segment_semantic": cls},
        "masks": {"segment_semantic": everywhere},
    }
    logits = out[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, cls[..., None], -1)[..., 0]
    want = np.mean([nll[b][mask[b]].mean() for b in range(2)])
    fn = _loss_fn(_one("segment_semantic"))
    np.testing.assert_allclose(fn(out, y), [want], rtol=1e-5)
    np.testing.assert_allclose(fn(out, y_all), [want], rtol=1e-5)


def test_keypoints_and_edges_are_l1_and_every_task_reads_its_first_channels():
    rng = np.random.default_rng(3)
    tasks = dense.taskonomy_tasks(["keypoints2d", "edge_texture"])
    out = rng.normal(size=(2, 2, 2, 2, D)).astype(np.float32)
    t = {
        n: rng.random((2, 2, 2, 1)).astype(np.float32)
        for n in ("keypoints2d", "edge_texture")
    }
    m = {n: np.ones((2, 2, 2), bool) for n in t}
    loss = _loss_fn(tasks)(out, {"targets": t, "masks": m})
    want = [np.abs(out[0, ..., 0] - t["keypoints2d"][..., 0]).mean()]
    want += [np.abs(out[1, ..., 0] - t["edge_texture"][..., 0]).mean()]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # Channels past a task's own do not change its loss.
    out2 = out.copy()
    out2[..., 1:] += 100.0
    np.testing.assert_allclose(
        _loss_fn(tasks)(out2, {"targets": t, "masks": m}), want, rtol=1e-6
    )


@pytest.mark.parametrize(
    "name", ["depth_zbuffer", "normal", "segment_semantic", "edge_texture"]
)
def test_masked_pixels_change_neither_loss_nor_gradient(name):
    rng = np.random.default_rng(4)
    task = _one(name)
    out = _outputs(rng, 2, 3, 3)
    c = task[0].channels
    if name == "segment_semantic":
        tgt = rng.integers(1, 18, (2, 3, 3)).astype(np.int32)
    else:
        tgt = rng.normal(size=(2, 3, 3, min(c, 3))).astype(np.float32)
    mask = np.ones((2, 3, 3), bool)
    mask[0, 1, 1] = mask[1, 0, 2] = False
    if name != "segment_semantic":
        tgt[0, 1, 1] = np.nan  # an invalid target never reaches the loss
    y = {"targets": {name: tgt}, "masks": {name: mask}}
    fn = jax.jit(jax.value_and_grad(lambda o: _loss_fn(task)(o, y)[0]))
    loss, grad = fn(out)
    out2 = out.copy()
    out2[0, 0, 1, 1] = 1e3
    out2[0, 1, 0, 2] = -7.0
    loss2, grad2 = fn(out2)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert float(loss) == float(loss2)
    np.testing.assert_array_equal(grad, grad2)
    assert not np.any(grad[0, 0, 1, 1]) and not np.any(grad[0, 1, 0, 2])
    assert np.any(grad[0, 0, 0, 0])


def test_metrics_against_numpy():
    rng = np.random.default_rng(5)
    tasks = dense.taskonomy_tasks(["depth_zbuffer", "normal", "segment_semantic"])
    b, h, w = 3, 4, 4
    out = rng.normal(size=(3, b, h, w, D)).astype(np.float32)
    depth = rng.random((b, h, w, 1)).astype(np.float32)
    normal = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    cls = rng.integers(0, 4, (b, h, w)).astype(np.int32)  # few classes: overlaps
    out[2, ..., 4:] -= 10.0  # predict among classes 0..3 as well
    valid = rng.random((b, h, w)) > 0.2
    y = {
        "targets": {"depth_zbuffer": depth, "normal": normal, "segment_semantic": cls},
        "masks": {
            "depth_zbuffer": valid,
            "normal": valid,
            "segment_semantic": cls != 0,
        },
    }
    # Two evaluation batches of different sizes pool their pixels.
    index = np.arange(b).reshape(b, 1)
    res = dense.evaluate_dense(
        lambda xb: jnp.asarray(out[:, xb[:, 0]]), index, y, tasks, batch_size=2
    )
    mae = np.abs(out[0, ..., 0] - depth[..., 0])[valid].mean()
    p = out[1, ..., :3] / np.linalg.norm(out[1, ..., :3], axis=-1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(np.sum(p * normal, -1), -1, 1)))[valid].mean()
    pred = np.argmax(out[2, ..., 1:18], -1) + 1
    lab = cls != 0
    acc = (pred == cls)[lab].mean()
    ious = []
    for c in range(1, 18):
        inter = np.sum((pred == c) & (cls == c) & lab)
        union = np.sum(((pred == c) | (cls == c)) & lab)
        if union:
            ious.append(inter / union)
    t = res["tasks"]
    np.testing.assert_allclose(t["depth_zbuffer"]["mae"], mae, rtol=1e-5)
    np.testing.assert_allclose(t["normal"]["angular_error_deg"], ang, rtol=1e-4)
    np.testing.assert_allclose(t["segment_semantic"]["pixel_accuracy"], acc, rtol=1e-6)
    np.testing.assert_allclose(t["segment_semantic"]["miou"], np.mean(ious), rtol=1e-6)
    assert len(ious) >= 3


def test_segmentation_scores_of_a_known_confusion_matrix():
    cm = np.zeros((18, 18))
    cm[1, 1], cm[1, 2], cm[2, 2], cm[3, 3] = 4, 1, 3, 0
    cm[0, 0] = 99  # class 0 never counts in the mean
    s = dense.segmentation_scores(cm)
    # IoU 1 = 4 / 5, IoU 2 = 3 / 4; class 3 never occurs.
    assert s["miou"] == pytest.approx((0.8 + 0.75) / 2)


@pytest.fixture(scope="module")
def grouped():
    """A tiny two-group search network on Taskonomy-shaped random data."""
    tasks = dense.taskonomy_tasks()
    cfg = dense.DenseConfig(
        groups=2,
        encoder_widths=(4,),
        stem_width=4,
        decoder_widths=(4,),
        init="independent",
    )
    model = dense.build_dense_model(cfg, tasks)
    rng = np.random.default_rng(6)
    b, s = 2, 4
    x = rng.random((b, s, s, 3)).astype(np.float32)
    seg = rng.integers(0, 18, (b, s, s)).astype(np.int32)
    targets = {
        "depth_zbuffer": rng.random((b, s, s, 1)).astype(np.float32),
        "normal": rng.normal(size=(b, s, s, 3)).astype(np.float32),
        "segment_semantic": seg,
        "keypoints2d": rng.random((b, s, s, 1)).astype(np.float32),
        "edge_texture": rng.random((b, s, s, 1)).astype(np.float32),
    }
    masks = {n: rng.random((b, s, s)) > 0.2 for n in targets}
    masks["segment_semantic"] = seg != 0
    opt = tgjax.make_optimizer(1e-3)
    state = jax.jit(lambda k: tgjax.init_state(model, opt, k, x))(jax.random.key(0))
    return tasks, model, state, x, {"targets": targets, "masks": masks}


def test_loss_matrix_equals_pairs_and_backbone_gets_gradient(grouped):
    tasks, model, state, x, y = grouped
    codes = tgjax.TaskCodes.from_tasks([t.as_task() for t in tasks])
    loss_fn = _loss_fn(tasks)

    def total(params):
        lm, _ = tgjax.loss_matrix(
            model, params, state.model_state, x, y, codes, loss_fn=loss_fn
        )
        return jnp.sum(lm), lm

    (_, lm), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(state.params)
    out, _ = jax.jit(model.apply)(state.params, state.model_state, x)
    assert lm.shape == (5, 2)
    assert out.shape == (2, 5, 2, 4, 4, D)  # [groups, tasks, batch, H, W, D]

    @jax.jit
    def pairs(out):
        """Each (task, group) loss on its own, one task at a time."""
        rows = []
        for i, t in enumerate(tasks):
            one = {key: {t.name: v[t.name]} for key, v in y.items()}
            fn = dense.make_loss_fn([t])
            rows.append([fn(out[k, i][None], one)[0] for k in range(2)])
        return jnp.asarray(rows)

    np.testing.assert_allclose(lm, pairs(out), rtol=1e-5)
    assert not np.allclose(lm[:, 0], lm[:, 1])  # the groups differ
    bb = jax.tree.leaves(grads["backbone"])
    assert bb and all(np.all(np.isfinite(g)) for g in bb)
    assert any(np.any(g != 0) for g in bb)


def test_pruned_spatial_heads_match_the_selected_search_heads(grouped):
    tasks, model, state, x, y = grouped
    params = state.params  # independent initialisation: the groups differ
    groups = np.array([1, 1, 0, 1, 0])
    pp, ps, kept, tb = tgjax.prune(params, state.model_state, groups)
    assert kept.tolist() == [0, 1] and tb.tolist() == [1, 1, 0, 1, 0]
    pruned = jax.jit(model.apply_pruned)(pp, ps, x, tb)[0]
    out, _ = jax.jit(model.apply)(params, state.model_state, x)
    search = np.asarray(out)[groups, np.arange(5)]
    assert pruned.shape == (5, 2, 4, 4, D)
    np.testing.assert_allclose(pruned, search, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])
    # An empty group is dropped with its heads.
    _, _, kept, tb = tgjax.prune(params, state.model_state, np.ones(5, int))
    assert kept.tolist() == [1] and tb.tolist() == [0] * 5


def test_decoder_channels_a_task_does_not_read_get_no_gradient():
    head = dense.UpsampleDecoder((4,), out_channels=D)
    f = jnp.ones((1, 2, 2, 4))
    variables = jax.jit(head.init)(jax.random.key(0), f)
    task = _one("depth_zbuffer")
    y = {
        "targets": {"depth_zbuffer": jnp.zeros((1, 4, 4, 1))},
        "masks": {"depth_zbuffer": jnp.ones((1, 4, 4), bool)},
    }

    def loss(v):
        return _loss_fn(task)(head.apply(v, f)[None], y)[0]

    g = jax.jit(jax.grad(loss))(variables)["params"]["PatchConv3x3_1"]["kernel"]
    assert g.shape[-1] == D
    assert np.any(g[..., 0]) and not np.any(g[..., 1:])


def test_patch_conv_equals_a_flax_conv():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 5, 4, 3)), jnp.float32)
    patch = dense.PatchConv3x3(6)
    variables = patch.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + 0.1, variables)  # a non-zero bias
    want = nn.Conv(6, (3, 3)).apply(variables, x)
    np.testing.assert_allclose(patch.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_dense_task_and_config_checks():
    with pytest.raises(ValueError, match="Unknown Taskonomy task"):
        dense.taskonomy_tasks(["depth"])
    with pytest.raises(ValueError, match="loss must be one of"):
        dense.DenseTask("normal", "normal", 3, loss="l2")
    with pytest.raises(ValueError, match="decoder_widths"):
        dense.DenseConfig(encoder_widths=(4, 8), decoder_widths=(4,))
    assert dense.head_channels(dense.taskonomy_tasks()) == D


def test_fit_dense_on_a_taskonomy_fixture(tmp_path):
    """K = 1 end to end on generated omnidata files; the search loss falls."""
    _fixture(tmp_path, buildings=("hanson", "merom", "ihlen", "uvalda"))
    split = {"train": ["hanson", "merom"], "val": ["ihlen"], "test": ["uvalda"]}

    def records(name):
        src, ops = tk.taskonomy_source(name, tmp_path, buildings=split, image_size=8)
        return [ops[0].map(src[i]) for i in range(len(src))]

    cfg = dense.DenseConfig(
        groups=1,
        epochs=6,
        finetune_epochs=1,
        batch_size=3,
        learning_rate=1e-2,
        encoder_widths=(4,),
        stem_width=4,
        decoder_widths=(4,),
    )
    events = []
    res = dense.fit_dense(
        records("train"),
        records("val"),
        records("test"),
        cfg,
        callback=lambda e, p: events.append(e),
    )
    search = [h["train_loss"] for h in res.history if h["phase"] == "search"]
    assert len(search) == 6 and search[-1] < search[0]
    assert res.groups == [list(tk.TASKONOMY_TASKS)]
    assert events[-1] == "done" and "groups" in events
    t = res.test["tasks"]
    assert set(t) == set(tk.TASKONOMY_TASKS)
    assert 0 <= t["normal"]["angular_error_deg"] <= 180
    assert 0 <= t["segment_semantic"]["miou"] <= 1
    assert np.isfinite(res.test["total_loss"])
    # The shared first layers are frozen while fine-tuning.
    for a, b in zip(
        jax.tree.leaves(res.params["backbone"]),
        jax.tree.leaves(res.search_state.params["backbone"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_docstring_examples_run():
    result = doctest.testmod(dense, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


@pytest.mark.parametrize("shared", [True, False])
def test_backbone_shared_or_per_branch(shared):
    tasks = dense.taskonomy_tasks(["depth_zbuffer", "segment_semantic"])
    cfg = dense.DenseConfig(
        tasks=("depth_zbuffer", "segment_semantic"),
        groups=3,
        encoder_widths=(4, 8),
        stem_width=4,
        decoder_widths=(8, 4),
        shared_backbone=shared,
    )
    model = dense.build_dense_model(cfg, tasks)
    x = jnp.zeros((2, 8, 8, 3))
    params, state = jax.eval_shape(model.init_variables, jax.random.key(0), x)
    out = jax.eval_shape(lambda p, s: model.apply(p, s, x)[0], params, state)
    assert out.shape == (3, 2, 2, 8, 8, D)  # [groups, tasks, batch, H, W, D]
    stem = params["backbone"] if shared else params["branches"]["ConvStem_0"]
    assert jax.tree.leaves(stem)
    assert ("ConvStem_0" in params["branches"]) is not shared
    # Every branch and head has its own copy: [groups, ...] and [groups, tasks, ...].
    assert all(a.shape[0] == 3 for a in jax.tree.leaves(params["branches"]))
    assert all(a.shape[:2] == (3, 2) for a in jax.tree.leaves(params["heads"]))


def test_fit_dense_refuses_sizes_the_encoder_cannot_halve():
    rec = {
        "x": np.zeros((6, 6, 3), np.float32),
        "targets": {"depth_zbuffer": np.zeros((6, 6, 1), np.float32)},
        "masks": {"depth_zbuffer": np.ones((6, 6), bool)},
    }
    cfg = dense.DenseConfig(tasks=("depth_zbuffer",), batch_size=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        dense.fit_dense([rec], [rec], [rec], cfg)
