"""Image decoding: encoded bytes -> the uint8 pixels every later stage sees.

The one decoder. clean stores what it returns; predict, serving and the report's thumbnails
call it too, so a model sees at prediction exactly what it was trained on. ``images_to_tensor``
is the one scaling of those pixels into what a model takes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# What Pillow may open: the formats ingest accepts (components/data/sources/imagecheck.py checks
# their signatures). Pillow knows many more (TIFF, PSD, EPS through Ghostscript, ...); clean,
# predict and serving refuse them as ingest does.
DECODE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

# Notes decode_image appends: counted in clean's manifest (`decode_notes`) and metrics.
ANIMATED_FIRST_FRAME = "animated_first_frame"   # an animated GIF/PNG/WebP: only its first frame is kept
EXIF_ROTATED = "exif_rotated"                   # turned upright as its EXIF orientation tag says
SCALED_16BIT = "scaled_16bit"                   # 16-bit grey scaled to 8 bits (not clipped)

_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ORIENTATION = 0x0112


def _upright(img: Image.Image, notes: list[str] | None) -> Image.Image:
    """The image as a viewer shows it: phone cameras store pixels sideways and say so in EXIF,
    which ``convert`` ignores (photos would train, and be predicted, sideways)."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
        if orientation in (None, 1):
            return img
        turned = ImageOps.exif_transpose(img)
    except (OSError, ValueError):
        raise
    except Exception as err:  # malformed EXIF raises what Pillow's TIFF parser raises (SyntaxError, struct.error)
        raise ValueError(f"unreadable EXIF orientation ({type(err).__name__}: {err})") from None
    if notes is not None:
        notes.append(EXIF_ROTATED)
    return turned


def _to_8bit(img: Image.Image, notes: list[str] | None) -> Image.Image:
    """16-bit grey (PNG "I;16", or "I" holding 0..65535) scaled to 0..255; ``convert("L")`` clips
    every value above 255 to white."""
    if img.mode not in _MODES_16BIT:
        return img
    wide = np.asarray(img).astype(np.int64)
    if notes is not None:
        notes.append(SCALED_16BIT)
    return Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")


def _draft(img: Image.Image, w: int, h: int) -> None:
    """A JPEG at least twice the stored size in both sides is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg scales in the DCT, as ``Image.thumbnail`` and ``Image.draft`` do), still at least the
    stored size, before the resize: a 12-megapixel phone photo stored at 224x224 decodes ~30x
    fewer pixels. Other formats are decoded whole. The size asked for is in the file's own
    orientation: a photo its EXIF turns a quarter is stored sideways."""
    if img.format not in ("JPEG", "MPO"):
        return
    try:
        turned = img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # malformed EXIF: _upright names it
        return
    img.draft(img.mode, (h, w) if turned else (w, h))


def decode_image(data: bytes, *, size: tuple[int, int], channels: int, notes: list[str] | None = None
                 ) -> np.ndarray:
    """Encoded image bytes -> uint8 array of shape (height, width, channels).

    The one decoder: clean, predict and serving (and the report's thumbnails) all call it, so a
    model sees at prediction exactly what it was trained on. EXIF orientation is applied, 16-bit
    grey is scaled, an animated image gives its first frame, a large JPEG is decoded at a reduced
    scale before the resize (:func:`_draft`); the first three append their name
    (EXIF_ROTATED, SCALED_16BIT, ANIMATED_FIRST_FRAME) to ``notes`` when given, for the caller to
    count. Formats outside DECODE_FORMATS raise ``UnidentifiedImageError``.
    """
    h, w = size
    with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as img:
        if getattr(img, "is_animated", False) and notes is not None:
            notes.append(ANIMATED_FIRST_FRAME)
        _draft(img, w, h)
        img = _to_8bit(_upright(img, notes), notes)
        mode = "L" if channels == 1 else "RGB"
        if img.mode != mode:   # convert to its own mode is a copy of every pixel
            img = img.convert(mode)
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(h, w, channels)


def decode_files(payloads, *, shape: tuple[int, int, int]) -> np.ndarray:
    """Encoded files (a sequence of bytes) -> uint8 (N, h, w, c) by :func:`decode_image`: what a reader
    handed the files rather than the pixels (embed's replicas, a training batch) decodes them with."""
    h, w, c = shape
    return np.stack([decode_image(b, size=(h, w), channels=c) for b in payloads]) if len(payloads) else \
        np.empty((0, h, w, c), np.uint8)


def images_to_tensor(pixels: np.ndarray) -> "torch.Tensor":
    """Decoded uint8 images (N, H, W, C) -> the float32 (N, C, H, W) in [0, 1] that models take.

    The one place this scaling lives: training (``trainwise.components.training.data.decode``), embed
    (``trainwise.components.embedding.batch``) and serving (components/serving) call it. torch is imported
    here, not at the top: clean and the report decode images without it.
    """
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0)
