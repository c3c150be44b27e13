"""Decode, validate, de-duplicate and check the labels of a raw dataset, accounting for every
row set aside.

Two streaming passes keep memory bounded by one batch plus one small record per row (for
images the 1 KiB near-duplicate embedding waits in a temporary file, and 36 numbers of it stay):
pass 1 decodes and validates each row into a temporary Parquet file and remembers its id,
label, content hash and near-duplicate signature; duplicates and groups are then decided over
those records; pass 2 streams the temporary file and writes the rows that are kept.

Label errors are not judged here: the audit stage (components/quality/audit.py) does that after
split, where it knows which rows are train rows (the only ones it may change).

Cleaned payloads (the data contract after clean):
- ``image``: fixed_size_list<uint8>[h*w*c], decoded, resized to ``image_size``, converted to
  ``channels``; manifest ``image_shape`` [h, w, c].
- ``text``: string, Unicode NFKC, control characters removed, whitespace collapsed and
  stripped; empty text is set aside.
- ``sequence`` / ``features``: fixed_size_list<float32>[L]; rows with NaN/inf or another length
  are set aside; manifest ``sequence_length`` / ``feature_names``.

Columns added: ``group`` (near-duplicate group, named by its smallest id; split keeps a group
together).
"""

from __future__ import annotations

import io
import re
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from components.data.contract import DatasetWriter, SetAside, content_hash
from components.quality.duplicates import (DUPLICATE, LABEL_CONFLICT, NearDuplicateIndex, connected_groups, duplicate_pairs,
                                           find_exact_duplicates, group_summary, image_embedding, key64,
                                           near_pairs_table, text_key)

# Reasons a row is set aside; the manifest counts rows per reason.
CORRUPT = "corrupt_payload"
NON_FINITE = "non_finite_values"
WRONG_LENGTH = "wrong_length"
BAD_LABEL = "label_out_of_range"

MODALITIES = ("image", "text", "sequence", "features")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Kept for callers of the first version.
find_duplicates = find_exact_duplicates


@dataclass(frozen=True)
class CleanOptions:
    image_size: tuple[int, int] = (8, 8)
    channels: int = 1
    drop_duplicates: bool = True
    payload_length: int | None = None          # sequences / features; None: the most common length
    near_duplicate_distance: float = 0.05      # images; 0 turns near-duplicate search off


def decode_image(data: bytes, *, size: tuple[int, int], channels: int) -> np.ndarray:
    """Encoded image bytes -> uint8 array of shape (height, width, channels)."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        h, w = size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(h, w, channels)


def normalize_text(text: str | bytes) -> str:
    """NFKC, control characters to spaces, whitespace runs collapsed, stripped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).split())


class _Unusable(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason


def _decode(payload, modality: str, options: CleanOptions):
    """One raw payload -> (cleaned value, bytes to hash); raises _Unusable with a reason."""
    if payload is None or (hasattr(payload, "__len__") and len(payload) == 0):
        raise _Unusable(CORRUPT, "empty payload")
    if modality == "image":
        try:
            pixels = decode_image(payload, size=tuple(options.image_size), channels=options.channels)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise _Unusable(CORRUPT, f"{type(err).__name__}: {err}") from None
        flat = pixels.reshape(-1)
        return flat, flat.tobytes()
    if modality == "text":
        try:
            text = normalize_text(payload)
        except UnicodeDecodeError as err:
            raise _Unusable(CORRUPT, f"not UTF-8: {err}") from None
        if not text:
            raise _Unusable(CORRUPT, "empty text after normalisation")
        return text, text.encode()
    try:
        values = np.asarray(payload, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise _Unusable(CORRUPT, f"not numbers: {err}") from None
    bad = ~np.isfinite(values)
    if bad.any():
        raise _Unusable(NON_FINITE, f"{int(bad.sum())} NaN/inf values of {len(values)}")
    return values, values.tobytes()


def _staging_type(modality: str, options: CleanOptions) -> pa.DataType:
    if modality == "image":
        h, w = options.image_size
        return pa.list_(pa.uint8(), h * w * options.channels)
    if modality == "text":
        return pa.string()
    return pa.list_(pa.float32())  # lengths are checked after pass 1


def _column(values: list, modality: str, options: CleanOptions) -> pa.Array:
    if modality == "image":
        h, w = options.image_size
        width = h * w * options.channels
        return pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(values), pa.uint8()), width)
    if modality == "text":
        return pa.array(values, pa.string())
    return pa.array([v.tolist() for v in values], pa.list_(pa.float32()))


@dataclass
class _Record:
    id: str
    source: str
    label: int
    digest: str
    near: object = None      # text: 64-bit key of the normalised text (images: in the NearDuplicateIndex)
    length: int = 0


