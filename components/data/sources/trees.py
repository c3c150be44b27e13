"""File trees an ingest source can walk: a local folder, an fsspec URL, a .zip or .tar(.gz).

Every tree yields :class:`Entry` objects for *all* files it holds, in a deterministic order,
without reading them; the caller reads only the ones it keeps. Nothing is extracted to disk:
archive members are read straight from the archive, so a member named ``../../etc/passwd``
or an absolute path can never be written anywhere. Such members, links that point outside
the source and links inside archives are reported as entries with a ``problem`` (set aside
with that reason), never followed.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from trainwise.components.data.sources.base import SourceError

# Reasons an entry is set aside before its bytes are read.
LINK_OUTSIDE = "link_outside_source"
FOLDER_LINK = "folder_link_not_followed"
UNSAFE_MEMBER = "unsafe_archive_path"
ARCHIVE_LINK = "archive_link_not_followed"
NOT_REGULAR = "not_a_regular_file"
HIDDEN = "hidden"

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass
class Entry:
    """One file of a tree. ``source`` is what the row records (path inside the source);
    ``parts`` are its path components below the class-folder root (``[class, ..., name]``);
    ``size`` is known beforehand for archive members and some URLs; ``read(limit)`` returns
    the bytes, at most ``limit`` of them where the backend can stop early."""

    source: str
    parts: list[str]
    size: int | None
    read: Callable[[int], bytes] | None
    problem: str | None = None
    detail: dict = field(default_factory=dict)
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) where the tree offers it cheaply


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class LocalTree:
    """A folder on this machine. Symlinks to files inside the folder are followed; links that
    resolve outside it, and links to folders (cycles), are entries set aside with a reason."""

    def __init__(self, root: Path):
        self.root = root
        self.real = os.path.realpath(root)
        self.location = str(root)
        self.stamps = False  # set by the incremental cache: stat every file (size, mtime)

    def class_names(self) -> list[str]:
        with os.scandir(self.root) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))

    def entries(self) -> Iterator[Entry]:
        yield from self._walk(str(self.root), [])

    def _walk(self, folder: str, prefix: list[str]) -> Iterator[Entry]:
        # One folder's listing is the only per-file state held. DirEntry's type comes from the
        # directory itself (d_type), so a regular file costs no stat call: its size is learned
        # by reading it, with a limit.
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
        for e in items:
            parts = [*prefix, e.name]
            rel = "/".join(parts)
            if e.name.startswith("."):
                yield Entry(rel, parts, None, None, HIDDEN)
            elif e.is_symlink():
                target = os.path.realpath(e.path)
                if not _inside(target, self.real):
                    yield Entry(rel, parts, None, None, LINK_OUTSIDE, {"target": target})
                elif os.path.isdir(target):
                    yield Entry(rel, parts, None, None, FOLDER_LINK, {"target": target})
                else:  # a link to a file inside the source (or a dangling one: reading says so)
                    yield Entry(rel, parts, None, partial(_read_file, e.path), stamp=self._stamp(e))
            elif e.is_dir(follow_symlinks=False):
                yield from self._walk(e.path, parts)
            elif e.is_file(follow_symlinks=False):
                yield Entry(rel, parts, None, partial(_read_file, e.path), stamp=self._stamp(e))
            else:
                yield Entry(rel, parts, None, None, NOT_REGULAR)

    def _stamp(self, e: os.DirEntry) -> tuple[int, int] | None:
        if not self.stamps:
            return None
        try:
            st = e.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def close(self) -> None:
        pass


class NotRegularFile(OSError):
    """A path that is a FIFO, socket or device (directly or through a link): reading it could block
    forever (a FIFO with no writer) or never end (``/dev/zero``)."""


def read_regular_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (links followed), at most ``limit`` of them (None:
    all); anything else raises :class:`NotRegularFile` without reading.

    Opened non-blocking, so that opening a FIFO returns at once instead of waiting for a writer;
    the type is then checked on the open descriptor (no window between a check and the open).
    Plain ``os`` calls: ``open()`` builds a FileIO and a BufferedReader per file, which is a good
    part of the cost of reading a small file; and ``f.read(limit)`` would allocate ``limit`` bytes
    (64 MiB by default) up front for every file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                    else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
            raise NotRegularFile(f"not a regular file ({kind}); only regular files are read")
        want = st.st_size + 1 if limit is None else min(st.st_size + 1, limit)  # +1: see EOF (or a file that grew)
        data = os.read(fd, want)
        if len(data) < want - 1:  # a short read (huge file, or a signal): keep reading
            parts = [data]
            got = len(data)
            while got < want and (chunk := os.read(fd, want - got)):
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def _read_file(path: str, limit: int) -> bytes:
    """The file's bytes, at most ``limit`` of them: a longer file is set aside unread."""
    return read_regular_file(path, limit)


