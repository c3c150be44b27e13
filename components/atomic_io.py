"""Atomic outputs: a file or folder is replaced in one rename, or not at all.

Every stage writes through here: :func:`publish_file` and the ``write_*_atomic`` helpers for single
files, :func:`replace_dir` for a folder written whole (with :func:`recover_dir` undoing what a
writer killed mid-way left behind). A folder is only ever replaced if a stage wrote it (its
:data:`OUTPUT_MARKER`). Nothing is published once the stage is orphaned or stopped
(:func:`trainwise.components.stage_exit.refuse_if_orphaned`). Every CSV cell is :func:`spreadsheet_safe`.

A ground-floor module: it imports nothing of trainwise but trainwise.components.stage_exit.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
import re
import shutil
from pathlib import Path

from trainwise.components.stage_exit import refuse_if_orphaned


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Written in every folder a stage replaces whole; a folder without it is never deleted (a
# `paths.*` typo pointing at the project root, or at the data the stage reads, deleted them).
OUTPUT_MARKER = ".trainwise-output"
MARKER_TEXT = ("This folder is an output of a trainwise stage, which replaces it whole on every run.\n"
               "trainwise never deletes a folder that does not hold this file.\n")
# What the stages put in the folders they replace, for outputs written before the marker existed
# (no sub-folders, nothing else): such a folder is taken as a stage's own and gets the marker.
LEGACY_OUTPUT_FILES = (
    "manifest.json", "set_aside.jsonl", "part-*.parquet",        # datasets: ingest, clean, split, audit
    "label_issues.csv", "near_duplicate_conflicts.json",          # audit, clean
    "embeddings.parquet",                                        # embed
    "model.pt", "model.json",                                    # train
    "stamps.parquet", "meta.json",                               # the ingest cache
    "best_params.json", "trials.csv",                            # tune  } fetched back whole from a
    "evaluation.json", "attributions.png", "confident_wrong.png",  # evaluate } cluster (ray.submit)
    "test_predictions.csv",                                      # baseline }
)


class NotOurFolder(ValueError):
    """An output path names a folder that no stage wrote: it is left as it is."""


def check_replaceable(dst: str | os.PathLike) -> None:
    """Raise :class:`NotOurFolder` unless ``dst`` is absent or a folder a stage wrote: it holds
    the marker, or (an output of a version before the marker) only files a stage writes, or nothing."""
    dst = Path(dst)
    if not os.path.lexists(dst) or (dst / OUTPUT_MARKER).is_file():
        return
    if dst.is_symlink() or not dst.is_dir():
        raise NotOurFolder(f"{dst}: the output path is a {'link' if dst.is_symlink() else 'file'}, not a folder a "
                           "trainwise stage wrote; it was left as it is. Point the output (paths.* in params.yaml) "
                           "at a folder of its own inside the project")
    foreign = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in dst.iterdir()
                     if (p.is_dir() and not p.is_symlink())
                     or not any(fnmatch.fnmatchcase(p.name, pat) for pat in LEGACY_OUTPUT_FILES))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise NotOurFolder(
            f"{dst}: not replaced: it has no {OUTPUT_MARKER} file (written in every folder a trainwise stage "
            f"creates) and holds what no stage writes ({shown}); nothing was deleted. If it is an output path by "
            "mistake, point paths.* in params.yaml at a folder of its own; if it is an old output you no longer "
            "need, delete it yourself")


def recover_dir(dst: str | os.PathLike) -> None:
    """Undo what a writer killed mid-way left beside ``dst``: its temp dirs (``.name.tmp-PID-*``)
    and, if it died between the two renames of :func:`replace_dir`, the previous ``dst``
    (``.name.old-PID``) is put back. Only leftovers of processes that are gone are touched."""
    dst = Path(dst)
    if not dst.parent.is_dir():
        return
    for p in dst.parent.glob(f".{dst.name}.*-*"):
        kind, _, rest = p.name[len(dst.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not dst.exists():
            os.replace(p, dst)
        elif kind == "tmp" or _is_ours(p):
            shutil.rmtree(p, ignore_errors=True)


def _is_ours(path: Path) -> bool:
    try:
        check_replaceable(path)
    except NotOurFolder:
        return False
    return True


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing it; the old ``dst`` is removed only after the move.

    ``dst`` is replaced only if a stage wrote it (:func:`check_replaceable`); ``src`` gets the
    marker that says so. Between the two renames ``dst`` is briefly absent; a crash exactly there
    leaves the old tree as ``.name.old-PID``, which :func:`recover_dir` (run by the next writer)
    puts back.
    """
    dst = Path(dst)
    try:
        refuse_if_orphaned(dst)
        check_replaceable(dst)
    except BaseException:
        shutil.rmtree(src, ignore_errors=True)
        raise
    (Path(src) / OUTPUT_MARKER).write_text(MARKER_TEXT)
    recover_dir(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def publish_file(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` fills a temp file beside ``path``, which then replaces ``path`` in one rename
    (readers see the old file or the new one), unless this stage is orphaned: then the temp file is
    removed and the old output left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        refuse_if_orphaned(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    publish_file(path, lambda tmp: tmp.write_text(text))


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): a class
# folder named `=HYPERLINK(...)` would become a live link in label_issues.csv or predict's table.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ tab or CR gets a
    leading apostrophe (OWASP's advice for CSV injection). Numbers, and strings that are plain
    numbers (a class named "-1"), are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_safe_row(row: dict) -> dict:
    return {k: spreadsheet_safe(v) for k, v in row.items()}


def write_csv_atomic(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    """Every CSV trainwise writes goes through here (or :func:`spreadsheet_safe_row` when streamed),
    so every string cell is :func:`spreadsheet_safe`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(spreadsheet_safe_row(r) for r in rows)
    write_text_atomic(path, buf.getvalue())
