"""`clean.image_size: auto` / `clean.channels: auto`: a shape that follows the images themselves.

A survey of the ingested images (header sizes and, on small thumbnails, whether any image has
colour) picks the stored shape: RGB when any image has colour, a square side from the data's
typical size capped by ``max_side`` (or the backbone's expected input when one is set).
It also says when an explicit shape obviously does not fit the data (photos squashed to 8x8,
colour photos stored grey), so the clean stage can warn.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
from PIL import Image

# Mean absolute difference between channels (0..255) above which a thumbnail counts as colour:
# greys saved as RGB JPEGs differ by a level or two from compression alone.
COLOUR_LEVEL = 4.0
# Images with a side shorter than this say nothing about the data's typical size (1x1 tracking
# pixels, 2-pixel strips): the survey counts them and leaves them out of `auto`. Twenty 1x1 PNGs
# made `auto` store every image at 1x1. The digits demo (8x8) is well above it.
DEGENERATE_SIDE = 4
# EXIF orientations that turn the image a quarter (5-8): its upright height is its stored width.
_QUARTER_TURNS = (5, 6, 7, 8)


@dataclass
class ImageSurvey:
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each surveyed image
    colour: int = 0          # surveyed images with colour
    surveyed: int = 0
    degenerate: int = 0      # images with a side under DEGENERATE_SIDE: not in `sizes`, not surveyed
    colour_surveyed: bool = True   # False: sizes only (``colour`` stays 0, it was not looked at)

    @property
    def median_side(self) -> int:
        return int(np.median([min(h, w) for h, w in self.sizes])) if self.sizes else 0

    @property
    def typical(self) -> tuple[int, int]:
        if not self.sizes:
            return (0, 0)
        return int(np.median([h for h, _ in self.sizes])), int(np.median([w for _, w in self.sizes]))


def _has_colour(img: Image.Image) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, cheap
    small = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.int16)
    return float(np.abs(small[..., 0] - small[..., 1]).mean() + np.abs(small[..., 1] - small[..., 2]).mean()) / 2 \
        > COLOUR_LEVEL


def survey_images(batches: Iterable[pa.RecordBatch], *, limit: int = 2000, colour: bool = True) -> ImageSurvey:
    """Sizes and colour of up to ``limit`` images (the first ones; ingest order is by path).
    ``colour`` False: sizes only, from the files' headers (nothing is decoded); ``colour_surveyed``
    says so. Colour decides only ``channels: auto`` without a backbone and the warning for
    ``channels: 1``; decoding 2,000 thumbnails for nothing was a fifth of clean's time on 3,000 photos."""
    s = ImageSurvey(colour_surveyed=colour)
    for batch in batches:
        for data in batch.column("image").to_pylist():
            if s.surveyed + s.degenerate >= limit:
                return s
            try:
                with Image.open(io.BytesIO(data)) as img:
                    w, h = img.size
                    if min(w, h) < DEGENERATE_SIDE:
                        s.degenerate += 1
                        continue
                    if img.getexif().get(0x0112) in _QUARTER_TURNS:  # as decode_image will turn it
                        w, h = h, w
                    has_colour = colour and _has_colour(img)
            except Exception:  # clean sets unreadable files aside itself, with the reason
                continue
            s.surveyed += 1
            s.sizes.append((h, w))
            s.colour += int(has_colour)
    return s


def choose_shape(survey: ImageSurvey, *, image_size, channels, max_side: int,
                 backbone_input: tuple[int, int] | None = None) -> tuple[tuple[int, int], int, list[str]]:
    """((height, width), channels, warnings) for the clean stage; ``auto`` values decided here."""
    warnings: list[str] = []
    if channels == "auto":
        if not (backbone_input or survey.colour_surveyed):
            raise ValueError("channels auto without a backbone needs the colour survey (survey_images colour=True)")
        channels = 3 if survey.colour or backbone_input else 1
    if image_size == "auto":
        if backbone_input:
            image_size = tuple(backbone_input)
        else:
            side = max(1, min(max_side, survey.median_side or max_side))
            image_size = (side, side)
        if survey.degenerate and not backbone_input:
            warnings.append(f"clean.image_size auto left out {survey.degenerate} image(s) with a side under "
                            f"{DEGENERATE_SIDE} pixels (e.g. 1x1) when choosing the size"
                            + ("" if survey.sizes else f"; no other image was surveyed, so it is "
                               f"{image_size[0]}x{image_size[1]} (clean.max_image_side)"))
    image_size = tuple(int(v) for v in image_size)
    th, tw = survey.typical
    if survey.sizes and min(image_size) * 8 <= min(th, tw) and min(image_size) < 32:
        warnings.append(f"clean.image_size {list(image_size)} shrinks images of typically {th}x{tw} pixels "
                        f"{min(th, tw) // min(image_size)}x: set clean.image_size: auto (or e.g. [64, 64])")
    if channels == 1 and survey.colour:
        warnings.append(f"clean.channels 1 stores {survey.colour} of {survey.surveyed} surveyed colour images "
                        "in grey: set clean.channels: auto (or 3)")
    if backbone_input and tuple(image_size) != tuple(backbone_input):
        warnings.append(f"clean.image_size {list(image_size)} differs from the backbone's input "
                        f"{list(backbone_input)}: the backbone resizes every image again; auto picks its size")
    return image_size, int(channels), warnings
