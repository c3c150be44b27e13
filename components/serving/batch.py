"""Predict files: PATH arguments (files, folders, CSV lists) -> one table row per input.

Inputs stream in batches of ``predictor.batch_size``, so a large folder is never held in
memory at once. Every input gets a row: a prediction, or an ``error`` saying why not (not
found, unreadable, empty, not an image); one bad file never stops the others.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from components.data.contract import content_id
from components.serving.predictor import PREDICTION_COLUMNS, Predictor

TABLE_COLUMNS = ["id", "source", *PREDICTION_COLUMNS]
# Column of a CSV list that names files (first one present wins), and the one that holds text.
PATH_COLUMNS = ("path", "source", "file", "image")
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class Item:
    source: str
    path: Path | None = None   # read the payload from this file
    text: str | None = None    # or take it as given (text models)
    error: str | None = None   # already known to be unusable


def iter_items(paths: Iterable[str | os.PathLike]) -> Iterator[Item]:
    """Expand PATH arguments: a folder -> its files (recursively, sorted, hidden ones skipped);
    a ``.csv`` -> the files in its path column (relative to the CSV) or the rows of its text column;
    any other file -> itself."""
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if f.is_file() and not any(part.startswith(".") for part in rel):
                    yield Item(str(f), path=f)
        elif p.suffix.lower() == ".csv" and p.is_file():
            yield from _csv_items(p)
        elif p.exists():
            yield Item(str(p), path=p)
        else:
            yield Item(str(p), error="not found")


def _csv_items(csv_path: Path) -> Iterator[Item]:
    try:
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            path_col = next((c for c in PATH_COLUMNS if c in columns), None)
            if path_col is None and TEXT_COLUMN not in columns:
                yield Item(str(csv_path), error=f"CSV has no {' / '.join(PATH_COLUMNS)} or {TEXT_COLUMN} column "
                                                 f"(columns: {columns})")
                return
            for line, row in enumerate(reader, start=2):
                if path_col is None:
                    yield Item(f"{csv_path}:{line}", text=row[TEXT_COLUMN])
                    continue
                value = (row[path_col] or "").strip()
                if not value:
                    yield Item(f"{csv_path}:{line}", error=f"empty `{path_col}` cell")
                    continue
                f = Path(value) if Path(value).is_absolute() else csv_path.parent / value
                yield Item(str(f), path=f) if f.is_file() else Item(str(f), error="not found")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        yield Item(str(csv_path), error=f"cannot read CSV: {err}")


def _read(item: Item) -> tuple[bytes | str | None, str | None]:
    """(payload, error) of one item."""
    if item.error is not None:
        return None, item.error
    if item.text is not None:
        return item.text, None
    try:
        return item.path.read_bytes(), None
    except OSError as err:
        return None, f"cannot read: {err.strerror or err}"


def predict_items(predictor: Predictor, items: Iterable[Item]) -> Iterator[dict]:
    """One row (TABLE_COLUMNS) per item, in order; ``id`` is the content id ingest would give it."""
    items = iter(items)
    while chunk := list(islice(items, predictor.batch_size)):
        read = [_read(item) for item in chunk]
        ok = [i for i, (_, err) in enumerate(read) if err is None]
        predicted = dict(zip(ok, predictor.predict([read[i][0] for i in ok])))
        for i, (item, (payload, err)) in enumerate(zip(chunk, read)):
            data = payload.encode() if isinstance(payload, str) else (payload or b"")
            row = {"id": content_id(data, item.source), "source": item.source}
            row.update(predicted.get(i) or {"predicted_class": None, "class_index": None, "probability": None,
                                            "error": err})
            yield row
