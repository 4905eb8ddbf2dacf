"""Taskonomy in the omnidata layout, from a user's copy; never downloaded.

Files live at ``<root>/<domain>/taskonomy/<building>/point_<p>_view_<v>_domain_
<domain>.png`` with ``root`` from the ``root`` argument or
``$TGJAX_DATA_DIR/taskonomy``. A sample is one (building, point, view) that
exists in the ``rgb`` domain and in every requested task domain.

Dense targets do not fit a `[examples, tasks]` label array, so every sample is
a record of arrays (``H, W`` = ``image_size``)::

    {"x": [H, W, 3] float32 RGB in [0, 1],
     "targets": {"depth_zbuffer": [H, W, 1] float32 metres,
                 "normal": [H, W, 3] float32 in [-1, 1],
                 "segment_semantic": [H, W] int32 class 0..17,
                 "keypoints2d": [H, W, 1] float32 in [0, 1],
                 "edge_texture": [H, W, 1] float32 in [0, 1]},
     "masks": {task: [H, W] bool, True where the target is valid},
     "index": int64}

Validity: depth is invalid where the 16-bit PNG holds 65535 (no return);
normals share the depth mask; segmentation ignores class 0; keypoints and
edges are valid everywhere. Targets are resized nearest-neighbour so that no
invalid marker or class index is blended.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import grain.python as grain
import numpy as np

from tgjax.data.cache import data_dir
from tgjax.data.images import decode_rgb, open_image, resize

TASKONOMY_TASKS = (
    "depth_zbuffer",
    "normal",
    "segment_semantic",
    "keypoints2d",
    "edge_texture",
)
"""The Taskonomy-5 tasks."""

TASK_CHANNELS = {
    "depth_zbuffer": 1,
    "normal": 3,
    "segment_semantic": 18,
    "keypoints2d": 1,
    "edge_texture": 1,
}
"""Output channels per task (classes for ``segment_semantic``)."""

TINY_BUILDINGS = {
    "train": (
        "allensville",
        "beechwood",
        "benevolence",
        "coffeen",
        "cosmos",
        "forkland",
        "hanson",
        "hiteman",
        "klickitat",
        "lakeville",
        "leonardo",
        "lindenwood",
        "marstons",
        "merom",
        "mifflinburg",
        "newfields",
        "onaga",
        "pinesdale",
        "pomaria",
        "ranchester",
        "shelbyville",
        "stockman",
        "tolstoy",
        "wainscott",
        "woodbine",
    ),
    "val": ("collierville", "corozal", "darden", "markleeville", "wiconisco"),
    "test": ("ihlen", "mcdade", "muleshoe", "noxapater", "uvalda"),
}
"""The ``"tiny"`` preset: 25 training, 5 validation and 5 test buildings.

Buildings, not images, are split, so that no room is seen in training and
evaluation alike.

