"""CelebA from a user's copy of the official files; never downloaded.

Expected layout under ``data_dir`` (or ``$TGJAX_DATA_DIR/celeba``)::

    img_align_celeba/000001.jpg ...   aligned 178x218 JPEG faces
    list_attr_celeba.txt              count; 40 names; "file v1 ... v40"
    list_eval_partition.txt           "file 0|1|2" (train, val, test)

or the CSV variant of the two lists, ``list_attr_celeba.csv`` (header
``image_id,<40 names>``) and ``list_eval_partition.csv`` (header
``image_id,partition``). Attribute values -1/1 become labels 0/1.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import grain.python as grain
import numpy as np

from tgjax.data.base import MultiTaskData, Split
from tgjax.data.cache import atomic_save_npz, cache_dir, data_dir, load_npz
from tgjax.data.images import decode_rgb
from tgjax.data.stream import StreamData, StreamSplit
from tgjax.tasks import Task

CELEBA9 = (
    "5_o_Clock_Shadow",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Goatee",
    "Mustache",
    "No_Beard",
    "Rosy_Cheeks",
    "Wearing_Hat",
)
"""The nine attributes of the CelebA-9 benchmark."""

SPLITS = ("train", "val", "test")
IMAGE_FOLDER = "img_align_celeba"


@dataclasses.dataclass(frozen=True)
class CelebAIndex:
    """The image list of CelebA with labels and official partition.

    Attributes:
      root: the CelebA folder.
      files: `[images]` file names, in the order of the attribute list.
      labels: `[images, 40]` float32 0/1 attribute labels.
      partition: `[images]` int: 0 train, 1 validation, 2 test.
      attribute_names: the 40 names, in label-column order.
    """

    root: Path
    files: np.ndarray
    labels: np.ndarray
    partition: np.ndarray
    attribute_names: tuple[str, ...]

    def split(self, name: str) -> np.ndarray:
        """Row numbers of one split (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}.")
        return np.flatnonzero(self.partition == SPLITS.index(name))

    def columns(self, attributes) -> list[int]:
        """Label columns of the named attributes (see :func:`load_celeba`)."""
        names = _attribute_names(attributes, self.attribute_names)
        return [self.attribute_names.index(a) for a in names]


def _attribute_names(attributes, known: Sequence[str]) -> tuple[str, ...]:
    if isinstance(attributes, str):
        if attributes == "celeba9":
            attributes = CELEBA9
        elif attributes == "all":
            attributes = tuple(known)
        else:
            attributes = (attributes,)
    attributes = tuple(attributes)
    unknown = [a for a in attributes if a not in known]
    if unknown or not attributes:
        raise ValueError(
            f"Unknown CelebA attribute(s) {unknown or attributes!r}; choose among "
            f"{list(known)}, or 'celeba9' or 'all'."
        )
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"CelebA attributes repeat in {list(attributes)}.")
    return attributes


def _attr_value(cell: str, where: str) -> float:
    if cell == "1":
        return 1.0
    if cell == "-1":
        return 0.0
    raise ValueError(f"{where}: attribute values must be 1 or -1, got {cell!r}.")


