"""Decode, validate, de-duplicate and check the labels of a raw dataset, accounting for every
row set aside.

Two streaming passes keep memory bounded by one batch plus a few dozen bytes per row, in numpy
arrays rather than a Python object per row (for images, 36 numbers of the near-duplicate
embedding; its full 1 KiB waits in a temporary file): pass 1 decodes and validates each row
into a temporary Parquet file and remembers its id, label, content digest and near-duplicate
signature; duplicates and groups are then decided over those arrays (Python loops only over
rows that have a duplicate); pass 2 streams the temporary file and writes the rows that are
kept. Measured: benchmarks/table_scale.py (100k and 1M rows).

Label errors are not judged here: the audit stage (components/quality/audit.py) does that after
split, where it knows which rows are train rows (the only ones it may change).

Cleaned payloads (the data contract after clean):
- ``image``: the files' bytes as ingest stored them, not written again: the clean stage's dataset
  is an *extension* of ingest's (contract.py), holding each kept row's keys and group (given a
  writer that is not an extension, clean writes the bytes itself as a binary ``image``). Every row was
  decoded here (validated, hashed, embedded for near duplicates); readers decode it again with the
  same decoder at the manifest's ``image_shape`` [h, w, c] (``payload_encoding: "encoded"``) and get
  fixed_size_list<uint8>[h*w*c], resized to ``image_size``, converted to ``channels``.
- ``text``: string, Unicode NFKC, control characters removed, whitespace collapsed and
  stripped; empty text is set aside.
- ``sequence`` / ``features``: fixed_size_list<float32>[L]; rows with NaN/inf or another length
  are set aside; manifest ``sequence_length`` / ``feature_names``.

Columns added: ``group`` (near-duplicate group, named by its smallest id; split keeps a group
together); ``digest`` (16 bytes: blake2b of the cleaned payload, what exact duplicates are found
by) and for text ``text_key`` (int64 key of the normalised text): split's leakage check reads these
instead of hashing every payload again (contract.DIGEST, contract.TEXT_KEY).
"""

from __future__ import annotations

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

from trainwise.components.data.contract import (BATCH_BYTES, DIGEST, ENCODED, TEXT_KEY, DataContractError, DatasetWriter,
                                                SetAside, content_hash, iter_file_batches)
from trainwise.components.data.images import ANIMATED_FIRST_FRAME, EXIF_ROTATED, SCALED_16BIT, decode_image
from trainwise.components.quality.duplicates import (DUPLICATE, LABEL_CONFLICT, NearDuplicateIndex, duplicate_pairs,
                                           exact_duplicate_rows, group_names, group_summary,
                                           image_embedding, key64, near_pairs_table, text_key)

# Reasons a row is set aside; the manifest counts rows per reason.
CORRUPT = "corrupt_payload"
NON_FINITE = "non_finite_values"
WRONG_LENGTH = "wrong_length"
BAD_LABEL = "label_out_of_range"

MODALITIES = ("image", "text", "sequence", "features")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True, kw_only=True)
class CleanOptions:
    """What clean does; every value comes from ``clean`` in params.yaml (the one place for
    defaults: pipelines/config.py CleanParams), so there are none here."""

    image_size: tuple[int, int]
    channels: int
    drop_duplicates: bool
    payload_length: int | None                 # sequences / features; None: the most common length
    near_duplicate_distance: float             # images; 0 turns near-duplicate search off


# Rows a class needs after clean: one to train on and one to evaluate on. A class with a single
# example passed ingest, clean and split, then failed the baselines with a scikit-learn traceback
# (a stratified split of the train rows needs two per class).
MIN_ROWS_PER_CLASS = 2


def require_rows_per_class(class_counts: dict[int, int], classes: list[str], *,
                           minimum: int = MIN_ROWS_PER_CLASS) -> None:
    """Raise :class:`DataContractError` naming every class with rows but fewer than ``minimum``
    (a class with none was already reported as empty by ingest, and trains no worse for it)."""
    thin = {classes[k]: n for k, n in sorted(class_counts.items()) if 0 < n < minimum}
    if thin:
        shown = dict(list(thin.items())[:20])
        more = f" and {len(thin) - len(shown)} more" if len(thin) > len(shown) else ""
        raise DataContractError(
            f"{len(thin)} class(es) have fewer than {minimum} usable rows after clean: {shown}{more} (rows per "
            f"class); each class needs at least {minimum} (one to train on, one to evaluate; 10+ to learn it). "
            f"Add examples of these classes, or merge or remove them in the source")


