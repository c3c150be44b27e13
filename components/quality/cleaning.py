"""Decode, validate and de-duplicate a raw dataset, accounting for every row set aside.

Two streaming passes keep memory bounded by one batch plus one small record per row:
pass 1 decodes and validates each row into a temporary Parquet file and remembers
``(id, content hash, label)``; the duplicate decision is then made over those records;
pass 2 streams the temporary file and writes the rows that are kept.
"""

from __future__ import annotations

import io
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from components.data.contract import DatasetWriter, SetAside, content_hash

# Reasons a row is set aside; the manifest counts rows per reason.
CORRUPT = "corrupt_payload"
BAD_LABEL = "label_out_of_range"
DUPLICATE = "duplicate"
LABEL_CONFLICT = "duplicate_label_conflict"


@dataclass(frozen=True)
class CleanOptions:
    image_size: tuple[int, int] = (8, 8)
    channels: int = 1
    drop_duplicates: bool = True


def decode_image(data: bytes, *, size: tuple[int, int], channels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 array of shape (height, width, channels)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        h, w = size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(h, w, channels)


def _decoded_schema(n_values: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("label", pa.int64()),
        ("image", pa.list_(pa.uint8(), n_values)),
        ("source", pa.string()),
    ])


def clean_images(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *,
                 n_classes: int, options: CleanOptions) -> dict:
    """Clean raw image rows into ``writer``; returns the stats that go into the manifest."""
    h, w = options.image_size
    n_values = h * w * options.channels
    schema = _decoded_schema(n_values)
    aside = SetAside()
    records: list[tuple[str, str, int]] = []  # (id, hash, label) of every decodable row
    source_of: dict[str, str] = {}
    rows_in = 0

    with tempfile.TemporaryDirectory(prefix="trainwise-clean-") as tmp:
        staged = Path(tmp) / "decoded.parquet"
        with pq.ParquetWriter(staged, schema) as staging:
            for batch in batches:
                ids, labels = batch.column("id").to_pylist(), batch.column("label").to_pylist()
                payloads, sources = batch.column("image").to_pylist(), batch.column("source").to_pylist()
                rows_in += len(ids)
                keep_ids, keep_labels, keep_pixels, keep_sources = [], [], [], []
                for row_id, label, payload, source in zip(ids, labels, payloads, sources):
                    if label is None or not 0 <= label < n_classes:
                        aside.add(row_id, source, BAD_LABEL, label=label)
                        continue
                    try:
                        if not payload:
                            raise ValueError("empty payload")
                        pixels = decode_image(payload, size=(h, w), channels=options.channels)
                    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
                        aside.add(row_id, source, CORRUPT, error=f"{type(err).__name__}: {err}")
                        continue
                    flat = pixels.reshape(-1)
                    records.append((row_id, content_hash(flat.tobytes()), label))
                    source_of[row_id] = source
                    keep_ids.append(row_id)
                    keep_labels.append(label)
                    keep_pixels.append(flat)
                    keep_sources.append(source)
                if keep_ids:
                    staging.write_table(pa.table({
                        "id": keep_ids, "label": keep_labels,
                        "image": pa.FixedSizeListArray.from_arrays(
                            pa.array(np.concatenate(keep_pixels), pa.uint8()), n_values),
                        "source": keep_sources,
                    }, schema=schema))

        dropped = find_duplicates(records) if options.drop_duplicates else {}
        if records:
            for batch in pq.ParquetFile(staged).iter_batches(batch_size=4096):
                table = pa.Table.from_batches([batch])
                writer.write(table.filter(pa.array([i not in dropped for i in table.column("id").to_pylist()])))
        for row_id, (reason, detail) in sorted(dropped.items()):
            aside.add(row_id, source_of[row_id], reason, **detail)

    return {"rows_in": rows_in, "set_aside": aside, "image_shape": [h, w, options.channels]}


def find_duplicates(records: list[tuple[str, str, int]]) -> dict[str, tuple[str, dict]]:
    """Rows to set aside among exact duplicates (same decoded content hash).

    A group whose labels agree keeps its smallest id (deterministic, independent of order);
    the others are ``duplicate`` of it. A group whose labels disagree cannot be trusted:
    every member is set aside as ``duplicate_label_conflict``.
    """
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for row_id, digest, label in records:
        groups[digest].append((row_id, label))
    dropped: dict[str, tuple[str, dict]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        if len({label for _, label in members}) > 1:
            for row_id, label in members:
                dropped[row_id] = (LABEL_CONFLICT, {"group": [m for m, _ in members], "label": label})
        else:
            keeper = members[0][0]
            for row_id, _ in members[1:]:
                dropped[row_id] = (DUPLICATE, {"of": keeper})
    return dropped