Checked building by building against the official split file of the
omnidata tools, repository EPFL-VILAB/omnidata, path
``omnidata_tools/torch/dataloader/component_datasets/taskonomy/train_val_test_tiny.csv``
(columns ``id,train,val,test``): all 35 names and their splits match.
"""

PRESETS = {"tiny": TINY_BUILDINGS}
DEPTH_INVALID = 65535
DEPTH_UNITS_PER_METRE = 512.0
SEGMENT_CLASSES = 18
_NAME = re.compile(r"point_(\d+)_view_(\d+)_domain_([A-Za-z0-9_]+)\.png")


def _folder(root: Path, domain: str, building: str) -> Path:
    return root / domain / "taskonomy" / building


def _samples(folder: Path, domain: str) -> set[tuple[int, int]]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Taskonomy folder {str(folder)!r} is missing; expected "
            f"<root>/{domain}/taskonomy/<building>/ with files "
            f"point_<p>_view_<v>_domain_{domain}.png."
        )
    found = set()
    for name in os.listdir(folder):
        m = _NAME.fullmatch(name)
        if m and m.group(3) == domain:
            found.add((int(m.group(1)), int(m.group(2))))
    return found


def file_path(root: Path, domain: str, building: str, point: int, view: int) -> Path:
    """Where the omnidata layout keeps one sample of one domain."""
    name = f"point_{point}_view_{view}_domain_{domain}.png"
    return _folder(root, domain, building) / name


def buildings_of(split: str, buildings="tiny") -> tuple[str, ...]:
    """The buildings of ``split`` under a preset name or a split -> names dict."""
    table = PRESETS.get(buildings) if isinstance(buildings, str) else buildings
    if table is None:
        raise ValueError(
            f"Unknown building preset {buildings!r}; choose one of {list(PRESETS)} "
            "or pass a dict such as {'train': [...], 'val': [...], 'test': [...]}."
        )
    if split not in table:
        raise ValueError(f"No buildings for split {split!r}; have {list(table)}.")
    return tuple(table[split])


@dataclasses.dataclass(frozen=True)
class TaskonomyIndex:
    """Samples present in rgb and every requested task domain.

    Attributes:
      root: the omnidata root folder.
      tasks: requested tasks.
      samples: sorted (building, point, view) tuples.
      unmatched: how many rgb samples lacked some task file and were dropped.
    """

    root: Path
    tasks: tuple[str, ...]
    samples: tuple[tuple[str, int, int], ...]
    unmatched: int


def index_taskonomy(
    root: str | os.PathLike | None,
    buildings: Sequence[str],
    tasks: Sequence[str] = TASKONOMY_TASKS,
) -> TaskonomyIndex:
    """Matches samples across domains on (building, point, view).

    Args:
      root: the omnidata root; by default ``$TGJAX_DATA_DIR/taskonomy``.
      buildings: building names to include.
      tasks: task domains that every sample must have.

    Raises:
      FileNotFoundError: naming a missing domain or building folder.
      ValueError: for unknown tasks, or when no sample has all domains.
    """
    root = data_dir(root, dataset="Taskonomy", subfolder="taskonomy")
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKONOMY_TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"Unknown Taskonomy task(s) {unknown or tasks!r}; choose among "
            f"{list(TASKONOMY_TASKS)}."
        )
    samples, unmatched = [], 0
    for building in buildings:
        have = _samples(_folder(root, "rgb", building), "rgb")
        common = set(have)
        for task in tasks:
            common &= _samples(_folder(root, task, building), task)
        unmatched += len(have) - len(common)
        samples += [(building, p, v) for p, v in sorted(common)]
    if not samples:
        raise ValueError(
            f"No (building, point, view) under {str(root)!r} has an rgb file and "
            f"files for all of {list(tasks)} in buildings {list(buildings)}."
        )
    return TaskonomyIndex(root, tasks, tuple(samples), unmatched)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"Taskonomy file {str(path)!r} is missing.") from None


class TaskonomySource:
    """Taskonomy samples as a grain source of undecoded PNG records.

    Records hold each domain's PNG bytes (as uint8 arrays) and file paths;
    :class:`DecodeTaskonomy` turns them into the record described in this
    module's docstring.

    Args:
      index: from :func:`index_taskonomy`.
    """

    def __init__(self, index: TaskonomyIndex):
        self._index = index

    def __len__(self) -> int:
        return len(self._index.samples)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        building, point, view = self._index.samples[i]
        raw, paths = {}, {}
        for domain in ("rgb",) + self._index.tasks:
            path = file_path(self._index.root, domain, building, point, view)
            raw[domain] = np.frombuffer(_read(path), np.uint8)
            paths[domain] = str(path)
        return {"raw": raw, "paths": paths, "index": np.int64(i)}

    def __repr__(self) -> str:
        return f"TaskonomySource(root={str(self._index.root)!r}, size={len(self)})"


def _gray(data: np.ndarray, path: str, size) -> tuple[np.ndarray, float]:
    """A one-channel PNG as integers, and the largest value its depth allows."""
    img = open_image(data.tobytes(), path)
    if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
        img = img.convert("L")
    top = 255.0 if img.mode == "L" else 65535.0
    return np.asarray(resize(img, size, smooth=False)).astype(np.int64), top


def decode_sample(raw: dict, paths: dict, image_size) -> dict:
    """Decodes one sample's PNG bytes; see the module docstring for the record.

    Raises:
      ValueError: naming the file for a broken image or an out-of-range class.
    """
    x = decode_rgb(raw["rgb"].tobytes(), image_size, paths["rgb"])
    size = x.shape[:2]
    targets, masks = {}, {}
    depth_valid = None
    if "depth_zbuffer" in raw:
        d, _ = _gray(raw["depth_zbuffer"], paths["depth_zbuffer"], size)
        depth_valid = d < DEPTH_INVALID
        depth = np.where(depth_valid, d / DEPTH_UNITS_PER_METRE, 0.0)
        targets["depth_zbuffer"] = depth[..., None].astype(np.float32)
        masks["depth_zbuffer"] = depth_valid
    if "normal" in raw:
        img = open_image(raw["normal"].tobytes(), paths["normal"]).convert("RGB")
        n = np.asarray(resize(img, size, smooth=False), np.float32)
        targets["normal"] = n / 127.5 - 1.0
        # Without depth, a zero vector marks a pixel with no surface.
        masks["normal"] = (
            depth_valid if depth_valid is not None else np.any(n > 0, axis=-1)
        )
    if "segment_semantic" in raw:
        path = paths["segment_semantic"]
        s, _ = _gray(raw["segment_semantic"], path, size)
        if s.max(initial=0) >= SEGMENT_CLASSES or s.min(initial=0) < 0:
            raise ValueError(
                f"{path}: segmentation classes must lie in 0..{SEGMENT_CLASSES - 1}, "
                f"found {int(s.min())}..{int(s.max())}."
            )
        targets["segment_semantic"] = s.astype(np.int32)
        masks["segment_semantic"] = s != 0
    for task in ("keypoints2d", "edge_texture"):
        if task in raw:
            v, top = _gray(raw[task], paths[task], size)
            targets[task] = (v / top)[..., None].astype(np.float32)
            masks[task] = np.ones(size, bool)
    return {"x": x, "targets": targets, "masks": masks}


@dataclasses.dataclass(frozen=True)
class DecodeTaskonomy(grain.MapTransform):
    """Decodes a :class:`TaskonomySource` record (runs in grain workers)."""

    image_size: int | tuple[int, int] = 256

    def map(self, record: dict) -> dict:
        out = decode_sample(record["raw"], record["paths"], self.image_size)
        out["index"] = record["index"]
        return out


def taskonomy_source(
    split: str,
    root: str | os.PathLike | None = None,
    *,
    buildings="tiny",
    tasks: Sequence[str] = TASKONOMY_TASKS,
    image_size: int | tuple[int, int] = 256,
) -> tuple[TaskonomySource, tuple[grain.MapTransform, ...]]:
    """One Taskonomy split as a grain source and its decoding step.

    Args:
      split: ``"train"``, ``"val"`` or ``"test"``.
      root: the omnidata root; by default ``$TGJAX_DATA_DIR/taskonomy``.
      buildings: ``"tiny"`` (:data:`TINY_BUILDINGS`) or a dict from split to
        building names.
      tasks: the task domains each sample must have.
      image_size: side of the decoded images, or (height, width).

    Returns:
      ``(source, operations)`` for :func:`tgjax.data.pipeline.make_loader`.

    Example:
      >>> src, ops = taskonomy_source("train", "/data/omnidata")  # doctest: +SKIP
      >>> loader = make_loader(src, batch_size=8, seed=0,  # doctest: +SKIP
      ...                      operations=ops)
    """
    index = index_taskonomy(root, buildings_of(split, buildings), tasks)
    return TaskonomySource(index), (DecodeTaskonomy(image_size),)


class _Picked:
    """The records ``picks`` of a source, renumbered ``0 .. len(picks) - 1``."""

    def __init__(self, source, picks: np.ndarray):
        self._source = source
        self._picks = np.asarray(picks, np.int64)

    def __len__(self) -> int:
        return len(self._picks)

    def __getitem__(self, i: int) -> dict:
        record = dict(self._source[int(self._picks[int(i)])])
        record["index"] = np.int64(i)
        return record

    def __repr__(self) -> str:
        return f"{self._source!r}[{len(self)} picked]"


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over ``0 .. n - 1`` (all without one)."""
    if limit and n > limit:
        return np.linspace(0, n - 1, limit).round().astype(np.int64)
    return np.arange(n, dtype=np.int64)