def normalize_text(text: str | bytes) -> str:
    """NFKC, control characters to spaces, whitespace runs collapsed, stripped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return " ".join(_CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).split())


class _Unusable(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason


def _decode(payload, modality: str, options: CleanOptions, notes: list[str] | None = None):
    """One raw payload -> (cleaned value, bytes to hash); raises _Unusable with a reason. Images
    append decode_image's notes to ``notes``."""
    if payload is None or (hasattr(payload, "__len__") and len(payload) == 0):
        raise _Unusable(CORRUPT, "empty payload")
    if modality == "image":
        try:
            pixels = decode_image(payload, size=tuple(options.image_size), channels=options.channels,
                                  notes=notes)
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


def _staging_type(modality: str) -> pa.DataType:
    if modality == "image":
        return pa.binary()   # the file's bytes
    if modality == "text":
        return pa.string()
    return pa.list_(pa.float32())  # lengths are checked after pass 1


def _column(values: list, modality: str) -> pa.Array:
    if modality == "image":
        return pa.array(values, pa.binary())
    if modality == "text":
        return pa.array(values, pa.string())
    return pa.array([v.tolist() for v in values], pa.list_(pa.float32()))


# What the staging file holds of a photo when its bytes stay in ingest's shards (its id, label, source,
# digest; never the decoded pixels), so a flush comes every ~16 MB of these.
_STAGED_IMAGE_ROW_BYTES = 160


@dataclass
class Decoded:
    """What the decode pass remembers of the rows it kept, in numpy arrays (~60 bytes a row, no
    Python object per row). Row k of each array is row k of the staging file ``staged``, where the
    decoded payloads wait; sources are read back from it when needed."""

    staged: Path                    # the staging Parquet file (id, label, source, keys; payloads but a photo's)
    rows_in: int                    # raw rows read, set aside or not
    ids: np.ndarray                 # encoded (bytes) ids
    labels: np.ndarray              # int64
    digests: np.ndarray             # (n, 16) uint8 content digests
    lengths: np.ndarray             # sequences / features: payload lengths (else empty)
    keys: np.ndarray                # text: 64-bit normalised-text keys (else empty)
    notes: Counter                  # decode_image's notes, of kept and set-aside rows alike
    near_index: NearDuplicateIndex | None  # images: row k's embedding (None: search off)


@dataclass
class Decisions:
    """What becomes of every decoded row: set aside (``removed``) or kept, in which group."""

    removed: dict[int, tuple[str, dict]]   # row number -> (reason, detail)
    removed_id: dict[int, str]             # row number -> id, for the rows set aside
    kept_mask: np.ndarray                  # one bool a decoded row
    groups: dict[int, str]                 # kept row number -> group name, rows in a group of 2+
    length: int | None                     # sequences / features: the payload length kept
    extra: dict                            # manifest keys
    metrics: dict                          # clean/... numbers
    conflicts: list                        # near-duplicate groups whose labels disagree
    near_pairs: pa.Table                   # near-duplicate pairs among the kept (split's leakage check)


