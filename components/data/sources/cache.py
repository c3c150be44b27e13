"""Incremental re-ingest of a local class folder: unchanged files are not read again.

After a run, the cache (``.trainwise/ingest-cache`` by default) holds hard links to the
shards just written plus ``stamps.parquet``: each written row's ``source``, file size and
mtime (ns), in row order. On the next run each file is ``stat``-ed (no read); a file whose
size and mtime match is taken from the cached shards -- its id and bytes as they were
written -- instead of being opened, hashed and checked again.

Memory stays bounded: rows are written in walk order, and walk order (names sorted in each
folder, folders entered in place) is the lexicographic order of the path components, so
the cache is read forward once, in step with the walk, like a merge join.

DVC deletes a stage's outputs before it runs the stage, which is why the cache keeps its own
links to the shards (no extra disk when hard links work; a copy where they cannot).
Only local folders have a cache: a remote listing gives no reliable mtime everywhere, and
archive members are read in one pass anyway. A file rewritten with the same size within the
same mtime tick is taken as unchanged (as ``make`` and ``rsync`` would).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from trainwise.components.atomic_io import replace_dir

CACHE_VERSION = 1  # bump when what ingest accepts or stores for a file changes
STAMPS = "stamps.parquet"
META = "meta.json"
STAMP_SCHEMA = pa.schema([("source", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])


class IngestCache:
    def __init__(self, cache_dir: str | os.PathLike, *, key: dict):
        self.dir = Path(cache_dir)
        self.key = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True).encode()).hexdigest()
        self.reused = 0
        self._tmp: Path | None = None
        self._stamps: pq.ParquetWriter | None = None

    # -- reading the previous run ----------------------------------------------------------
    def previous(self, payload: str) -> "CachedRows | None":
        try:
            meta = json.loads((self.dir / META).read_text())
        except (OSError, ValueError):
            return None
        shards = [self.dir / s for s in meta.get("shards", [])]
        if meta.get("key") != self.key or not all(p.exists() for p in shards) or not (self.dir / STAMPS).exists():
            return None
        return CachedRows(shards, self.dir / STAMPS, payload, self)

    # -- recording this run -----------------------------------------------------------------
    def record(self, sources: list[str], sizes: list[int], mtimes: list[int]) -> None:
        if self._stamps is None:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.tmp-", dir=self.dir.parent))
            self._stamps = pq.ParquetWriter(self._tmp / STAMPS, STAMP_SCHEMA)
        self._stamps.write_table(pa.table([sources, pa.array(sizes, pa.int64()), pa.array(mtimes, pa.int64())],
                                          schema=STAMP_SCHEMA))

    def commit(self, out_dir: Path, shards: list[str]) -> None:
        """Keep this run's shards (hard links) and stamps as the cache for the next run."""
        if self._stamps is None:
            return
        self._stamps.close()
        for name in shards:
            try:
                os.link(out_dir / name, self._tmp / name)
            except OSError:  # another filesystem, or no hard links: a copy
                shutil.copy2(out_dir / name, self._tmp / name)
        (self._tmp / META).write_text(json.dumps({"key": self.key, "shards": shards}) + "\n")
        replace_dir(self._tmp, self.dir)
        self._stamps = self._tmp = None

    def abort(self) -> None:
        if self._stamps is not None:
            self._stamps.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._stamps = self._tmp = None


class CachedRows:
    """The previous run's rows, read forward once in step with the walk."""

    def __init__(self, shards: list[Path], stamps: Path, payload: str, owner: IngestCache):
        self._rows = self._iter(shards, stamps, payload)
        self._owner = owner
        self._cur = next(self._rows, None)

    @staticmethod
    def _iter(shards: list[Path], stamps: Path, payload: str) -> Iterator[tuple]:
        def stamp_rows():
            for b in pq.ParquetFile(stamps).iter_batches(batch_size=4096):
                yield from zip(b.column(0).to_pylist(), b.column(1).to_pylist(), b.column(2).to_pylist())

        stamp_iter = stamp_rows()
        for shard in shards:
            for b in pq.ParquetFile(shard).iter_batches(batch_size=1024, columns=["id", payload, "source"]):
                for row_id, value, source in zip(b.column(0).to_pylist(), b.column(1).to_pylist(),
                                                 b.column(2).to_pylist()):
                    stamped, size, mtime = next(stamp_iter)
                    if stamped != source:  # not the cache we wrote: stop using it
                        return
                    yield source.split("/"), (size, mtime), row_id, value

    def get(self, parts: list[str], stamp: tuple[int, int]) -> tuple[str, object] | None:
        """``(id, payload)`` of an unchanged file, or None (new, changed, or not cached)."""
        while self._cur is not None and self._cur[0] < parts:
            self._cur = next(self._rows, None)
        if self._cur is not None and self._cur[0] == parts and self._cur[1] == stamp:
            self._owner.reused += 1
            return self._cur[2], self._cur[3]
        return None
