"""Decode, validate, de-duplicate and check the labels of a raw dataset, accounting for every
row set aside.

Two streaming passes keep memory bounded by one batch plus one small record per row (for
images it holds the 1 KiB near-duplicate embedding; the label-issue step is the exception: its
model needs every kept row's features at once):
pass 1 decodes and validates each row into a temporary Parquet file and remembers its id,
label, content hash and near-duplicate signature; duplicates, groups, injected noise and
label issues are then decided over those records; pass 2 streams the temporary file and
writes the rows that are kept, with their decisions applied.

Cleaned payloads (the data contract after clean):
- ``image``: fixed_size_list<uint8>[h*w*c], decoded, resized to ``image_size``, converted to
  ``channels``; manifest ``image_shape`` [h, w, c].
- ``text``: string, Unicode NFKC, control characters removed, whitespace collapsed and
  stripped; empty text is set aside.
- ``sequence`` / ``features``: fixed_size_list<float32>[L]; rows with NaN/inf or another length
  are set aside; manifest ``sequence_length`` / ``feature_names``.

Columns added: ``group`` (near-duplicate group, named by its smallest id; split keeps a group
together); with noise injection ``true_label`` (read only by scoring code); with the ``flag``
or ``relabel`` policy ``label_issue`` (bool); with ``relabel`` ``given_label``.
"""

from __future__ import annotations

import io
import re
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from components.data.contract import DatasetWriter, SetAside, content_hash
from components.quality.duplicates import (DUPLICATE, LABEL_CONFLICT, connected_groups, duplicate_pairs, find_exact_duplicates,
                                           group_summary, image_embedding, text_key)
from components.quality.label_issues import (LabelIssueOptions, TooFewRows, decide, detection_scores, oof_probabilities,
                                             suspects_table)
from components.quality.noise import inject_symmetric_noise

# Reasons a row is set aside; the manifest counts rows per reason.
CORRUPT = "corrupt_payload"
NON_FINITE = "non_finite_values"
WRONG_LENGTH = "wrong_length"
BAD_LABEL = "label_out_of_range"
LABEL_ISSUE = "label_issue"

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
    label_issues: LabelIssueOptions | None = None  # None: no label-error search (no Ray needed)
    noise_rate: float = 0.0                    # symmetric noise injected into the train portion
    noise_seed: int = 0
    split_fractions: dict = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    split_seed: int = 0


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


def oof_features(column: pa.Array, modality: str, *, shape: list[int] | None = None):
    """Features of the fast label-issue model, from a cleaned payload column.

    Images: pixels scaled to [0, 1] (at most 32x32 per channel; larger images are shrunk).
    Text: TF-IDF of hashed word uni- and bigrams (sparse). Sequences: standardised values plus
    standardised FFT magnitudes (phase-free). Features: standardised values.
    """
    if modality == "text":
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

        counts = HashingVectorizer(n_features=2**16, alternate_sign=False, ngram_range=(1, 2),
                                   norm=None).transform(column.to_pylist())
        return TfidfTransformer().fit_transform(counts)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if modality == "image":
        h, w, c = shape
        x = flat.reshape(-1, h, w, c)
        if h > 32 or w > 32:
            x = np.stack([np.asarray(Image.fromarray(a[..., 0] if c == 1 else a).resize(
                (min(w, 32), min(h, 32)), Image.Resampling.BILINEAR)) for a in x])
        return x.reshape(len(x), -1).astype(np.float32) / 255.0
    x = flat.reshape(len(column), -1).astype(np.float32)
    if modality == "sequence":
        x = np.concatenate([x, np.abs(np.fft.rfft(x, axis=1)).astype(np.float32)], axis=1)
    return ((x - x.mean(0)) / np.where(x.std(0) > 1e-8, x.std(0), 1.0)).astype(np.float32)


@dataclass
class _Record:
    id: str
    source: str
    label: int
    digest: str
    near: object = None      # image embedding (np.ndarray) or text key (str)
    length: int = 0