def taskonomy_stream(
    root: str | os.PathLike | None = None,
    *,
    buildings="tiny",
    tasks: Sequence[str] = TASKONOMY_TASKS,
    image_size: int | tuple[int, int] = 256,
    max_per_split: int | None = None,
) -> dict:
    """Train, val and test splits that stream Taskonomy for :func:`fit_dense`.

    Each split is a :class:`tgjax.data.stream.StreamSplit` of undecoded PNG
    records whose decoding runs while training; a batch's ``"y"`` holds the
    stacked ``"targets"`` and ``"masks"``. Only the file index is in memory.

    Args:
      root, buildings, tasks, image_size: as for :func:`taskonomy_source`.
      max_per_split: keep at most this many records per split, evenly spaced
        over the split (None or 0: all).

    Returns:
      ``{"train": split, "val": split, "test": split}``.

    Example:
      >>> splits = taskonomy_stream("/data/omnidata", image_size=64)  # doctest: +SKIP
      >>> fit_dense(splits["train"], splits["val"], splits["test"])  # doctest: +SKIP
    """
    from tgjax.data.stream import StreamSplit

    out = {}
    for split in ("train", "val", "test"):
        source, ops = taskonomy_source(
            split, root, buildings=buildings, tasks=tasks, image_size=image_size
        )
        picks = evenly_spaced(len(source), max_per_split)
        if len(picks) < len(source):
            source = _Picked(source, picks)
        out[split] = StreamSplit(source, ops, label_fields=("targets", "masks"))
    return out