class FsspecTree:
    """A folder behind an fsspec URL (s3://, gs://, http(s)://, ...): listed class folder by
    class folder, each file fetched when it is read."""

    def __init__(self, fs, url: str):
        self.fs, self.location = fs, url
        self.root = fs._strip_protocol(url).rstrip("/")

    def _ls(self, path: str) -> list[dict]:
        return sorted(self.fs.ls(path, detail=True), key=lambda i: i["name"])

    def class_names(self) -> list[str]:
        return sorted(self._rel(i["name"]).split("/")[0] for i in self._ls(self.root)
                      if i["type"] == "directory" and not self._rel(i["name"]).startswith("."))

    def _rel(self, name: str) -> str:
        name = name.rstrip("/")
        return name[len(self.root):].lstrip("/") if name.startswith(self.root) else name.rsplit("/", 1)[-1]

    def entries(self) -> Iterator[Entry]:
        for top in self._ls(self.root):
            rel = self._rel(top["name"])
            if not rel:
                continue
            if top["type"] == "directory" and not rel.startswith("."):
                found = self.fs.find(top["name"], detail=True)
                for name in sorted(found):
                    yield self._entry(found[name])
            else:
                yield self._entry(top)

    def _entry(self, info: dict) -> Entry:
        rel = self._rel(info["name"])
        name = info["name"]
        return Entry(rel, rel.split("/"), info.get("size"), lambda limit: self.fs.cat_file(name, start=0, end=limit))

    def close(self) -> None:
        pass


def _member_problem(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
        return UNSAFE_MEMBER
    return None


class _Layout:
    """Class folders of an archive, found from member names alone. An archive that wraps the
    class folders in one top folder (``pets/cats/...``, the usual result of zipping a folder)
    is read from inside that folder."""

    def __init__(self):
        self.tops: set[str] = set()
        self.second: set[str] = set()
        self.top_files = False

    def add(self, name: str, is_dir: bool) -> None:
        parts = [p for p in name.split("/") if p]
        if not parts or _member_problem(name) or parts[0].startswith("."):
            return
        if len(parts) == 1 and not is_dir:
            self.top_files = True
            return
        self.tops.add(parts[0])
        if len(parts) >= 3 or (len(parts) == 2 and is_dir):
            if not parts[1].startswith("."):
                self.second.add(parts[1])

    def resolve(self) -> tuple[str | None, list[str]]:
        if len(self.tops) == 1 and not self.top_files and self.second:
            return next(iter(self.tops)), sorted(self.second)
        return None, sorted(self.tops)


def _entry_parts(name: str, prefix: str | None) -> list[str]:
    parts = [p for p in name.split("/") if p]
    if prefix is not None and parts and parts[0] == prefix:
        parts = parts[1:]
    return parts


class DamagedMember(OSError):
    """An archive member whose bytes cannot be read back as stored (corrupt compressed data, a size
    or CRC that does not match, an unsupported or encrypted method): set aside, the rest is read."""


# What zipfile raises for one damaged member (the archive itself was readable).
_ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError,
                      lzma.LZMAError)


