"""Sources that feed ``ingest``, and the streaming ingest itself.

:func:`open_source` is the one entry point: a source name (``ingest.source``) and its options
give a :class:`Source` -- ordered class names, a lazy stream of raw batches in the data
contract's pre-clean form, and the account of everything set aside. :func:`ingest` writes
it as bounded Parquet shards plus a manifest whose counts add up:
``rows_in (items seen) == rows + sum(set_aside)``.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainwise.components.data.contract import DatasetWriter, pixel_encoding
from trainwise.components.data.sources.base import RAW_IMAGE_SCHEMA, Source, SourceError, raw_schema
from trainwise.components.data.sources.digits import digits_source, encode_png
from trainwise.components.data.sources.folders import image_folder_source, text_folder_source
from trainwise.components.data.sources.sequences import sequences_source
from trainwise.components.data.sources.table import table_source

__all__ = ["RAW_IMAGE_SCHEMA", "SOURCES", "Source", "SourceError", "digits_source", "encode_png", "ingest",
           "open_source", "raw_schema"]

SOURCES = {
    "digits": digits_source,
    "image_folder": image_folder_source,
    "text_folder": text_folder_source,
    "table": table_source,
    "sequences": sequences_source,
}
NEEDS_PATH = ("image_folder", "text_folder", "table")


def open_source(name: str, **options) -> Source:
    """Open source ``name`` with the options its factory takes (others are ignored, so one
    params section can configure every source)."""
    try:
        factory = SOURCES[name]
    except KeyError:
        raise SourceError(f"ingest.source: unknown source {name!r}; choose from {sorted(SOURCES)}") from None
    if name in NEEDS_PATH and not options.get("path"):
        raise SourceError(f"ingest.path: source {name!r} reads a folder, file, archive or URL; set ingest.path")
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in accepted})


class StreamingDatasetWriter(DatasetWriter):
    """A :class:`DatasetWriter` that writes each batch straight into the current shard (one
    Parquet row group per batch) and starts the next shard after ``shard_rows`` rows or
    ``shard_bytes`` bytes, so memory holds one batch whatever the shard size."""

    def __init__(self, out_dir, *, shard_bytes: int, **kwargs):
        super().__init__(out_dir, **kwargs)
        self.shard_bytes = shard_bytes
        self._writer: pq.ParquetWriter | None = None
        self._in_shard = (0, 0)  # rows, bytes

    def write(self, table: pa.Table) -> None:
        table = self._accept(table)
        if table is None:
            return
        while table.num_rows:
            if self._writer is None:
                path = self._tmp / f"part-{len(self._shards):05d}.parquet"
                # encoded files are stored as they are: not snappy-compressed again, not dictionary-encoded
                self._writer = pq.ParquetWriter(path, self._schema, **pixel_encoding(self._schema))
                self._shards.append(path)
            rows, nbytes = self._in_shard
            head, table = table.slice(0, self.shard_rows - rows), table.slice(self.shard_rows - rows)
            self._writer.write_table(head)
            self._in_shard = rows, nbytes = rows + head.num_rows, nbytes + head.nbytes
            if rows >= self.shard_rows or nbytes >= self.shard_bytes:
                self._end_shard()

    def _end_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_shard = (0, 0)

    def close(self, **kwargs) -> dict:
        self._end_shard()
        return super().close(**kwargs)

    def abort(self) -> None:
        try:
            self._end_shard()
        except Exception:  # already failing; the temp dir goes either way
            pass
        super().abort()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def update(self, n: int) -> None:
        pass


def _progress(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:  # not even imported: tqdm's import costs ~0.15 s
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(unit=" items", desc="ingest", mininterval=0.5)


def ingest(source: Source, out_dir: str | os.PathLike, *, shard_rows: int, shard_bytes: int,
           metadata: dict | None = None, progress: bool | None = None) -> dict:
    """Stream ``source`` into ``out_dir`` (written atomically; nothing is left behind on error).

    ``progress``: None shows a bar only when stderr is a terminal.
    """
    try:
        with StreamingDatasetWriter(Path(out_dir), classes=source.classes, shard_rows=shard_rows,
                                    shard_bytes=shard_bytes, metadata=metadata) as writer, \
                _progress(progress) as bar:
            seen = 0
            for batch in source.batches:
                writer.write(batch)
                bar.update(source.tally.seen - seen)
                seen = source.tally.seen
            counts = writer.class_counts
            empty = [c for k, c in enumerate(source.classes) if counts.get(k, 0) == 0]
            extra = {**source.extra, "empty_classes": empty} if empty else dict(source.extra)
            manifest = writer.close(rows_in=source.tally.seen, set_aside=source.set_aside, extra=extra)
    except BaseException:
        if source.cache is not None:
            source.cache.abort()
        raise
    if source.cache is not None:
        source.cache.commit(Path(out_dir), manifest["shards"])
    return manifest