def read_attributes_txt(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Reads ``list_attr_celeba.txt``; runs of spaces of any length separate.

    Returns:
      ``(files, labels, names)``: file names, `[images, attributes]` 0/1
      float32 labels, attribute names.

    Raises:
      ValueError: naming the line of a malformed entry or a wrong count.
    """
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(
            f"{path}: expected the image count on line 1 and the attribute "
            "names on line 2."
        )
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(
            f"{path}, line 1: expected the image count, got {lines[0][:40]!r}."
        ) from None
    names = lines[1].split()
    files, rows = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        cells = line.split()
        if not cells:
            continue
        where = f"{path}, line {lineno}"
        if len(cells) != len(names) + 1:
            raise ValueError(
                f"{where}: expected a file name and {len(names)} values, got "
                f"{len(cells)} fields."
            )
        files.append(cells[0])
        rows.append([_attr_value(c, where) for c in cells[1:]])
    if len(files) != count:
        raise ValueError(
            f"{path}: line 1 announces {count} images but {len(files)} follow; "
            "the file is truncated or edited."
        )
    return files, np.asarray(rows, np.float32).reshape(-1, len(names)), names


def read_attributes_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Reads ``list_attr_celeba.csv`` (header ``image_id,<names>``)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "image_id":
            raise ValueError(
                f"{path}: expected a header row starting with 'image_id', got "
                f"{header!r}."
            )
        names = [h.strip() for h in header[1:]]
        files, rows = [], []
        for lineno, cells in enumerate(reader, start=2):
            if not cells:
                continue
            where = f"{path}, line {lineno}"
            if len(cells) != len(header):
                raise ValueError(
                    f"{where}: expected {len(header)} cells, got {len(cells)}."
                )
            files.append(cells[0].strip())
            rows.append([_attr_value(c.strip(), where) for c in cells[1:]])
    return files, np.asarray(rows, np.float32).reshape(-1, len(names)), names


def read_partition(path: Path) -> dict[str, int]:
    """Reads ``list_eval_partition.txt`` or ``.csv``: file name -> 0, 1 or 2."""
    out = {}
    is_csv = path.suffix == ".csv"
    with open(path, newline="") as f:
        rows = csv.reader(f) if is_csv else (line.split() for line in f)
        for lineno, cells in enumerate(rows, start=1):
            if not cells:
                continue
            if is_csv and lineno == 1:
                if [c.strip() for c in cells] != ["image_id", "partition"]:
                    raise ValueError(
                        f"{path}: expected the header 'image_id,partition', got "
                        f"{','.join(cells)!r}."
                    )
                continue
            cells = [c.strip() for c in cells]
            if len(cells) != 2 or cells[1] not in ("0", "1", "2"):
                raise ValueError(
                    f"{path}, line {lineno}: expected a file name and 0, 1 or 2, "
                    f"got {cells!r}."
                )
            out[cells[0]] = int(cells[1])
    return out


def _pick(root: Path, stem: str) -> Path:
    for suffix in (".txt", ".csv"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise FileNotFoundError(
        f"CelebA folder {str(root)!r} lacks {stem}.txt (or {stem}.csv); it should "
        f"hold {IMAGE_FOLDER}/, list_attr_celeba.txt and list_eval_partition.txt "
        "as distributed, or their .csv variants."
    )


def read_celeba_index(data_dir_: str | os.PathLike | None = None) -> CelebAIndex:
    """Reads CelebA's attribute and partition lists.

    Args:
      data_dir_: the CelebA folder; by default ``$TGJAX_DATA_DIR/celeba``.

    Raises:
      FileNotFoundError: naming a missing folder or list.
      ValueError: naming the file and line of a malformed entry, or images
        listed in one file but not the other.
    """
    root = data_dir(data_dir_, dataset="CelebA", subfolder="celeba")
    attr_path = _pick(root, "list_attr_celeba")
    part_path = _pick(root, "list_eval_partition")
    reader = read_attributes_csv if attr_path.suffix == ".csv" else read_attributes_txt
    files, labels, names = reader(attr_path)
    partition = read_partition(part_path)
    missing = [f for f in files if f not in partition]
    if missing:
        raise ValueError(
            f"{part_path} has no split for {len(missing)} image(s) of "
            f"{attr_path.name}, e.g. {missing[:3]}."
        )
    if not (root / IMAGE_FOLDER).is_dir():
        raise FileNotFoundError(
            f"CelebA folder {str(root)!r} lacks the image folder {IMAGE_FOLDER}/."
        )
    return CelebAIndex(
        root=root,
        files=np.asarray(files),
        labels=labels,
        partition=np.asarray([partition[f] for f in files], np.int64),
        attribute_names=tuple(names),
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CelebA image {str(path)!r} is listed in the attribute file but "
            "missing on disk."
        ) from None


class CelebASource:
    """One CelebA split as a grain source of undecoded JPEG records.

    Records are ``{"x": JPEG bytes as [bytes] uint8, "y": [attributes]
    float32, "index": int64, "path": str}``; :class:`DecodeCelebA` turns
    ``x`` into pixels.

    Args:
      index: from :func:`read_celeba_index`.
      split: ``"train"``, ``"val"`` or ``"test"``.
      attributes: names, ``"celeba9"`` (default) or ``"all"``.
      limit: keep only the first ``limit`` images of the split.
    """

    def __init__(
        self, index: CelebAIndex, split: str, attributes="celeba9", limit=None
    ):
        rows = index.split(split)
        if limit is not None:
            rows = rows[:limit]
        self._root = index.root / IMAGE_FOLDER
        self._files = index.files[rows]
        self._labels = index.labels[np.ix_(rows, index.columns(attributes))]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        path = self._root / str(self._files[i])
        return {
            "x": np.frombuffer(_read_bytes(path), np.uint8),
            "y": self._labels[i],
            "index": np.int64(i),
            "path": str(path),
        }

    def __repr__(self) -> str:
        return f"CelebASource(root={str(self._root)!r}, size={len(self)})"


@dataclasses.dataclass(frozen=True)
class DecodeCelebA(grain.MapTransform):
    """Decodes a :class:`CelebASource` record to `[size, size, 3]` float32."""

    image_size: int | tuple[int, int] = 64

    def map(self, record: dict) -> dict:
        record = dict(record)
        path = record.pop("path")
        record["x"] = decode_rgb(record["x"].tobytes(), self.image_size, path)
        return record


@dataclasses.dataclass(frozen=True)
class QuantizeToBytes(grain.MapTransform):
    """Rounds float pixels in [0, 1] to 1/255 steps, as :func:`load_celeba`
    stores them, so streamed and in-memory inputs are the same numbers."""

    elementwise = True

    def map(self, record: dict) -> dict:
        record = dict(record)
        pixels = np.round(np.asarray(record["x"]) * 255.0).astype(np.uint8)
        record["x"] = pixels.astype(np.float32) / 255.0
        return record


def celeba_stream(
    data_dir: str | os.PathLike | None = None,
    *,
    attributes="celeba9",
    image_size: int | tuple[int, int] = 64,
    limit: int | None = None,
) -> StreamData:
    """CelebA as a stream: :func:`load_celeba`'s data, decoded batch by batch.

    Only the file lists and labels are read up front; images are read and
    decoded while training (in the loader's workers, see ``--workers``), so
    all of CelebA trains in a few hundred MB of host memory. The inputs
    equal :func:`load_celeba`'s with the same arguments.

    Raises:
      FileNotFoundError, ValueError: naming the missing or malformed file.
    """
    index = read_celeba_index(data_dir)
    names = _attribute_names(attributes, index.attribute_names)
    ops = (DecodeCelebA(image_size), QuantizeToBytes())
    splits = {}
    for split in SPLITS:
        source = CelebASource(index, split, names, limit)
        splits[split] = StreamSplit(source, ops, source._labels)
    return StreamData(
        name="celeba",
        tasks=tuple(Task(a, "binary") for a in names),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=f"CelebA ({len(names)} attributes), official splits, "
        f"images resized to {image_size}, streamed",
    )


def _decode_split(source: CelebASource, image_size, threads: int) -> np.ndarray:
    decode = DecodeCelebA(image_size)

    def one(i):
        x = decode.map(source[i])["x"]
        return np.round(x * 255.0).astype(np.uint8)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        images = list(pool.map(one, range(len(source))))
    if not images:
        h, w = (image_size,) * 2 if isinstance(image_size, int) else image_size
        return np.zeros((0, h, w, 3), np.uint8)
    return np.stack(images)


def load_celeba(
    data_dir: str | os.PathLike | None = None,
    *,
    attributes="celeba9",
    image_size: int | tuple[int, int] = 64,
    limit: int | None = None,
    cache: bool | str | os.PathLike = False,
    threads: int = 8,
) -> MultiTaskData:
    """CelebA in memory: one binary task per attribute, official splits.

    Images are decoded and resized (without cropping) to ``image_size``;
    inputs are `[examples, height, width, 3]` float32 in [0, 1]. All of
    CelebA at 64x64 takes about 10 GB this way; stream it with
    :class:`CelebASource` and :func:`tgjax.data.pipeline.make_loader`
    instead, or pass ``limit``.

    Args:
      data_dir: the CelebA folder; by default ``$TGJAX_DATA_DIR/celeba``.
      attributes: attribute names, ``"celeba9"`` (the CelebA-9 benchmark,
        :data:`CELEBA9`) or ``"all"`` (all 40).
      image_size: output side, or (height, width).
      limit: keep only the first ``limit`` images of each split.
      cache: store the decoded images (uint8) and reuse them: True for the
        default cache folder, or a folder.
      threads: decoding threads.

    Raises:
      FileNotFoundError, ValueError: naming the missing or malformed file.

    Example:
      >>> data = load_celeba("/data/celeba", limit=1000)  # doctest: +SKIP
      >>> data.task_names[:2]  # doctest: +SKIP
      ['5_o_Clock_Shadow', 'Black_Hair']
    """
    index = read_celeba_index(data_dir)
    names = _attribute_names(attributes, index.attribute_names)
    splits = {}
    for split in SPLITS:
        # The cached pixels do not depend on the attributes chosen.
        source = CelebASource(index, split, names, limit)
        images = None
        path = None
        if cache is not False:
            key = hashlib.sha1(
                f"{index.root.resolve()}|{image_size}|{limit}|"
                f"{'|'.join(source._files)}".encode()
            ).hexdigest()[:16]
            folder = cache_dir(None if cache is True else cache)
            path = folder / f"celeba_{split}_{key}.npz"
            cached = load_npz(path)
            if cached is not None and len(cached.get("x", ())) == len(source):
                images = cached["x"]
        if images is None:
            images = _decode_split(source, image_size, threads)
            if path is not None:
                atomic_save_npz(path, x=images)
        splits[split] = Split(
            images.astype(np.float32) / 255.0, source._labels.astype(np.float32)
        )
    return MultiTaskData(
        name="celeba",
        tasks=tuple(Task(a, "binary") for a in names),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        description=f"CelebA ({len(names)} attributes), official splits, "
        f"images resized to {image_size}",
    )
