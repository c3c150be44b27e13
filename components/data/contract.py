"""The data contract between stages: Parquet shards plus a JSON manifest, written atomically.

A dataset directory holds ``part-00000.parquet ...``, ``manifest.json`` (rows, classes,
class_counts, set_aside per reason, schema, content hash) and ``set_aside.jsonl`` (one line
per row that was not carried forward, with its reason). Counts add up:
``rows_in == rows + sum(set_aside.values())``.

The payload is written once (by clean). A stage that only adds to the rows (split: ``split``
and ``group``; audit: its label decisions) writes an *extension*: shards holding ``id``, ``label``
and the columns it adds or changes, and a manifest naming the dataset it extends (``base``, a
path relative to itself) with that dataset's content hash. Its rows are a subsequence of the
base's, in the base's order (a stage may drop rows, never reorder them). :func:`iter_batches`
and :func:`read_table` join the chain by id as they stream, so readers see whole rows; a read of
the extension's own columns only never touches the payload.

Photos are stored once, as the files' bytes (JPEG, PNG, ...): ingest writes them, and clean's
dataset is an extension of ingest's (its keys, groups and digests), with ``payload_encoding:
"encoded"`` and ``image_shape`` in its manifest. Readers get decoded pixels all the same:
:func:`iter_batches` and :func:`read_table` decode the ``image`` column with the one decoder
(:func:`trainwise.components.data.images.decode_image`, at ``image_shape``) into the
``fixed_size_list<uint8>[h*w*c]`` a decoded dataset stores, unless asked for the bytes
(``decode=False``: embed and the ``ray_data`` loader decode where their batches are used).
A dataset that stores decoded pixels (no ``payload_encoding``) reads as it always did.
"""

from __future__ import annotations

import csv
import hashlib
import json
import errno
import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainwise.components.atomic_io import check_replaceable, recover_dir, replace_dir

MANIFEST = "manifest.json"
SET_ASIDE = "set_aside.jsonl"
PAYLOAD_COLUMNS = ("image", "text", "sequence", "features")
# Per-row keys clean writes beside the payload, so that split's leakage check and exact-copy grouping
# read 16-24 bytes a row instead of every row's payload (a photo's pixels: 150 KB at 224x224x3).
# DIGEST: blake2b-128 of the cleaned payload's bytes (the pixels as stored; UTF-8 text; float32
# values), fixed_size_binary(16). TEXT_KEY (text only): int64 key of the normalised text
# (quality.duplicates.text_key through key64), equal for near-duplicate texts.
DIGEST, TEXT_KEY = "digest", "text_key"
# Bytes of rows read or written at once. Parquet stores a decoded image (list<uint8>) with two
# 16-bit levels per pixel: writing a batch took ~11x its pixel bytes and reading ~17x (measured,
# pyarrow 25, 224x224x3), so batches are bounded in bytes, not rows (8192 such rows are 1.2 GB).
BATCH_BYTES = 16 * 2**20
# manifest["payload_encoding"]: the image column holds encoded image files, decoded on read to image_shape
ENCODED = "encoded"
ROW_GROUP_BYTES = 16 * 2**20



# A write that failed for want of room: the disk is full, a quota is used up, or the file-size limit
# (ulimit -f) is reached. The stage says so, naming the output (pipelines/stage.py).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DataContractError(ValueError):
    """A dataset directory does not hold what the contract promises."""


def content_id(payload: bytes, source: str) -> str:
    """Stable row id from content and origin, never from row order.

    Two identical payloads from different sources get different ids, so ``clean`` can see
    and decide about duplicates instead of having them merged silently.
    """
    h = hashlib.blake2b(payload, digest_size=10)
    h.update(b"\0" + source.encode())
    return h.hexdigest()


