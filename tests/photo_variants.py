"""Variants of one photo as real folders hold them (burst shots, edited exports, re-uploads):
crops keeping 75-95% of the frame, mirror images, resizes, JPEG re-encodes, brightness shifts.
Built from the photos scikit-learn ships (no download)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance


def sample_photo(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def variant(img: Image.Image, *, area: float, flip: bool, quality: int, brightness: float, width: int,
            dx: float = 0.5, dy: float = 0.5) -> Image.Image:
    """``img`` cropped to ``area`` of its frame (offset dx, dy in [0, 1]), maybe mirrored, resized to
    ``width``, brightness scaled, and re-encoded as JPEG at ``quality``."""
    w, h = img.size
    side = float(np.sqrt(area))
    cw, ch = int(w * side), int(h * side)
    x0, y0 = int((w - cw) * dx), int((h - ch) * dy)
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = out.resize((width, int(width * ch / cw)), Image.Resampling.BILINEAR)
    out = ImageEnhance.Brightness(out).enhance(brightness)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# The variants the tests use: every kind of change the issue names, one or more at a time.
VARIANTS = [
    dict(area=1.0, flip=False, quality=95, brightness=1.0, width=320),
    dict(area=0.8, flip=True, quality=70, brightness=1.08, width=300, dx=0.2, dy=0.7),
    dict(area=0.75, flip=False, quality=75, brightness=0.92, width=256, dx=0.9, dy=0.1),
    dict(area=0.9, flip=True, quality=85, brightness=1.0, width=400, dx=0.5, dy=0.5),
]


def variants_of(name: str) -> list[Image.Image]:
    img = sample_photo(name)
    return [variant(img, **v) for v in VARIANTS]
