"""The demo source: scikit-learn's 8x8 handwritten digits, shipped with the package."""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import pyarrow as pa
from PIL import Image

from trainwise.components.data.contract import batched, content_id
from trainwise.components.data.sources.base import RAW_IMAGE_SCHEMA, Source, Tally


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def digits_source(*, batch_rows: int = 1024) -> Source:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package.

    Pixels (0..16) are scaled to 0..255 and stored as PNG bytes, exactly like an image folder
    would be: decoding is ``clean``'s job, so every image source shares one path downstream.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    tally = Tally()

    def gen() -> Iterator[pa.Table]:
        for idx in batched(range(len(labels)), batch_rows):
            payloads = [encode_png(images[i]) for i in idx]
            sources = [f"sklearn:digits/{i}" for i in idx]
            tally.seen += len(idx)
            yield pa.table({
                "id": [content_id(p, s) for p, s in zip(payloads, sources)],
                "label": labels[idx],
                "image": payloads,
                "source": sources,
            }, schema=RAW_IMAGE_SCHEMA)

    return Source(classes=[str(c) for c in digits.target_names], batches=gen(), tally=tally)
