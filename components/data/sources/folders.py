"""Class-folder sources: ``image_folder`` and ``text_folder``.

One sub-folder per class (``cats/``, ``dogs/``); the sub-folder names, sorted, are the class
names and their positions the labels. Files are read one at a time and handed on in bounded
batches, so memory does not grow with the number of files. Every file the tree holds is
either a row or set aside with a reason: ``files seen == rows + set aside``.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator

import pyarrow as pa

from trainwise.components.data.contract import SetAside, content_id
from trainwise.components.data.sources.base import GIVEN_SPLITS, RowBuffer, Source, SourceError, Tally
from trainwise.components.data.sources.imagecheck import Rejected, check_image
from trainwise.components.data.sources.cache import IngestCache
from trainwise.components.data.sources.trees import HIDDEN, NOT_REGULAR, DamagedMember, LocalTree, NotRegularFile, open_tree

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
TEXT_EXTENSIONS = (".txt",)

# Reasons a file is set aside at ingest (besides those of trees.py and imagecheck.py).
EMPTY = "empty_file"
UNKNOWN_EXTENSION = "unknown_extension"
OUTSIDE_CLASS = "outside_class_folder"
TOO_LARGE_FILE = "file_too_large"
UNREADABLE = "unreadable"
NOT_UTF8 = "not_utf8"
DAMAGED_MEMBER = "damaged_archive_member"


def _no_id(source: str) -> str:
    """The id of a file set aside before its bytes were read."""
    return content_id(b"", source)


def class_folder_source(tree, *, payload: str, extensions: tuple[str, ...],
                        convert: Callable[[bytes], object], max_file_bytes: int,
                        batch_rows: int = 1024, cache_dir: str | None = None, cache_key: dict | None = None
                        ) -> Source:
    """Rows from a tree of class folders; ``convert`` turns a file's bytes into the payload
    value or raises :class:`Rejected` with the reason it is set aside.

    With ``cache_dir`` (local folders only), files unchanged since the last run (same size and
    mtime) are taken from that run's output instead of being read: see ``cache.py``.
    """
    cache = previous = None
    if cache_dir is not None and isinstance(tree, LocalTree):
        cache = IngestCache(cache_dir, key={"payload": payload, "root": tree.real, "extensions": extensions,
                                            "max_file_bytes": max_file_bytes, **(cache_key or {})})
        previous = cache.previous(payload)
        tree.stamps = True
    classes = tree.class_names()
    where = tree.location
    # train/ and test/ (and val/) folders, each holding the class folders: the data come with a fixed
    # split, which the split stage keeps (and checks for near-duplicates across it) instead of drawing one.
    given = classes and len(classes) >= 2 and all(c.lower() in GIVEN_SPLITS for c in classes)
    if given:
        split_folders = set(classes)
        classes = sorted({e.parts[1] for e in tree.entries()
                          if len(e.parts) >= 3 and e.parts[0] in split_folders and not e.parts[1].startswith(".")})
    if not classes:
        tree.close()
        raise SourceError(f"ingest.path: {where} has no class folders; expected one sub-folder per class "
                          f"(e.g. cats/ and dogs/) holding {'/'.join(extensions)} files")
    if len(classes) == 1:
        tree.close()
        raise SourceError(f"ingest.path: {where} has only one class folder ({classes[0]!r}); "
                          f"a classifier needs at least two")
    index = {name: k for k, name in enumerate(classes)}
    aside, tally = SetAside(), Tally()
    files_per_class: Counter[str] = Counter()

    stamps: tuple[list, list, list] = ([], [], [])  # of the rows in `buf`, for the cache

    def emit(table: pa.Table | None) -> pa.Table | None:
        if table is not None and cache is not None:
            cache.record(*stamps)
            for s in stamps:
                s.clear()
        return table

    def add(row_id: str, label: int, value, e, nbytes: int, split: str | None) -> pa.Table | None:
        if cache is not None:
            stamps[0].append(e.source)
            stamps[1].append(e.stamp[0] if e.stamp else -1)
            stamps[2].append(e.stamp[1] if e.stamp else -1)
        return emit(buf.add(row_id, label, value, e.source, nbytes, split))

    buf = RowBuffer(payload, batch_rows=batch_rows, given_split=bool(given))

    def gen() -> Iterator[pa.Table]:
        try:
            for e in tree.entries():
                tally.seen += 1
                if e.problem:
                    aside.add(_no_id(e.source), e.source, e.problem, **e.detail)
                    continue
                if e.source.startswith(".") or "/." in e.source:
                    aside.add(_no_id(e.source), e.source, HIDDEN)
                    continue
                depth = 2 if given else 1  # split/class/file: the class is one level down
                if len(e.parts) < depth + 1 or e.parts[depth - 1] not in index:
                    aside.add(_no_id(e.source), e.source, OUTSIDE_CLASS)
                    continue
                cls, split = e.parts[depth - 1], GIVEN_SPLITS[e.parts[0].lower()] if given else None
                files_per_class[cls] += 1
                ext = "." + e.parts[-1].rsplit(".", 1)[-1].lower() if "." in e.parts[-1] else ""
                if ext not in extensions:
                    aside.add(_no_id(e.source), e.source, UNKNOWN_EXTENSION, extension=ext)
                    continue
                if previous is not None and e.stamp is not None:
                    hit = previous.get(e.parts, e.stamp)
                    if hit is not None:
                        table = add(hit[0], index[cls], hit[1], e, e.stamp[0], split)
                        if table is not None:
                            yield table
                        continue
                if e.size is not None and e.size > max_file_bytes:
                    aside.add(_no_id(e.source), e.source, TOO_LARGE_FILE, bytes=e.size, max_bytes=max_file_bytes)
                    continue
                if e.size == 0:
                    aside.add(_no_id(e.source), e.source, EMPTY)
                    continue
                try:
                    data = e.read(max_file_bytes + 1)
                except NotRegularFile as err:  # a link to a FIFO or device inside the source
                    aside.add(_no_id(e.source), e.source, NOT_REGULAR, error=str(err))
                    continue
                except DamagedMember as err:
                    aside.add(_no_id(e.source), e.source, DAMAGED_MEMBER, error=str(err))
                    continue
                except OSError as err:
                    aside.add(_no_id(e.source), e.source, UNREADABLE, error=f"{type(err).__name__}: {err}")
                    continue
                if not data:
                    aside.add(_no_id(e.source), e.source, EMPTY)
                    continue
                row_id = content_id(data, e.source)
                if len(data) > max_file_bytes:
                    aside.add(row_id, e.source, TOO_LARGE_FILE, bytes=f"> {max_file_bytes}", max_bytes=max_file_bytes)
                    continue
                try:
                    value = convert(data)
                except Rejected as rej:
                    aside.add(row_id, e.source, rej.reason, **rej.detail)
                    continue
                table = add(row_id, index[cls], value, e, len(data), split)
                if table is not None:
                    yield table
            last = emit(buf.take())
            if last is not None:
                yield last
            empty = [c for c in classes if files_per_class[c] == 0]
            if empty:
                raise SourceError(f"ingest.path: {where}: class folder(s) {empty} hold no files; "
                                  f"add files or remove the folder(s)")
        finally:
            tree.close()

    return Source(classes=classes, batches=gen(), payload=payload, set_aside=aside, tally=tally,
                  extra={"path": where, **({"given_splits": sorted({GIVEN_SPLITS[c.lower()] for c in split_folders})}
                                           if given else {})}, cache=cache)


def image_folder_source(path: str, *, max_image_pixels: int, max_file_bytes: int,
                        max_archive_bytes: int | None = None, batch_rows: int = 1024,
                        cache_dir: str | None = None) -> Source:
    """JPEG/PNG/BMP/WebP/GIF files in class folders; bytes stored as given (clean decodes).

    Each file's header is checked without decoding (signature, dimensions, end marker; see
    ``imagecheck``): non-images, truncated files and images over ``max_image_pixels`` are set
    aside here, anything subtler is caught when ``clean`` decodes.
    """
    def convert(data: bytes) -> bytes:
        check_image(data, max_pixels=max_image_pixels)
        return data

    return class_folder_source(open_tree(path, max_archive_bytes=max_archive_bytes), payload="image",
                               extensions=IMAGE_EXTENSIONS,
                               convert=convert, max_file_bytes=max_file_bytes, batch_rows=batch_rows,
                               cache_dir=cache_dir, cache_key={"max_image_pixels": max_image_pixels})


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Rejected(NOT_UTF8, error=f"byte {err.start}: {err.reason}") from None


def text_folder_source(path: str, *, max_file_bytes: int, max_archive_bytes: int | None = None,
                       batch_rows: int = 1024, cache_dir: str | None = None) -> Source:
    """UTF-8 ``.txt`` files in class folders; each file is one row (a BOM is dropped)."""
    return class_folder_source(open_tree(path, max_archive_bytes=max_archive_bytes), payload="text", extensions=TEXT_EXTENSIONS,
                               convert=decode_text, max_file_bytes=max_file_bytes, batch_rows=batch_rows,
                               cache_dir=cache_dir)