class ZipTree:
    """Members read from the zip's central directory, in name order, never extracted.

    zipfile never returns more than a member's declared size, so the declared sizes bound what
    reading the archive can unpack: their sum is checked against ``max_bytes`` up front.
    """

    def __init__(self, path: str, location: str, cleanup: Callable[[], None] = lambda: None, *,
                 max_bytes: int | None = None):
        self.location, self._cleanup = location, cleanup
        try:
            self.zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:
            cleanup()
            raise SourceError(f"ingest.path: {location} is not a readable zip archive ({err})") from None
        layout = _Layout()
        total = 0
        for info in self.zf.infolist():
            layout.add(info.filename, info.is_dir())
            total += info.file_size
        if max_bytes is not None and total > max_bytes:
            self.close()
            raise SourceError(_too_big(location, f"declares members of {total >> 20} MiB in all, more than", max_bytes))
        self.prefix, self._classes = layout.resolve()

    def class_names(self) -> list[str]:
        return self._classes

    def entries(self) -> Iterator[Entry]:
        for info in sorted((i for i in self.zf.infolist() if not i.is_dir()), key=lambda i: i.filename):
            name = info.filename
            parts = _entry_parts(name, self.prefix)
            problem = _member_problem(name)
            if problem is None and stat.S_ISLNK(info.external_attr >> 16):
                problem = ARCHIVE_LINK
            if problem:
                yield Entry(name, parts, None, None, problem)
            else:
                yield Entry(name, parts, info.file_size, partial(self._read, info))

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        try:
            with self.zf.open(info) as f:
                return f.read(limit)  # reading to the end checks the CRC: a forged size or bit rot shows here
        except _ZIP_MEMBER_ERRORS as err:
            raise DamagedMember(f"damaged zip member ({type(err).__name__}: {err})") from None

    def close(self) -> None:
        self.zf.close()
        self._cleanup()


def _too_big(location: str, what: str, max_bytes: int) -> str:
    return (f"ingest.path: {location} {what} ingest.max_archive_mb ({max_bytes >> 20} MiB): a "
            f"decompression bomb, or a dataset larger than the limit (then raise ingest.max_archive_mb, "
            f"or serve it as a folder)")


# Compressed tars are recognised by their content, not their name.
_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