def clean_dataset(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *, n_classes: int,
                  modality: str, options: CleanOptions, classes: list[str] | None = None,
                  feature_names: list[str] | None = None) -> dict:
    """Clean raw rows of one modality into ``writer``.

    Returns ``rows_in``, ``set_aside`` (a :class:`SetAside`), ``extra`` (manifest keys),
    ``metrics`` (``clean/...`` numbers) and ``conflicts`` (near-duplicate groups whose labels disagree).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown payload {modality!r}: choose from {MODALITIES}")
    classes = classes or [str(k) for k in range(n_classes)]
    aside = SetAside()
    records: list[_Record] = []
    rows_in = 0
    stage_schema = pa.schema([("id", pa.string()), ("label", pa.int64()),
                              (modality, _staging_type(modality, options)), ("source", pa.string())])

    near_distance = options.near_duplicate_distance if modality == "image" else 0.0
    # image embeddings: 36 numbers a row in memory, the full 1 KiB on disk (bounded memory)
    near_index = NearDuplicateIndex(radius=near_distance) if near_distance > 0 else None
    with tempfile.TemporaryDirectory(prefix="trainwise-clean-") as tmp:
        staged = Path(tmp) / "decoded.parquet"
        # -- pass 1: decode and validate ------------------------------------------------------
        with pq.ParquetWriter(staged, stage_schema) as staging:
            for batch in batches:
                ids, labels = batch.column("id").to_pylist(), batch.column("label").to_pylist()
                payloads, sources = batch.column(modality).to_pylist(), batch.column("source").to_pylist()
                rows_in += len(ids)
                keep = {"id": [], "label": [], modality: [], "source": []}
                for row_id, label, payload, source in zip(ids, labels, payloads, sources):
                    if label is None or not 0 <= label < n_classes:
                        aside.add(row_id, source, BAD_LABEL, label=label)
                        continue
                    try:
                        value, raw = _decode(payload, modality, options)
                    except _Unusable as err:
                        aside.add(row_id, source, err.reason, error=str(err))
                        continue
                    rec = _Record(row_id, source, int(label), content_hash(raw))
                    if modality == "image":
                        if near_index is not None:  # row k of the index is records[k]
                            h, w = options.image_size
                            near_index.add(image_embedding(value.reshape(h, w, options.channels)))
                    elif modality == "text":
                        rec.near = key64(text_key(value).encode())
                    else:
                        rec.length = len(value)
                    records.append(rec)
                    for k, v in (("id", row_id), ("label", label), (modality, value), ("source", source)):
                        keep[k].append(v)
                if keep["id"]:
                    staging.write_table(pa.table({**keep, modality: _column(keep[modality], modality, options)},
                                                 schema=stage_schema))

        # -- decisions over the records ---------------------------------------------------------
        extra: dict = {}
        removed: dict[str, tuple[str, dict]] = {}
        if modality == "image":
            extra["image_shape"] = [*options.image_size, options.channels]
        elif modality in ("sequence", "features"):
            length = options.payload_length
            if length is None and modality == "features" and feature_names:
                length = len(feature_names)
            if length is None and records:
                length = Counter(r.length for r in records).most_common(1)[0][0]
            for r in records:
                if r.length != length:
                    removed[r.id] = (WRONG_LENGTH, {"length": r.length, "expected": length})
            if modality == "sequence":
                extra["sequence_length"] = length
            else:
                names = list(feature_names or [])
                extra["feature_names"] = names if len(names) == length else [f"f{i}" for i in range(length or 0)]
        candidates = [r for r in records if r.id not in removed]
        if options.drop_duplicates:
            removed.update(find_exact_duplicates([(r.id, r.digest, r.label) for r in candidates]))
        kept = [r for r in records if r.id not in removed]
        ids = [r.id for r in kept]
        labels = np.array([r.label for r in kept], dtype=np.int64)
        index = {row_id: k for k, row_id in enumerate(ids)}

        near, near_dist = np.empty((0, 2), np.int64), np.empty(0, np.float32)
        if near_index is not None:  # found once here; split's leakage check reads them (near_pairs.parquet)
            with near_index:
                near, near_dist = near_index.pairs(keep=np.array([r.id not in removed for r in records], bool))
        pairs = duplicate_pairs(hashes=[r.digest for r in kept], near=near,
                                near_keys=[r.near for r in kept] if modality == "text" else None)
        groups = connected_groups(ids, pairs)
        dup_summary = group_summary(groups, labels.tolist(), ids)
        extra["near_duplicates"] = {"method": {"image": "embedding_distance", "text": "normalised_text"}.get(
            modality, "exact_only"), "distance": near_distance, "groups": dup_summary["groups"],
            "rows": dup_summary["rows"], "conflicts": len(dup_summary["conflicts"])}

        metrics = {"clean/exact_duplicates": sum(1 for reason, _ in removed.values() if reason == DUPLICATE),
                   "clean/exact_duplicate_conflicts": sum(1 for reason, _ in removed.values()
                                                          if reason == LABEL_CONFLICT),
                   "clean/near_duplicate_groups": dup_summary["groups"],
                   "clean/near_duplicate_rows": dup_summary["rows"],
                   "clean/near_duplicate_conflicts": len(dup_summary["conflicts"])}

        # -- pass 2: write what is kept ---------------------------------------------------------
        if records:
            for batch in pq.ParquetFile(staged).iter_batches(batch_size=4096):
                table = pa.Table.from_batches([batch])
                rows = [index.get(i, -1) if i not in removed else -1 for i in table.column("id").to_pylist()]
                rows = np.array(rows, dtype=np.int64)
                table = table.filter(pa.array(rows >= 0))
                rows = rows[rows >= 0]
                if not len(rows):
                    continue
                if modality in ("sequence", "features"):
                    vals = table.column(modality).combine_chunks().flatten()
                    table = table.set_column(table.schema.get_field_index(modality), modality,
                                             pa.FixedSizeListArray.from_arrays(vals, length))
                table = table.append_column("group", pa.array([groups[k] for k in rows], pa.string()))
                writer.write(table)
        source_of = {r.id: r.source for r in records}
        for row_id, (reason, detail) in sorted(removed.items()):
            aside.add(row_id, source_of[row_id], reason, **detail)

    return {"rows_in": rows_in, "set_aside": aside, "extra": extra, "metrics": metrics,
            "conflicts": dup_summary["conflicts"], "near_pairs": near_pairs_table(ids, near, near_dist),
            # first version's key, still read by components.data.demo
            "image_shape": extra.get("image_shape")}


def clean_images(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *, n_classes: int,
                 options: CleanOptions, classes: list[str] | None = None) -> dict:
    """:func:`clean_dataset` for image rows."""
    return clean_dataset(batches, writer, n_classes=n_classes, modality="image", options=options, classes=classes)