def clean_dataset(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *, n_classes: int,
                  modality: str, options: CleanOptions, classes: list[str] | None = None,
                  feature_names: list[str] | None = None) -> dict:
    """Clean raw rows of one modality into ``writer``.

    Returns ``rows_in``, ``set_aside`` (a :class:`SetAside`), ``extra`` (manifest keys),
    ``metrics`` (``clean/...`` numbers), ``suspects`` (the top label-issue suspects) and
    ``conflicts`` (near-duplicate groups whose labels disagree).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown payload {modality!r}: choose from {MODALITIES}")
    classes = classes or [str(k) for k in range(n_classes)]
    aside = SetAside()
    records: list[_Record] = []
    rows_in = 0
    stage_schema = pa.schema([("id", pa.string()), ("label", pa.int64()),
                              (modality, _staging_type(modality, options)), ("source", pa.string())])

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
                        h, w = options.image_size
                        rec.near = image_embedding(value.reshape(h, w, options.channels))
                    elif modality == "text":
                        rec.near = text_key(value)
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

        near_distance = options.near_duplicate_distance if modality == "image" else 0.0
        pairs = duplicate_pairs(
            hashes=[r.digest for r in kept],
            near_vectors=np.stack([r.near for r in kept]) if modality == "image" and kept else None,
            near_keys=[r.near for r in kept] if modality == "text" else None,
            near_distance=near_distance)
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

        true_labels = labels
        if options.noise_rate > 0:
            from components.data.splitting import assign_splits

            planned = np.array(assign_splits(groups, fractions=options.split_fractions, seed=options.split_seed))
            labels = inject_symmetric_noise(ids, true_labels, eligible=planned == "train", rate=options.noise_rate,
                                            n_classes=n_classes, seed=options.noise_seed)
            flipped = labels != true_labels
            extra["noise"] = {"rate": options.noise_rate, "seed": options.noise_seed, "flipped": int(flipped.sum())}
            metrics["clean/noise/flipped"] = int(flipped.sum())

        decisions, suspects = None, []
        li = options.label_issues
        proba = None
        if li is not None:
            table = pq.read_table(staged, columns=["id", modality])
            order = np.array([index.get(i, -1) for i in table.column("id").to_pylist()], dtype=np.int64)
            col = table.column(modality).combine_chunks().filter(pa.array(order >= 0))
            x = oof_features(col, modality, shape=extra.get("image_shape")) if len(kept) else None
            rows_order = order[order >= 0]
            x_sorted = x[np.argsort(rows_order)] if len(kept) else None  # feature row k belongs to kept[k]
            try:
                proba, oof_s = oof_probabilities(x_sorted, labels, n_classes=n_classes, model=li.model,
                                                 folds=li.folds, workers=li.workers, seed=li.seed)
            except TooFewRows as err:
                extra["label_issues"] = {"skipped": str(err)}
        if proba is not None:
            decisions = decide(labels, proba, policy=li.policy, max_fraction=li.max_fraction)
            suspects = suspects_table(decisions, ids=ids, sources=[r.source for r in kept], labels=labels,
                                      classes=classes, top=li.top_suspects)
            extra["label_issues"] = {"policy": li.policy, "model": li.model, "folds": li.folds,
                                     "max_fraction": li.max_fraction, **decisions.counts()}
            metrics.update({f"clean/label_issues/{k}": v for k, v in decisions.counts().items()})
            metrics["clean/label_issues/oof_s"] = round(oof_s, 3)
            metrics["clean/label_issues/oof_acc"] = float((proba.argmax(1) == labels).mean())
            if options.noise_rate > 0:
                found = np.zeros(len(kept), bool)
                found[decisions.acted] = True
                metrics.update({f"clean/label_issues/{k}": v
                                for k, v in detection_scores(found, labels != true_labels).items()})

        # -- apply -----------------------------------------------------------------------------
        final_labels = labels.copy()
        issue = np.zeros(len(kept), bool)
        if decisions is not None:
            issue[decisions.acted] = True
            if li.policy == "relabel":
                final_labels[decisions.acted] = decisions.predicted[decisions.acted]
            elif li.policy == "drop":
                for k in decisions.acted:
                    removed[ids[k]] = (LABEL_ISSUE, {
                        "given_label": int(labels[k]), "predicted_label": int(decisions.predicted[k]),
                        "confidence": round(float(decisions.confidence[k]), 4)})

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
                table = table.set_column(table.schema.get_field_index("label"), "label",
                                         pa.array(final_labels[rows], pa.int64()))
                if modality in ("sequence", "features"):
                    vals = table.column(modality).combine_chunks().flatten()
                    table = table.set_column(table.schema.get_field_index(modality), modality,
                                             pa.FixedSizeListArray.from_arrays(vals, length))
                table = table.append_column("group", pa.array([groups[k] for k in rows], pa.string()))
                if options.noise_rate > 0:
                    table = table.append_column("true_label", pa.array(true_labels[rows], pa.int64()))
                if decisions is not None and li.policy in ("flag", "relabel"):
                    table = table.append_column("label_issue", pa.array(issue[rows], pa.bool_()))
                if decisions is not None and li.policy == "relabel":
                    table = table.append_column("given_label", pa.array(labels[rows], pa.int64()))
                writer.write(table)
        source_of = {r.id: r.source for r in records}
        for row_id, (reason, detail) in sorted(removed.items()):
            aside.add(row_id, source_of[row_id], reason, **detail)

    return {"rows_in": rows_in, "set_aside": aside, "extra": extra, "metrics": metrics,
            "suspects": suspects, "conflicts": dup_summary["conflicts"],
            # first version's key, still read by components.data.demo
            "image_shape": extra.get("image_shape")}


def clean_images(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *, n_classes: int,
                 options: CleanOptions, classes: list[str] | None = None) -> dict:
    """:func:`clean_dataset` for image rows."""
    return clean_dataset(batches, writer, n_classes=n_classes, modality="image", options=options, classes=classes)
