"""Decoding and resizing image files, with errors that name the file."""

from __future__ import annotations

import io

import numpy as np

try:
    from PIL import Image
except ImportError:  # pragma: no cover - reported when an image is decoded
    Image = None


def _pil():
    if Image is None:
        raise ImportError(
            "Decoding images needs the package 'pillow', which is not installed. "
            "Install it with: pip install pillow"
        )
    return Image


def open_image(data: bytes, source: str):
    """Decodes image bytes fully, so that a truncated file fails here.

    Raises:
      ValueError: naming ``source`` when the bytes are not a whole image.
    """
    pil = _pil()
    try:
        img = pil.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, pil.DecompressionBombError) as e:
        raise ValueError(
            f"{source}: cannot decode the image ({e}); the file is truncated, "
            "corrupt or not an image. Replace it with an intact copy."
        ) from None
    return img


def decode_rgb(data: bytes, size: int | tuple[int, int] | None, source: str):
    """Image bytes -> `[height, width, 3]` float32 RGB in [0, 1], resized.

    Args:
      data: the encoded file (JPEG, PNG, ...).
      size: output side length, or (height, width); None keeps the size.
      source: file name for error messages.
    """
    img = open_image(data, source).convert("RGB")
    img = resize(img, size, smooth=True)
    return np.asarray(img, np.float32) / 255.0


def resize(img, size, *, smooth: bool):
    """Resizes a PIL image to ``size`` (int or (height, width)).

    Smooth (bilinear, antialiased) for pictures; nearest-neighbour for label
    maps and raw measurements, so that no class index or invalid-depth
    marker gets averaged with its neighbours.
    """
    if size is None:
        return img
    h, w = (size, size) if isinstance(size, int) else size
    if img.size == (w, h):
        return img
    pil = _pil()
    method = pil.Resampling.BILINEAR if smooth else pil.Resampling.NEAREST
    return img.resize((w, h), method)
