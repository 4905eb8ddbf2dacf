"""Taskonomy on a tiny omnidata-layout fixture."""

import numpy as np
import pytest
from PIL import Image

from tgjax.data import taskonomy as tk
from tgjax.data.pipeline import make_loader

SIZE = 12


def _save(root, domain, building, point, view, array):
    folder = root / domain / "taskonomy" / building
    folder.mkdir(parents=True, exist_ok=True)
    name = f"point_{point}_view_{view}_domain_{domain}.png"
    Image.fromarray(array).save(folder / name)


def _fixture(root, buildings=("hanson", "merom")):
    rng = np.random.default_rng(0)
    for b in buildings:
        for point, view in [(0, 0), (0, 1), (3, 2)]:
            _save(
                root,
                "rgb",
                b,
                point,
                view,
                rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8),
            )
            depth = rng.integers(0, 5000, (SIZE, SIZE)).astype(np.uint16)
            depth[0, :] = 65535
            _save(root, "depth_zbuffer", b, point, view, depth)
            _save(
                root,
                "normal",
                b,
                point,
                view,
                rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8),
            )
            seg = rng.integers(0, 18, (SIZE, SIZE)).astype(np.uint8)
            _save(root, "segment_semantic", b, point, view, seg)
            for d in ("keypoints2d", "edge_texture"):
                _save(
                    root,
                    d,
                    b,
                    point,
                    view,
                    rng.integers(0, 65535, (SIZE, SIZE)).astype(np.uint16),
                )
        # An rgb frame without targets is dropped, not an error.
        _save(root, "rgb", b, 9, 9, np.zeros((SIZE, SIZE, 3), np.uint8))


def test_index_matches_samples_across_domains(tmp_path):
    _fixture(tmp_path)
    index = tk.index_taskonomy(tmp_path, ["hanson", "merom"])
    assert len(index.samples) == 6 and index.unmatched == 2
    assert index.samples[0] == ("hanson", 0, 0)


def test_decoded_record_shapes_and_masks(tmp_path):
    _fixture(tmp_path)
    buildings = {"train": ["hanson"], "val": ["merom"]}
    src, ops = tk.taskonomy_source("train", tmp_path, buildings=buildings, image_size=8)
    record = ops[0].map(src[0])
    assert record["x"].shape == (8, 8, 3) and record["x"].dtype == np.float32
    t, m = record["targets"], record["masks"]
    assert t["depth_zbuffer"].shape == (8, 8, 1) and t["normal"].shape == (8, 8, 3)
    assert (
        t["segment_semantic"].shape == (8, 8)
        and t["segment_semantic"].dtype == np.int32
    )
    assert t["keypoints2d"].max() <= 1.0 and t["edge_texture"].shape == (8, 8, 1)
    assert not m["depth_zbuffer"][0].any() and m["depth_zbuffer"][1:].all()
    np.testing.assert_array_equal(m["normal"], m["depth_zbuffer"])
    np.testing.assert_array_equal(m["segment_semantic"], t["segment_semantic"] != 0)
    assert np.abs(t["normal"]).max() <= 1.0
    loader = make_loader(src, batch_size=2, seed=0, operations=ops)
    batch = next(iter(loader))
    assert batch["targets"]["normal"].shape == (2, 8, 8, 3)
    assert batch["masks"]["depth_zbuffer"].shape == (2, 8, 8)


def test_tiny_preset_and_errors(tmp_path, monkeypatch):
    assert len(tk.TINY_BUILDINGS["train"]) == 25
    all_b = sum(map(list, tk.TINY_BUILDINGS.values()), [])
    assert len(set(all_b)) == 35
    root = tmp_path / "taskonomy"
    _fixture(root, buildings=tk.TINY_BUILDINGS["val"])
    monkeypatch.setenv("TGJAX_DATA_DIR", str(tmp_path))
    src, _ = tk.taskonomy_source("val")
    assert len(src) == 15
    with pytest.raises(FileNotFoundError, match="rgb/taskonomy/allensville"):
        tk.taskonomy_source("train")
    with pytest.raises(ValueError, match="Unknown Taskonomy task"):
        tk.index_taskonomy(tmp_path, ["ihlen"], tasks=["depth"])


def test_bad_files_name_the_file(tmp_path):
    _fixture(tmp_path, buildings=("hanson",))
    seg = np.full((SIZE, SIZE), 40, np.uint8)
    _save(tmp_path, "segment_semantic", "hanson", 0, 0, seg)
    src, ops = tk.taskonomy_source("x", tmp_path, buildings={"x": ["hanson"]})
    with pytest.raises(ValueError, match="segment_semantic.png: segmentation classes"):
        ops[0].map(src[0])
    path = tk.file_path(tmp_path, "normal", "hanson", 0, 1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="domain_normal.png: cannot decode"):
        ops[0].map(src[1])