def _unpack_once(path: str, location: str, max_bytes: int | None) -> tuple[str, Callable[[], None]]:
    """A compressed tar's plain bytes in a temp file (path, remover), written once in 1 MiB chunks
    and never past ``max_bytes``; a plain tar is returned as it is.

    A stream can only be read from the start: reading it twice (member names first, contents
    next) decompressed everything twice, in tarfile's small stream reads, and a 1 MB tar.gz
    holding a 1 GiB member took 478 s. Unpacked once, listing reads headers only and a member
    set aside is skipped by a seek.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
    opener = next((op for sig, op in _COMPRESSED if magic.startswith(sig)), None)
    if opener is None:
        return path, lambda: None
    tmp = tempfile.mkdtemp(prefix="trainwise-untar-")

    def cleanup() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    plain, total = os.path.join(tmp, "archive.tar"), 0
    try:
        with opener(path, "rb") as src, open(plain, "wb") as dst:
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise SourceError(_too_big(location, "unpacks to more than", max_bytes))
                dst.write(chunk)
    except SourceError:
        cleanup()
        raise
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        cleanup()
        raise SourceError(f"ingest.path: {location} is not a readable tar archive: its compressed data is "
                          f"damaged ({type(err).__name__}: {err})") from None
    return plain, cleanup


class TarTree:
    """A .tar / .tar.gz / .tgz (or .bz2 / .xz inside), unpacked once (see :func:`_unpack_once`)
    and read member by member, never extracted. Listing keeps one header at a time, so memory
    does not grow with the number of members."""

    def __init__(self, path: str, location: str, cleanup: Callable[[], None] = lambda: None, *,
                 max_bytes: int | None = None):
        self.location = location
        try:
            self.path, unpacked_cleanup = _unpack_once(path, location, max_bytes)
        except BaseException:
            cleanup()
            raise

        def both() -> None:
            unpacked_cleanup()
            cleanup()

        self._cleanup = both
        layout = _Layout()
        try:
            for member in self._members():
                layout.add(member[1].name, member[1].isdir())
        except (tarfile.TarError, OSError, EOFError) as err:
            both()
            raise SourceError(f"ingest.path: {location} is not a readable tar archive ({err})") from None
        self.prefix, self._classes = layout.resolve()

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        with tarfile.open(self.path, mode="r:") as tf:
            while (member := tf.next()) is not None:
                yield tf, member
                tf.members.clear()  # tarfile remembers every header it read; we need none

    def class_names(self) -> list[str]:
        return self._classes

    def entries(self) -> Iterator[Entry]:
        try:
            for tf, m in self._members():
                if m.isdir():
                    continue
                parts = _entry_parts(m.name, self.prefix)
                problem = _member_problem(m.name)
                if problem is None and (m.issym() or m.islnk()):
                    problem = ARCHIVE_LINK
                elif problem is None and not m.isfile():
                    problem = NOT_REGULAR
                if problem:
                    yield Entry(m.name, parts, None, None, problem, {"linkname": m.linkname} if m.linkname else {})
                else:
                    yield Entry(m.name, parts, m.size, lambda limit, tf=tf, m=m: tf.extractfile(m).read(limit))
        except (tarfile.TarError, EOFError) as err:
            raise SourceError(f"ingest.path: {self.location}: tar archive is damaged ({err})") from None

    def close(self) -> None:
        self._cleanup()


def _fsspec(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise SourceError(f"ingest.path: {url} needs an fsspec backend that is not installed ({err}); "
                          f"install the matching extra, e.g. pip install 'trainwise[s3]' or 'trainwise[gcs]'") from None
    except ValueError as err:
        raise SourceError(f"ingest.path: {url}: {err}") from None


def fetch_to_temp(url: str) -> tuple[str, Callable[[], None]]:
    """Copy a remote file to a local temp file in chunks (memory stays bounded); returns its path
    and a function that removes it. Anything that goes wrong is a clear, early error."""
    fs, path = _fsspec(url)
    tmp = tempfile.mkdtemp(prefix="trainwise-ingest-")
    local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "download")

    def cleanup() -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    try:
        with fs.open(path, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as err:  # network errors come in many types; all mean the same here
        cleanup()
        raise SourceError(_unreachable("read", url, err)) from None
    return local, cleanup


def _unreachable(verb: str, url: str, err: BaseException) -> str:
    # fsspec's HTTP backend reports a refused connection as FileNotFoundError(url) raised
    # from the network error: name the underlying cause, it is what the user must fix.
    cause = err.__cause__ or err.__context__
    if isinstance(err, FileNotFoundError) and cause is None:
        return f"ingest.path: {url} does not exist"
    shown = cause if isinstance(err, FileNotFoundError) else err
    return f"ingest.path: cannot {verb} {url}: {type(shown).__name__}: {shown}"


def open_archive(path: str, location: str, cleanup: Callable[[], None] = lambda: None, *,
                 max_bytes: int | None = None):
    """``max_bytes``: the most the archive may unpack to (members' sizes added up)."""
    if path.lower().endswith(".zip"):
        return ZipTree(path, location, cleanup, max_bytes=max_bytes)
    return TarTree(path, location, cleanup, max_bytes=max_bytes)


def open_tree(path: str, *, max_archive_bytes: int | None = None):
    """The tree behind ``ingest.path``: a local folder, a URL, or an archive of either (which may
    unpack to ``max_archive_bytes`` at most)."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_url(path):
        if is_archive(path):
            local, cleanup = fetch_to_temp(path)
            return open_archive(local, path, cleanup, max_bytes=max_archive_bytes)
        fs, _ = _fsspec(path)
        tree = FsspecTree(fs, path)
        try:
            tree._ls(tree.root)
        except Exception as err:
            raise SourceError(_unreachable("list", path, err)) from None
        return tree
    local = Path(path).expanduser()
    if not local.exists():
        raise FileNotFoundError(f"ingest.path: {local} does not exist; point ingest.path at a folder "
                                f"with one sub-folder per class, or at a .zip/.tar/.tar.gz of one")
    if local.is_dir():
        return LocalTree(local)
    if is_archive(str(local)):
        if not local.is_file():  # a FIFO or device named like an archive: reading it could hang
            raise SourceError(f"ingest.path: {local} is not a regular file (a FIFO, socket or device); "
                              f"point it at a folder or an archive file")
        return open_archive(str(local), str(local), max_bytes=max_archive_bytes)
    raise SourceError(f"ingest.path: {local} is a file but not a .zip/.tar/.tar.gz archive; "
                      f"point it at a folder with one sub-folder per class, or an archive of one")