def content_hash(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


@dataclass
class SetAside:
    """Rows not carried forward, each with a reason (and optionally what it duplicates)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, row_id: str, source: str, reason: str, **detail) -> None:
        self.rows.append({"id": row_id, "source": source, "reason": reason, **detail})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.rows).items()))


def payload_column(schema: pa.Schema) -> str:
    found = [c for c in PAYLOAD_COLUMNS if c in schema.names]
    if len(found) != 1:
        raise DataContractError(f"expected exactly one payload column of {PAYLOAD_COLUMNS}, found {found}")
    return found[0]


def pixel_encoding(schema: pa.Schema) -> dict:
    """ParquetWriter options for image payloads. Encoded files (a binary ``image``): stored as they are,
    neither compressed again nor dictionary-encoded. Decoded pixels (list<uint8> columns): Parquet stores each uint8 as a
    4-byte INT32, and by default dictionary-encodes them (256 values) and compresses with snappy.
    BYTE_STREAM_SPLIT puts the one byte that carries the pixel in a stream of its own (the other three,
    all zeros, compress to nothing) and LZ4 compresses it: on 224x224x3 photos 1.4 CPU-ms a photo to
    write instead of 2.3, and 126 KB instead of 133 (measured, pyarrow 25). The pixels read back the
    same; other columns keep the defaults. Readers need pyarrow >= 17 (BYTE_STREAM_SPLIT of integers),
    so an older pyarrow writes the defaults."""
    pixels = [f for f in schema if (pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type))
              and f.type.value_type == pa.uint8()]
    files = [f.name for f in schema if f.name == "image" and pa.types.is_binary(f.type)]
    if files:  # encoded image files (JPEG, PNG): already compressed, and never two alike in a dictionary
        return {"use_dictionary": [f.name for f in schema if f.name not in files],
                "compression": {f.name: "none" if f.name in files else "snappy" for f in schema}}
    if not pixels or int(pa.__version__.split(".")[0]) < 17:
        return {}
    paths = [f"{f.name}.list.element" for f in pixels]   # Parquet's name for a list's values, whatever Arrow's
    return {"use_dictionary": [f.name for f in schema if f not in pixels],
            "column_encoding": {p: "BYTE_STREAM_SPLIT" for p in paths},
            "compression": {**{f.name: "snappy" for f in schema if f not in pixels}, **{p: "lz4" for p in paths}}}


def _table_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class DatasetWriter:
    """Write a dataset to ``out_dir`` atomically: shards go to a temp dir renamed at the end.

    A crash before :meth:`close` leaves any previous ``out_dir`` untouched.
    """

    def __init__(self, out_dir: str | os.PathLike, *, classes: list[str], shard_rows: int = 50_000,
                 metadata: dict | None = None, base: str | os.PathLike | None = None,
                 replaces: tuple[str, ...] = ()):
        """``base``: write an extension of that dataset (see the module docstring): of each row only
        ``id``, ``label``, the columns the base does not have, and ``replaces`` (base columns whose
        values this stage sets anew, e.g. split's ``group``) are kept."""
        self.out_dir = Path(out_dir)
        self.base = Path(base) if base is not None else None
        self._base_manifest = read_manifest(self.base) if self.base is not None else None
        self.replaces = tuple(replaces)
        self.classes = list(classes)
        self.shard_rows = shard_rows
        self.metadata = dict(metadata or {})
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(self.out_dir)
        check_replaceable(self.out_dir)  # before the work, not after it
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-{os.getpid()}-", dir=self.out_dir.parent))
        self._shards: list[Path] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._shard_writer: pq.ParquetWriter | None = None   # the shard being filled, one row group at a time
        self._shard_filled = 0
        self._schema: pa.Schema | None = None
        self.class_counts: Counter[int] = Counter()
        self.rows = 0

    def _accept(self, table: pa.Table) -> pa.Table | None:
        """Cast a batch to the dataset's schema (the first batch's) and count it; None if empty."""
        if table.num_rows == 0:
            return None
        if self._base_manifest is not None:  # an extension: the payload and other base columns stay in the base
            base_cols = set(self._base_manifest["schema"])
            table = table.select([c for c in table.schema.names
                                  if c in ("id", "label", *self.replaces) or c not in base_cols])
        if self._schema is None:
            self._schema = table.schema
        table = table.cast(self._schema)
        self.class_counts.update(table.column("label").to_pylist())
        self.rows += table.num_rows
        return table

    def write(self, table: pa.Table) -> None:
        table = self._accept(table)
        if table is None:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        # Rows wait until a shard is full or ROW_GROUP_BYTES have come, then go out as one row
        # group of the open shard: memory holds about one row group, not one shard (a 50,000-row
        # shard of 224x224 RGB images is 7.5 GB). Small rows still make one row group per shard.
        while self._pending_rows and (self._shard_filled + self._pending_rows >= self.shard_rows
                                      or self._pending_bytes >= ROW_GROUP_BYTES):
            self._flush(self._pending_rows)

    def _flush(self, n: int) -> None:
        """Write up to ``n`` pending rows (at most ROW_GROUP_BYTES, at most what the shard has room
        for) as one row group of the open shard; close the shard when it is full."""
        merged = pa.concat_tables(self._pending)
        row_bytes = max(1, merged.nbytes // max(1, merged.num_rows))
        n = min(n, self.shard_rows - self._shard_filled, max(1, ROW_GROUP_BYTES // row_bytes))
        head, rest = merged.slice(0, n), merged.slice(n)
        if self._shard_writer is None:
            path = self._tmp / f"part-{len(self._shards):05d}.parquet"
            self._shard_writer = pq.ParquetWriter(path, self._schema, **pixel_encoding(self._schema))
            self._shards.append(path)
        self._shard_writer.write_table(head)
        self._shard_filled += head.num_rows
        if self._shard_filled >= self.shard_rows:
            self._end_shard_file()
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._pending_bytes = rest.nbytes

    def _end_shard_file(self) -> None:
        if self._shard_writer is not None:
            self._shard_writer.close()
            self._shard_writer = None
            self._shard_filled = 0

    def close(self, *, rows_in: int, set_aside: SetAside, extra: dict | None = None) -> dict:
        while self._pending_rows:
            self._flush(self._pending_rows)
        self._end_shard_file()
        if self._schema is None:
            raise DataContractError(f"{self.out_dir}: no rows left to write (rows in: {rows_in}); "
                                    f"set aside: {set_aside.counts()}")
        counts = set_aside.counts()
        if rows_in != self.rows + sum(counts.values()):
            raise DataContractError(
                f"{self.out_dir}: counts do not add up: {rows_in} in, {self.rows} out, set aside {counts}")
        own = {f.name: str(f.type) for f in self._schema}
        if self._base_manifest is not None:
            extension = {"base": os.path.relpath(self.base, self.out_dir), "columns": list(own),
                         "base_content_hash": self._base_manifest["content_hash"]}
            schema = {**self._base_manifest["schema"], **own}  # whole rows, as readers see them
            payload = self._base_manifest["payload"]
            digest = hashlib.sha256((_table_digest(self._shards) + extension["base_content_hash"]).encode()).hexdigest()
        else:
            extension, schema, payload, digest = None, own, payload_column(self._schema), _table_digest(self._shards)
        manifest = {
            "rows": self.rows,
            "rows_in": rows_in,
            "classes": self.classes,
            "class_counts": {self.classes[k]: self.class_counts.get(k, 0) for k in range(len(self.classes))},
            "set_aside": counts,
            "payload": payload,
            "schema": schema,
            "shards": [p.name for p in self._shards],
            "content_hash": digest,
            **({"extends": extension} if extension else {}),
            **self.metadata,
            **(extra or {}),
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        with open(self._tmp / SET_ASIDE, "w") as f:
            for row in set_aside.rows:
                f.write(json.dumps(row) + "\n")
        replace_dir(self._tmp, self.out_dir)
        return manifest

    def abort(self) -> None:
        try:
            self._end_shard_file()
        except Exception:  # already failing; the temp dir goes either way
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, _tb):
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and not exc.filename:
                exc.filename = str(self.out_dir)  # pyarrow's "No space left on device" names no file


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file another stage wrote; a missing or corrupt one says which and what to do."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataContractError(f"{path}: missing; run the stage that writes it first (dvc repro)") from None
    except json.JSONDecodeError as err:
        raise DataContractError(f"{path}: not valid JSON ({err}); re-run the stage that writes it") from None


def read_manifest(data_dir: str | os.PathLike) -> dict:
    return read_json(Path(data_dir) / MANIFEST)


def extension_of(manifest: dict, data_dir: str | os.PathLike) -> tuple[Path, list[str]] | None:
    """(the base dataset's folder, the columns this dataset's shards hold), or None for a whole dataset."""
    ext = manifest.get("extends")
    if not ext:
        return None
    return (Path(data_dir) / ext["base"]).resolve(), list(ext["columns"])


def payload_dir(data_dir: str | os.PathLike) -> Path:
    """The dataset at the end of an extension chain: where the payload is stored."""
    data_dir = Path(data_dir)
    ext = extension_of(read_manifest(data_dir), data_dir)
    return data_dir if ext is None else payload_dir(ext[0])


def read_table(data_dir: str | os.PathLike, *, columns: list[str] | None = None,
               filter_split: str | None = None, decode: bool = True) -> pa.Table:
    """Read every shard listed in the manifest (optionally one split) into one table; an extension
    is joined with its base (only when a column it does not hold is asked for). Encoded images come
    decoded (see the module docstring) unless ``decode`` is False."""
    shape = _decode_shape(data_dir, columns, decode)
    table = _raw_table(data_dir, columns=columns, filter_split=filter_split)
    return table if shape is None else decode_images_in(table, shape, data_dir)


def _raw_table(data_dir: str | os.PathLike, *, columns: list[str] | None, filter_split: str | None) -> pa.Table:
    manifest = read_manifest(data_dir)
    ext = extension_of(manifest, data_dir)
    if ext is not None and (columns is None or not {*columns, *(["split"] if filter_split else [])} <= set(ext[1])):
        parts = []
        for b in _raw_batches(data_dir, columns=columns if columns is None or not filter_split
                              else list(dict.fromkeys([*columns, "split"]))):
            t = pa.Table.from_batches([b])
            if filter_split:
                t = t.filter(pc.equal(t.column("split"), filter_split))
                if columns is not None and "split" not in columns:
                    t = t.drop_columns(["split"])
            parts.append(t)
        if parts:
            return pa.concat_tables(parts)
        return _empty_joined(Path(data_dir), manifest, ext, columns)
    paths = [Path(data_dir) / s for s in manifest["shards"]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataContractError(f"{data_dir}: shards listed in the manifest are missing: {missing}")
    with _unreadable_parquet(data_dir):
        return pq.ParquetDataset(paths, filters=[("split", "=", filter_split)] if filter_split else None).read(
            columns=columns)


def iter_batches(data_dir: str | os.PathLike, *, batch_rows: int = 8192, batch_bytes: int = BATCH_BYTES,
                 columns: list[str] | None = None, decode: bool = True) -> Iterator[pa.RecordBatch]:
    """Stream a dataset shard by shard, so memory is bounded by ``batch_rows`` rows and, for wide
    rows (images), by about ``batch_bytes`` bytes of them (of decoded pixels, for encoded images). An
    extension streams joined with its base (the base's batches, filtered to this dataset's rows, with
    its columns). Encoded images come decoded unless ``decode`` is False (the module docstring)."""
    shape = _decode_shape(data_dir, columns, decode)
    if shape is None:
        yield from _raw_batches(data_dir, batch_rows=batch_rows, batch_bytes=batch_bytes, columns=columns)
        return
    rows = max(1, min(batch_rows, batch_bytes // (shape[0] * shape[1] * shape[2])))
    for b in _raw_batches(data_dir, batch_rows=rows, batch_bytes=batch_bytes, columns=columns):
        yield decode_images_in(b, shape, data_dir)


def _decode_shape(data_dir, columns, decode: bool) -> tuple[int, int, int] | None:
    return encoded_image_shape(data_dir) if decode and (columns is None or "image" in columns) else None


def encoded_image_shape(data_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """(h, w, c) the ``image`` column of ``data_dir`` (or of a dataset down its extension chain) decodes
    to, when it stores encoded image files; None when it stores decoded pixels or is not images."""
    data_dir = Path(data_dir)
    while True:
        m = read_manifest(data_dir)
        if "payload_encoding" in m:
            if m["payload_encoding"] != ENCODED:
                return None
            try:
                h, w, c = (int(v) for v in m["image_shape"])
            except (KeyError, TypeError, ValueError):
                raise DataContractError(f"{data_dir}/manifest.json: encoded images need image_shape [h, w, c]; "
                                        "re-run clean (`dvc repro --force clean`)") from None
            return h, w, c
        ext = extension_of(m, data_dir)
        if ext is None:
            return None
        data_dir = ext[0]


def pixel_type(width: int) -> pa.DataType:
    """The decoded image column's type: fixed_size_list<uint8>[h*w*c] ("element": the child's name a
    list read back from Parquet has)."""
    return pa.list_(pa.field("element", pa.uint8()), width)


def decode_images_in(table, shape: tuple[int, int, int], where: str | os.PathLike = "data"):
    """A Table or RecordBatch whose ``image`` column holds encoded files -> the same with decoded pixels
    (``pixel_type``), by the one decoder. Anything else comes back as it is. A row that no longer
    decodes (clean decoded every row it kept) is a DataContractError naming it."""
    i = table.schema.get_field_index("image")
    if i < 0 or not (pa.types.is_binary(table.schema.field(i).type) or pa.types.is_large_binary(table.schema.field(i).type)):
        return table
    from trainwise.components.data.images import decode_image

    h, w, c = shape
    payloads = table.column(i).to_pylist()
    out = np.empty((len(payloads), h * w * c), np.uint8)
    for k, data in enumerate(payloads):
        try:
            out[k] = decode_image(data, size=(h, w), channels=c).reshape(-1)
        except Exception as err:  # PIL raises many kinds; clean set every such row aside
            row = table.column("id")[k].as_py() if "id" in table.schema.names else k
            raise DataContractError(f"{where}: row {row}: its image no longer decodes ({type(err).__name__}: {err}), "
                                    "though clean decoded it: the stored file changed; re-run ingest and clean "
                                    "(`dvc repro --force ingest`) or restore them (`dvc checkout`)") from None
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), type=pixel_type(h * w * c))
    return table.set_column(i, pa.field("image", pixels.type), pixels)


def read_images(data_dir: str | os.PathLike, ids: Iterable[str], transform=None) -> dict[str, np.ndarray]:
    """(h, w, c) uint8 pixels of the rows ``ids`` (those the dataset holds), in one streamed pass that
    decodes only those rows (thumbnails, alignment checks). ``transform``: applied to each row's pixels
    as it is decoded, and what is kept (a thumbnail: memory holds thumbnails, not every photo wanted)."""
    want = set(ids)
    if not want:
        return {}
    encoded = encoded_image_shape(data_dir)
    shape = encoded or tuple(_image_shape_of(data_dir))
    found: dict[str, np.ndarray] = {}
    for batch in _raw_batches(data_dir, columns=["id", "image"]):
        col = batch.column("image")
        for k, row in enumerate(batch.column("id").to_pylist()):
            if row not in want:
                continue
            if encoded:
                pixels = decode_images_in(batch.slice(k, 1), encoded, data_dir).column("image")[0] \
                    .values.to_numpy(zero_copy_only=False).reshape(shape)   # errors name the row
            else:
                pixels = col[k].values.to_numpy(zero_copy_only=False).reshape(shape)
            found[row] = pixels if transform is None else transform(pixels)
    return found


def _image_shape_of(data_dir: Path) -> list[int]:
    m = read_manifest(data_dir)
    if "image_shape" not in m:
        raise DataContractError(f"{data_dir}/manifest.json: no image_shape; re-run clean (`dvc repro --force clean`)")
    return m["image_shape"]


def _raw_batches(data_dir: str | os.PathLike, *, batch_rows: int = 8192, batch_bytes: int = BATCH_BYTES,
                 columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """:func:`iter_batches` as stored: encoded images stay encoded."""
    manifest = read_manifest(data_dir)
    ext = extension_of(manifest, data_dir)
    if ext is not None and (columns is None or not set(columns) <= set(ext[1])):
        yield from _joined_batches(Path(data_dir), manifest, ext, columns=columns, batch_rows=batch_rows,
                                   batch_bytes=batch_bytes)
        return
    for shard in manifest["shards"]:
        with _unreadable_parquet(Path(data_dir) / shard):
            yield from iter_file_batches(pq.ParquetFile(Path(data_dir) / shard), batch_rows=batch_rows,
                                         batch_bytes=batch_bytes, columns=columns)


def _empty_joined(data_dir: Path, manifest: dict, ext: tuple[Path, list[str]], columns: list[str] | None) -> pa.Table:
    """No row matched: an empty table with the joined columns' types."""
    base, own_cols = ext
    first = next(_raw_batches(base, batch_rows=1), None)
    if first is None:
        raise DataContractError(f"{base}: no rows; re-run the stage that writes it (dvc repro)")
    t = pa.Table.from_batches([first]).slice(0, 0)
    own = pq.read_table(data_dir / manifest["shards"][0]).slice(0, 0) if manifest["shards"] else None
    t = t.drop_columns([c for c in t.schema.names if c in own_cols])
    for c in own_cols:
        t = t.append_column(c, own.column(c) if own is not None else pa.array([], pa.string()))
    return t.select(columns) if columns is not None else t


def _own_batches(data_dir: Path, manifest: dict) -> Iterator[pa.Table]:
    for shard in manifest["shards"]:
        with _unreadable_parquet(data_dir / shard):
            for b in pq.ParquetFile(data_dir / shard).iter_batches(batch_size=65536):
                yield pa.Table.from_batches([b])


def _joined_batches(data_dir: Path, manifest: dict, ext: tuple[Path, list[str]], *, columns: list[str] | None,
                    batch_rows: int, batch_bytes: int) -> Iterator[pa.RecordBatch]:
    """The base's batches, each cut to the rows this extension kept (a subsequence, in order), with
    this extension's columns in place of the base's of the same name. Memory: one batch of each."""
    base, own_cols = ext
    written_from = manifest["extends"].get("base_content_hash")
    if written_from and read_manifest(base).get("content_hash") != written_from:
        raise DataContractError(f"{data_dir} extends {base}, but was not written from the data there now (content "
                                "hash differs): re-run the stages after it (dvc repro), or restore both (dvc checkout)")
    base_cols = None if columns is None else [c for c in dict.fromkeys(["id", *columns]) if c not in own_cols
                                                or c == "id"]
    own = _own_batches(data_dir, manifest)
    pending = None
    matched = 0
    for bb in _raw_batches(base, batch_rows=batch_rows, batch_bytes=batch_bytes, columns=base_cols):
        n = bb.num_rows
        while pending is None or pending.num_rows < n:  # enough of our rows to cover this batch
            nxt = next(own, None)
            if nxt is None:
                break
            pending = nxt if pending is None else pa.concat_tables([pending, nxt])
        if pending is None:
            break
        ours = pending.column("id").to_pylist()[:n]
        theirs = bb.column("id").to_pylist()
        take, j = [], 0
        for k, row_id in enumerate(theirs):
            if j < len(ours) and ours[j] == row_id:
                take.append(k)
                j += 1
        mine, pending = pending.slice(0, j), pending.slice(j)
        matched += j
        if not j:
            continue
        t = pa.Table.from_batches([bb]).take(pa.array(take, pa.int64()))
        t = t.drop_columns([c for c in t.schema.names if c in own_cols])
        for c in own_cols:
            t = t.append_column(c, mine.column(c))
        order = [c for c in manifest["schema"] if c in t.schema.names] if columns is None else columns
        yield from t.select(order).combine_chunks().to_batches()
    left = (pending.num_rows if pending is not None else 0) + sum(t.num_rows for t in own)
    if left:
        raise DataContractError(f"{data_dir}: {left} of its rows are not in {base} in order: the two were not "
                                "written from the same data; re-run the stage that writes it (dvc repro)")


def iter_file_batches(parquet_file: pq.ParquetFile, *, batch_rows: int,
                      batch_bytes: int = BATCH_BYTES, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """One Parquet file's batches (see :func:`rows_within`), one row group at a time: a single
    ``iter_batches`` over a file of many row groups kept memory for every row group it had passed
    until it ended (pyarrow 25: +16 MiB per 16 MiB row group; apache/arrow#39808 is the same effect
    in Dataset.to_batches)."""
    size = rows_within(parquet_file, batch_rows=batch_rows, batch_bytes=batch_bytes, columns=columns)
    for k in range(parquet_file.metadata.num_row_groups):
        yield from parquet_file.iter_batches(batch_size=size, row_groups=[k], columns=columns)


def rows_within(parquet_file: pq.ParquetFile, *, batch_rows: int, batch_bytes: int = BATCH_BYTES,
                columns: list[str] | None = None) -> int:
    """Rows per batch so that a batch holds at most ``batch_rows`` rows and about ``batch_bytes``
    bytes (from the widest row group's uncompressed size per row, in the file's metadata; of
    ``columns`` only when given: ids and keys of photos come 8192 a batch, not a hundred)."""
    meta = parquet_file.metadata

    def size(group) -> int:
        if columns is None:
            return group.total_byte_size
        wanted = set(columns)
        return sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)
                   if group.column(j).path_in_schema.split(".")[0] in wanted)

    widest = max((size(meta.row_group(k)) / meta.row_group(k).num_rows
                  for k in range(meta.num_row_groups) if meta.row_group(k).num_rows), default=1.0)
    return max(1, min(batch_rows, int(batch_bytes // max(widest, 1.0))))


@contextmanager
def _unreadable_parquet(where: str | os.PathLike):
    """A corrupt or truncated shard becomes a DataContractError naming it and the fix."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataContractError(f"{where}: unreadable Parquet ({str(err).splitlines()[0][:300]}); the file is "
                                "damaged: re-run the stage that writes it (`dvc repro --force STAGE`) or "
                                "restore it (`dvc checkout`)") from None


# In paths.baseline: id, label, one predicted-class column per baseline; evaluate pairs them with the
# network's predictions on the same test rows.
BASELINE_PREDICTIONS = "test_predictions.csv"


def read_test_predictions(path: str | os.PathLike, model: str, ids: list[str]) -> np.ndarray:
    """``model``'s predicted class for each of ``ids`` (the network's test rows, in that order), from
    the baseline stage's predictions file; a missing or stale file says which stage to re-run."""
    try:
        with open(path) as f:
            rows = {r["id"]: int(r[model]) for r in csv.DictReader(f)}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the baseline stage first (dvc repro baseline)") from None
    except KeyError:
        raise DataContractError(f"{path} has no column {model!r}; re-run the baseline stage") from None
    missing = [i for i in ids if i not in rows]
    if missing or len(rows) != len(ids):
        raise DataContractError(f"{path} does not hold the same test rows as the split ({len(rows)} vs {len(ids)}, "
                                f"{len(missing)} missing); re-run the baseline stage on this split")
    return np.array([rows[i] for i in ids])


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for it in items:
        batch.append(it)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
