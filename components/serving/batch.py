"""Predict files: PATH arguments (files, folders, CSV lists) -> one table row per input.

Inputs stream in batches of ``predictor.batch_size``, so a large folder is never held in
memory at once. Every input gets a row: a prediction, or an ``error`` saying why not (not
found, unreadable, empty, not an image, wrong number of values); one bad input never stops the others.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from trainwise.components.data.contract import content_id
from trainwise.components.data.sources.trees import NotRegularFile, read_regular_file
from trainwise.components.serving.predictor import PREDICTION_COLUMNS, Predictor
from trainwise.components.serving.preprocess import feature_names, payload_of

TABLE_COLUMNS = ["id", "source", *PREDICTION_COLUMNS]
NOT_REGULAR_ERROR = "not a regular file (FIFO, socket or device): not read"
# Column of a CSV list that names files (first one present wins).
PATH_COLUMNS = ("path", "source", "file", "image")


@dataclass(frozen=True)
class Item:
    source: str
    path: Path | None = None   # read the payload from this file
    value: object = None       # or take it as given (a text, a list of numbers, a row of features)
    error: str | None = None   # already known to be unusable


def iter_items(paths: Iterable[str | os.PathLike], *, spec: dict | None = None) -> Iterator[Item]:
    """Expand PATH arguments: a folder -> its files (recursively, sorted, hidden ones skipped);
    a ``.csv`` -> the files in its path column (relative to the CSV), or one input per row: its
    ``text`` / ``sequence`` cell, or for a tabular model the row's feature columns (``spec``
    names them); any other file -> itself (an image, a .txt, a file of numbers)."""
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") for part in rel) or f.is_dir():
                    continue
                # a FIFO, socket or device (or a link to one) gets a row saying so, unread
                yield Item(str(f), path=f) if f.is_file() else _unreadable(f)
        elif p.suffix.lower() == ".csv" and p.is_file():
            yield from _csv_items(p, spec)
        elif p.exists():
            yield Item(str(p), path=p)
        else:
            yield Item(str(p), error="not found")


def _csv_items(csv_path: Path, spec: dict | None) -> Iterator[Item]:
    payload = payload_of(spec) if spec else "text"
    value_cols = [payload] if payload in ("text", "sequence", "features") else ["text"]
    features = feature_names(spec) if spec and payload == "features" else []
    try:
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            by_features = bool(features) and all(c in columns for c in features)
            value_col = next((c for c in value_cols if c in columns), None)
            path_col = next((c for c in PATH_COLUMNS if c in columns), None)
            if not (by_features or value_col or path_col):
                wanted = [*PATH_COLUMNS, *value_cols] + ([f"the feature columns {features}"] if features else [])
                yield Item(str(csv_path), error=f"CSV has none of the columns {' / '.join(wanted)} "
                                                 f"(columns: {columns})")
                return
            for line, row in enumerate(reader, start=2):
                if by_features:
                    yield Item(f"{csv_path}:{line}", value={k: _number(row[k]) for k in features})
                    continue
                if value_col is not None:
                    yield Item(f"{csv_path}:{line}", value=row[value_col])
                    continue
                value = (row[path_col] or "").strip()
                if not value:
                    yield Item(f"{csv_path}:{line}", error=f"empty `{path_col}` cell")
                    continue
                f = Path(value) if Path(value).is_absolute() else csv_path.parent / value
                yield Item(str(f), path=f) if f.is_file() else _unreadable(f)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        yield Item(str(csv_path), error=f"cannot read CSV: {err}")


def _unreadable(f: Path) -> Item:
    """A listed path that is not a regular file: a row saying what it is, never read."""
    return Item(str(f), error=NOT_REGULAR_ERROR if f.exists() else "not found")


def _number(cell: str | None) -> float | str | None:
    """A CSV cell as a number when it is one; otherwise as given, for the predictor to report."""
    if cell is None or not cell.strip():
        return float("nan")
    try:
        return float(cell)
    except ValueError:
        return cell


def _read(item: Item) -> tuple[bytes | str | None, str | None]:
    """(payload, error) of one item."""
    if item.error is not None:
        return None, item.error
    if item.value is not None:
        return item.value, None
    try:
        return read_regular_file(item.path), None
    except NotRegularFile:
        return None, NOT_REGULAR_ERROR
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
            data = _content(payload)
            row = {"id": content_id(data, item.source), "source": item.source}
            row.update(predicted.get(i) or {"predicted_class": None, "class_index": None, "probability": None,
                                            "error": err})
            yield row


def _content(payload) -> bytes:
    """The bytes an input's content id is derived from (what ingest would hash for it)."""
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, dict):
        return json.dumps(payload, sort_keys=True, default=str).encode()
    return payload or b""
