"""CelebA on a tiny copy written in the official on-disk formats."""

import numpy as np
import pytest
from PIL import Image

from tgjax.data import CELEBA9, celeba, load_dataset
from tgjax.data.pipeline import make_loader

NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs "
    "Big_Lips Big_Nose Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows "
    "Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin "
    "Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
PARTITION = [0, 0, 0, 1, 2, 2]


def _write(root, values, csv_variant=False, partition=PARTITION):
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [f"{i + 1:06d}.jpg" for i in range(len(values))]
    for name in files:
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name, quality=90)
    if csv_variant:
        rows = ["image_id," + ",".join(NAMES)]
        rows += [
            f + "," + ",".join(map(str, v)) for f, v in zip(files, values, strict=True)
        ]
        (root / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        rows = ["image_id,partition"]
        rows += [f"{f},{p}" for f, p in zip(files, partition, strict=True)]
        (root / "list_eval_partition.csv").write_text("\n".join(rows) + "\n")
    else:
        # Irregular runs of spaces, as in the distributed file.
        lines = [str(len(files)), " ".join(NAMES) + " "]
        for f, v in zip(files, values, strict=True):
            lines.append(f + " " + "".join(f"{x:>3d}" for x in v))
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        lines = [f"{f} {p}" for f, p in zip(files, partition, strict=True)]
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return files


def _values():
    rng = np.random.default_rng(1)
    return rng.choice([-1, 1], size=(len(PARTITION), 40)).tolist()


@pytest.mark.parametrize("csv_variant", [False, True])
def test_load_celeba9_both_formats(tmp_path, csv_variant):
    values = _values()
    _write(tmp_path, values, csv_variant)
    data = load_dataset("celeba", data_dir=tmp_path, image_size=16)
    assert data.task_names == list(CELEBA9)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    assert data.train.x.shape == (3, 16, 16, 3) and data.train.x.dtype == np.float32
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0
    cols = [NAMES.index(a) for a in CELEBA9]
    expected = (np.asarray(values)[:3][:, cols] + 1) / 2
    np.testing.assert_array_equal(data.train.y, expected)


def test_attribute_subset_env_var_and_cache(tmp_path, monkeypatch):
    _write(tmp_path / "celeba", _values())
    monkeypatch.setenv("TGJAX_DATA_DIR", str(tmp_path))
    cache = tmp_path / "cache"
    data = celeba.load_celeba(
        attributes=["Smiling", "Male"], image_size=(8, 12), cache=cache
    )
    assert data.task_names == ["Smiling", "Male"]
    assert data.test.x.shape == (2, 8, 12, 3)
    assert len(list(cache.glob("celeba_*.npz"))) == 3
    again = celeba.load_celeba(attributes="all", image_size=(8, 12), cache=cache)
    assert len(again.tasks) == 40
    np.testing.assert_allclose(again.test.x, data.test.x)
    with pytest.raises(ValueError, match="Unknown CelebA attribute"):
        celeba.load_celeba(attributes=["Smiles"])


def test_stream_through_grain(tmp_path):
    _write(tmp_path, _values())
    index = celeba.read_celeba_index(tmp_path)
    source = celeba.CelebASource(index, "train")
    ops = (celeba.DecodeCelebA(32),)
    batch = next(iter(make_loader(source, batch_size=2, seed=0, operations=ops)))
    assert batch["x"].shape == (2, 32, 32, 3) and batch["y"].shape == (2, 9)


def test_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TGJAX_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="TGJAX_DATA_DIR"):
        celeba.read_celeba_index(None)
    _write(tmp_path, _values())
    text = (tmp_path / "list_attr_celeba.txt").read_text()
    (tmp_path / "list_attr_celeba.txt").write_text(text.replace(" -1", "  0", 1))
    with pytest.raises(ValueError, match="line 3: attribute values must be 1 or -1"):
        celeba.read_celeba_index(tmp_path)
    (tmp_path / "list_attr_celeba.txt").write_text("7" + text[1:])
    with pytest.raises(ValueError, match="announces 7 images but 6"):
        celeba.read_celeba_index(tmp_path)
    (tmp_path / "list_attr_celeba.txt").write_text(text)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        celeba.read_celeba_index(tmp_path)


def test_truncated_or_missing_image_is_a_clear_error(tmp_path):
    files = _write(tmp_path, _values())
    path = tmp_path / "img_align_celeba" / files[1]
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ValueError, match=f"{files[1]}: cannot decode the image"):
        celeba.load_celeba(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{files[1]}.*missing on disk"):
        celeba.load_celeba(tmp_path)