class _Staging:
    """Decoded rows buffered, then written to the staging file one row group at a time (memory
    holds BATCH_BYTES of them), with what is remembered of each row appended to ``parts``."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema, modality: str, staged: bool):
        self.writer, self.schema, self.modality = writer, schema, modality
        self.staged = staged   # False: the payload is not written (a photo's bytes stay in ingest's shards)
        self.parts: dict[str, list[np.ndarray]] = {"id": [], "label": [], "digest": [], "length": [], "key": []}
        self._reset()

    def _reset(self) -> None:
        self.keep: dict[str, list] = {"id": [], "label": [], **({self.modality: []} if self.staged else {}),
                                      "source": []}
        self.digests, self.lengths, self.keys, self.decoded_bytes = [], [], [], 0

    def flush(self) -> None:
        keep = self.keep
        if keep["id"]:
            payload = {self.modality: _column(keep[self.modality], self.modality)} if self.staged else {}
            # the keys travel with the rows into data/clean (split reads them, not the payload)
            keys = {DIGEST: pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(self.digests),
                                                                 [None, pa.py_buffer(b"".join(self.digests))])}
            if self.modality == "text":
                keys[TEXT_KEY] = pa.array(self.keys, pa.int64())
            self.writer.write_table(pa.table({**keep, **payload, **keys}, schema=self.schema))
            self.parts["id"].append(np.array([i.encode() for i in keep["id"]]))
            self.parts["label"].append(np.array(keep["label"], np.int64))
            self.parts["digest"].append(np.frombuffer(b"".join(self.digests), np.uint8).reshape(-1, 16))
            self.parts["length"].append(np.array(self.lengths, np.int64))
            self.parts["key"].append(np.array(self.keys, np.int64))
        self._reset()


def decode_pass(batches: Iterable[pa.RecordBatch], staged: Path, *, n_classes: int, modality: str,
                options: CleanOptions, aside: SetAside, stage_payload: bool = True) -> Decoded:
    """Pass 1: decode and validate every raw row into the staging file ``staged``; a row that
    cannot be used is added to ``aside`` with its reason. ``stage_payload`` False (images whose
    dataset extends ingest's): the payload is validated, hashed and embedded, not staged."""
    rows_in = 0
    notes: Counter[str] = Counter()
    row_notes: list[str] = []
    stage_schema = pa.schema([("id", pa.string()), ("label", pa.int64()),
                              *([(modality, _staging_type(modality))] if stage_payload else []), ("source", pa.string()),
                              (DIGEST, pa.binary(16)), *([(TEXT_KEY, pa.int64())] if modality == "text" else [])])
    near_distance = options.near_duplicate_distance if modality == "image" else 0.0
    # image embeddings: 36 numbers a row in memory, the full 1 KiB on disk (bounded memory)
    near_index = NearDuplicateIndex(radius=near_distance) if near_distance > 0 else None
    with pq.ParquetWriter(staged, stage_schema, use_dictionary=modality != "image") as writer:
        stage = _Staging(writer, stage_schema, modality, stage_payload)
        for batch in batches:
            ids, labels = batch.column("id").to_pylist(), batch.column("label").to_pylist()
            payloads, sources = batch.column(modality).to_pylist(), batch.column("source").to_pylist()
            rows_in += len(ids)
            for row_id, label, payload, source in zip(ids, labels, payloads, sources):
                if label is None or not 0 <= label < n_classes:
                    aside.add(row_id, source, BAD_LABEL, label=label)
                    continue
                try:
                    value, raw = _decode(payload, modality, options, row_notes)
                except _Unusable as err:
                    aside.add(row_id, source, err.reason, error=str(err))
                    continue
                finally:
                    notes.update(row_notes)
                    row_notes.clear()
                stage.digests.append(bytes.fromhex(content_hash(raw)))
                if modality == "image":
                    if near_index is not None:  # row k of the index is row k of the staging file
                        h, w = options.image_size
                        near_index.add(image_embedding(value.reshape(h, w, options.channels)))
                elif modality == "text":
                    stage.keys.append(key64(text_key(value).encode()))
                else:
                    stage.lengths.append(len(value))
                # a photo is kept as its file's bytes (readers decode them as clean did), not its pixels
                stored = payload if modality == "image" else value
                for k, v in (("id", row_id), ("label", label), (modality, stored), ("source", source)):
                    if k in stage.keep:
                        stage.keep[k].append(v)
                stage.decoded_bytes += (len(stored) if modality == "image" else len(raw)) if stage.staged \
                    else _STAGED_IMAGE_ROW_BYTES
                if stage.decoded_bytes >= BATCH_BYTES:   # a batch of small photos decodes to a lot of pixels
                    stage.flush()
        stage.flush()
    parts = stage.parts
    # one kind at a time, its batches released as it is joined: never two copies of everything
    return Decoded(
        staged=staged, rows_in=rows_in, notes=notes, near_index=near_index,
        ids=np.concatenate(parts.pop("id")) if parts["id"] else np.empty(0, "S1"),
        labels=np.concatenate(parts.pop("label")) if parts["label"] else np.empty(0, np.int64),
        digests=np.concatenate(parts.pop("digest")) if parts["digest"] else np.empty((0, 16), np.uint8),
        lengths=np.concatenate(parts.pop("length")) if parts["length"] else np.empty(0, np.int64),
        keys=np.concatenate(parts.pop("key")) if parts["key"] else np.empty(0, np.int64))


def decide(decoded: Decoded, *, modality: str, options: CleanOptions,
           feature_names: list[str] | None = None) -> Decisions:
    """Over the decoded rows' arrays: wrong lengths, exact duplicates (``drop_duplicates``),
    near-duplicate pairs and groups; the manifest keys and metrics that report them."""
    row_ids, row_labels, digest = decoded.ids, decoded.labels, decoded.digests
    row_lengths, row_keys, notes = decoded.lengths, decoded.keys, decoded.notes
    n = len(row_ids)
    extra: dict = {}
    removed: dict[int, tuple[str, dict]] = {}   # row number -> (reason, detail)
    length = None
    if modality == "image":
        extra["image_shape"] = [*options.image_size, options.channels]
        extra["payload_encoding"] = ENCODED   # the files as ingested, decoded on read to image_shape
        # what decoding changed without saying (rows in, not rows kept: a note is about the file)
        extra["decode_notes"] = {k: notes[k] for k in (EXIF_ROTATED, SCALED_16BIT, ANIMATED_FIRST_FRAME)}
    elif modality in ("sequence", "features"):
        length = options.payload_length
        if length is None and modality == "features" and feature_names:
            length = len(feature_names)
        if length is None and n:
            values, first, counts = np.unique(row_lengths, return_index=True, return_counts=True)
            tied = np.flatnonzero(counts == counts.max())
            length = int(values[tied[np.argmin(first[tied])]])  # most common; a tie: the one seen first
        for k in np.flatnonzero(row_lengths != length).tolist():
            removed[k] = (WRONG_LENGTH, {"length": int(row_lengths[k]), "expected": length})
        if modality == "sequence":
            extra["sequence_length"] = length
        else:
            names = list(feature_names or [])
            extra["feature_names"] = names if len(names) == length else [f"f{i}" for i in range(length or 0)]
    if options.drop_duplicates:
        candidates = np.ones(n, bool)
        candidates[list(removed)] = False
        removed.update(exact_duplicate_rows(row_ids, digest, row_labels, rows=np.flatnonzero(candidates)))
    kept_mask = np.ones(n, bool)
    kept_mask[list(removed)] = False
    kept_rows = np.flatnonzero(kept_mask)
    ids, labels = row_ids[kept_rows], row_labels[kept_rows]   # kept row k = row kept_rows[k]

    near, near_dist = np.empty((0, 2), np.int64), np.empty(0, np.float32)
    if decoded.near_index is not None:  # found once here; split's leakage check reads them (near_pairs.parquet)
        with decoded.near_index:
            near, near_dist = decoded.near_index.pairs(keep=kept_mask)
    # With drop_duplicates every kept digest is unique (one keeper per group, conflicts all
    # set aside): no exact pairs to look for among the kept.
    pairs = duplicate_pairs(hashes=np.empty(0, np.int64) if options.drop_duplicates else digest[kept_rows],
                            near=near, near_keys=row_keys[kept_rows] if modality == "text" else None)
    del digest, row_lengths, row_keys, row_labels, kept_rows
    groups = group_names(ids, pairs)   # kept row -> group name, for rows in a group of 2+
    dup_summary = group_summary(groups, labels, ids)
    near_distance = options.near_duplicate_distance if modality == "image" else 0.0
    extra["near_duplicates"] = {"method": {"image": "embedding_distance", "text": "normalised_text"}.get(
        modality, "exact_only"), "distance": near_distance, "groups": dup_summary["groups"],
        "rows": dup_summary["rows"], "conflicts": len(dup_summary["conflicts"])}

    metrics = {"clean/exact_duplicates": sum(1 for reason, _ in removed.values() if reason == DUPLICATE),
               "clean/exact_duplicate_conflicts": sum(1 for reason, _ in removed.values()
                                                      if reason == LABEL_CONFLICT),
               "clean/near_duplicate_groups": dup_summary["groups"],
               "clean/near_duplicate_rows": dup_summary["rows"],
               "clean/near_duplicate_conflicts": len(dup_summary["conflicts"]),
               **{f"clean/decode/{k}": n for k, n in extra.get("decode_notes", {}).items()}}
    return Decisions(removed=removed, removed_id={k: row_ids[k].decode() for k in removed}, kept_mask=kept_mask,
                     groups=groups, length=length, extra=extra, metrics=metrics,
                     conflicts=dup_summary["conflicts"], near_pairs=near_pairs_table(ids, near, near_dist))


def write_pass(staged: Path, decisions: Decisions, writer: DatasetWriter, aside: SetAside, *, modality: str,
               options: CleanOptions) -> None:
    """Pass 2: stream the staging file and write the rows that are kept, each with its ``group``;
    the rows set aside go to ``aside`` (in id order) with their sources, read back from staging."""
    kept_mask, groups, removed, length = decisions.kept_mask, decisions.groups, decisions.removed, decisions.length
    source_of: dict[int, str] = {}           # sources of the rows set aside, read back from staging
    start = kept_before = 0
    if len(kept_mask):
        for batch in iter_file_batches(pq.ParquetFile(staged), batch_rows=4096):
            table = pa.Table.from_batches([batch])
            mask = kept_mask[start:start + table.num_rows]
            if not mask.all():
                sources = table.column("source").to_pylist()
                source_of.update({start + k: sources[k] for k in np.flatnonzero(~mask).tolist()})
            numbers = kept_before + np.arange(int(mask.sum()))   # these rows' numbers among the kept
            kept_before += len(numbers)
            start += table.num_rows
            table = table.filter(pa.array(mask))
            if not table.num_rows:
                continue
            if modality in ("sequence", "features"):
                vals = table.column(modality).combine_chunks().flatten()
                table = table.set_column(table.schema.get_field_index(modality), modality,
                                         pa.FixedSizeListArray.from_arrays(vals, length))
            group = table.column("id").to_pylist()
            if groups:
                group = [groups.get(k, g) for k, g in zip(numbers.tolist(), group)]
            table = table.append_column("group", pa.array(group, pa.string()))
            writer.write(table)
    removed_id = decisions.removed_id
    for k, (reason, detail) in sorted(removed.items(), key=lambda item: removed_id[item[0]]):
        aside.add(removed_id[k], source_of[k], reason, **detail)


def clean_dataset(batches: Iterable[pa.RecordBatch], writer: DatasetWriter, *, n_classes: int,
                  modality: str, options: CleanOptions, classes: list[str] | None = None,
                  feature_names: list[str] | None = None) -> dict:
    """Clean raw rows of one modality into ``writer``: :func:`decode_pass`, :func:`decide`,
    :func:`write_pass`. For images ``writer`` may extend the dataset ``batches`` come from (the clean
    stage's does): the files' bytes then stay there; else they are written here, as they came.

    Returns ``rows_in``, ``set_aside`` (a :class:`SetAside`), ``extra`` (manifest keys),
    ``metrics`` (``clean/...`` numbers), ``conflicts`` (near-duplicate groups whose labels
    disagree) and ``near_pairs`` (the near-duplicate pairs found, for split's leakage check).
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown payload {modality!r}: choose from {MODALITIES}")
    classes = classes or [str(k) for k in range(n_classes)]
    aside = SetAside()
    with tempfile.TemporaryDirectory(prefix="trainwise-clean-") as tmp:
        staged = Path(tmp) / "decoded.parquet"
        decoded = decode_pass(batches, staged, n_classes=n_classes, modality=modality, options=options, aside=aside,
                              stage_payload=modality != "image" or writer.base is None)
        rows_in = decoded.rows_in
        decisions = decide(decoded, modality=modality, options=options, feature_names=feature_names)
        del decoded   # pass 2 needs one bit a row (kept_mask) and the groups of 2+
        write_pass(staged, decisions, writer, aside, modality=modality, options=options)
    return {"rows_in": rows_in, "set_aside": aside, "extra": decisions.extra, "metrics": decisions.metrics,
            "conflicts": decisions.conflicts, "near_pairs": decisions.near_pairs}
