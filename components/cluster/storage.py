"""Copy stage files to and from storage every cluster node can read (a shared path or an
fsspec URL such as ``s3://bucket/prefix``), replacing local outputs atomically on the way back."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from trainwise.components.atomic_io import replace_dir


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def put(local: str | os.PathLike, url: str) -> None:
    """Upload a file or a directory tree to ``url`` (which it becomes)."""
    local = Path(local)
    fs, path = _fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path.rsplit("/", 1)[0] if local.is_file() else path, exist_ok=True)
    if local.is_dir():
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            target = join(path, f.relative_to(local).as_posix())
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(f), target)
    else:
        fs.put_file(str(local), path)


def get(url: str, local: str | os.PathLike) -> None:
    """Download ``url`` (a file or a tree) to ``local``, replacing what was there only once the
    whole download has succeeded: an interrupted download leaves the old output intact."""
    local = Path(local)
    fs, path = _fs(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: expected output is missing in the shared storage")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local.name}.get-", dir=local.parent))
    try:
        if fs.isdir(path):
            staged = tmp / local.name
            for remote in sorted(fs.find(path)):
                rel = remote[len(path.rstrip("/")) + 1:]
                dest = staged / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(dest))
            staged.mkdir(exist_ok=True)
            replace_dir(staged, local)
        else:
            staged = tmp / local.name
            fs.get_file(path, str(staged))
            os.replace(staged, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
