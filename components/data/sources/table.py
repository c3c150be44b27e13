"""The ``table`` source: a CSV (or .tsv, optionally .gz) or Parquet file with a label column and
either one text column (text classification) or numeric feature columns (tabular).

Read in two streaming passes over record batches: the label column alone first (the class
names must be known, and ordered, before the first row is written), then the payload
columns. Rows with no label are set aside (``missing_label``); a feature column that is not
numeric in every row stops ingest with the file, column and value named.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from components.data.contract import SetAside, content_id
from components.data.sources.base import PAYLOAD_TYPES, Source, SourceError, Tally, order_labels, raw_schema
from components.data.sources.trees import fetch_to_temp, is_url

MISSING_LABEL = "missing_label"
EMPTY_TEXT = "empty_text"
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


class _Reader:
    """Batches of chosen columns from a CSV or Parquet file, with one error vocabulary."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        low = name.lower()
        if low.endswith(PARQUET_SUFFIXES):
            self.kind = "parquet"
            try:
                self.columns = pq.ParquetFile(path).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as err:
                raise SourceError(f"ingest.path: {name} is not a readable Parquet file ({err})") from None
        elif low.endswith(CSV_SUFFIXES):
            self.kind = "csv"
            self.delimiter = "\t" if ".tsv" in low else ","
            try:
                self.columns = self._csv(None).schema.names
            except (pa.ArrowInvalid, OSError) as err:
                raise SourceError(f"ingest.path: {name} is not a readable CSV file ({err})") from None
        else:
            raise SourceError(f"ingest.path: {name}: a table must be .csv, .tsv (optionally .gz), "
                              f".parquet or .pq")

    def _csv(self, types: dict | None, include: list[str] | None = None):
        convert = pcsv.ConvertOptions(column_types=types or {}, include_columns=include or [],
                                      strings_can_be_null=True)
        return pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=1 << 22),
                             parse_options=pcsv.ParseOptions(delimiter=self.delimiter), convert_options=convert)

    def batches(self, columns: list[str], types: dict, batch_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            if self.kind == "parquet":
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows, columns=columns)
            else:
                for batch in self._csv(types, columns):
                    yield batch
        except pa.ArrowInvalid as err:
            msg = str(err)
            m = re.search(r"column #(\d+)", msg)
            # Arrow numbers CSV columns as they are in the file
            column = f" (column {self.columns[int(m.group(1))]!r})" if m and int(m.group(1)) < len(self.columns) else ""
            raise SourceError(f"ingest.path: {self.name}{column}: {msg}; every value of a feature column "
                              f"must be a number (or empty); fix the file or leave the column out of "
                              f"ingest.feature_columns") from None


def _label_name(value) -> str | None:
    """A label value as a class name; None for a missing one (null, NaN, empty)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def table_source(path: str, *, label_column: str, text_column: str | None = None,
                 feature_columns: list[str] | None = None, batch_rows: int = 8192) -> Source:
    cleanup: Callable[[], None] = lambda: None
    name = path
    if is_url(path):
        path, cleanup = fetch_to_temp(path)
    elif not Path(path).exists():
        raise FileNotFoundError(f"ingest.path: {path} does not exist; point it at a .csv or .parquet file")
    elif Path(path).is_dir():
        raise SourceError(f"ingest.path: {path} is a folder; the table source reads one .csv or .parquet file")
    elif not Path(path).is_file():  # a FIFO or device (or a link to one): reading it could hang
        raise SourceError(f"ingest.path: {path} is not a regular file (a FIFO, socket or device); "
                          f"point it at a .csv or .parquet file")
    try:
        reader = _Reader(path, name)
        if label_column not in reader.columns:
            raise SourceError(f"ingest.path: {name} has no label column {label_column!r} "
                              f"(ingest.label_column); its columns are {reader.columns}")
        if text_column is not None and feature_columns:
            raise SourceError("ingest: set either ingest.text_column (text) or ingest.feature_columns "
                              "(tabular), not both")
        if text_column is not None:
            if text_column not in reader.columns:
                raise SourceError(f"ingest.path: {name} has no text column {text_column!r} "
                                  f"(ingest.text_column); its columns are {reader.columns}")
            payload, features = "text", []
        else:
            payload = "features"
            features = list(feature_columns) if feature_columns else [
                c for c in reader.columns if c != label_column]
            missing = [c for c in features if c not in reader.columns]
            if missing:
                raise SourceError(f"ingest.path: {name} has no column(s) {missing} (ingest.feature_columns); "
                                  f"its columns are {reader.columns}")
            if not features:
                raise SourceError(f"ingest.path: {name} has no feature columns besides the label")
            if reader.kind == "parquet":
                schema = pq.ParquetFile(path).schema_arrow
                bad = {c: str(schema.field(c).type) for c in features
                       if not (pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type)
                               or pa.types.is_boolean(schema.field(c).type) or pa.types.is_decimal(schema.field(c).type))}
                if bad:
                    raise SourceError(f"ingest.path: {name}: feature column(s) are not numeric: {bad}; leave them "
                                      f"out of ingest.feature_columns (or use ingest.text_column for text)")
        label_types = {label_column: pa.string()}
        classes = order_labels(
            n for batch in reader.batches([label_column], label_types, batch_rows)
            for n in map(_label_name, batch.column(0).to_pylist()) if n is not None)
        if len(classes) < 2:
            raise SourceError(f"ingest.path: {name}: label column {label_column!r} holds {len(classes)} "
                              f"class(es) {classes}; a classifier needs at least two")
    except BaseException:
        cleanup()
        raise

    index = {c: k for k, c in enumerate(classes)}
    aside, tally = SetAside(), Tally()
    base = Path(name).name
    columns = [label_column, text_column] if payload == "text" else [label_column, *features]
    types = {label_column: pa.string(), **({text_column: pa.string()} if payload == "text" else
                                           {c: pa.float64() for c in features})}
    schema = raw_schema(payload)

    def gen() -> Iterator[pa.Table]:
        row = 0
        try:
            for batch in reader.batches(columns, types, batch_rows):
                n = batch.num_rows
                sources = [f"{base}:{row + i + 1}" for i in range(n)]
                row += n
                tally.seen += n
                labels = [_label_name(v) for v in batch.column(0).to_pylist()]
                if payload == "text":
                    values = batch.column(1).to_pylist()
                    blobs = [v.encode() if v is not None else b"" for v in values]
                    cells = pa.array(values, pa.string())
                else:
                    matrix = np.column_stack([
                        pc.cast(batch.column(j), pa.float64()).to_numpy(zero_copy_only=False)
                        for j in range(1, batch.num_columns)]).astype(np.float32)
                    blobs = [r.tobytes() for r in matrix]
                    cells = pa.ListArray.from_arrays(
                        pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)),
                        pa.array(matrix.reshape(-1), pa.float32()))
                keep = []
                for i, (label, blob, src) in enumerate(zip(labels, blobs, sources)):
                    if label is None:
                        aside.add(content_id(blob, src), src, MISSING_LABEL)
                    elif payload == "text" and not blob.strip():
                        aside.add(content_id(blob, src), src, EMPTY_TEXT)
                    else:
                        keep.append(i)
                if not keep:
                    continue
                take = pa.array(keep, pa.int64())
                yield pa.table({
                    "id": [content_id(blobs[i], sources[i]) for i in keep],
                    "label": pa.array([index[labels[i]] for i in keep], pa.int64()),
                    payload: cells.take(take).cast(PAYLOAD_TYPES[payload]),
                    "source": [sources[i] for i in keep],
                }, schema=schema)
        finally:
            cleanup()

    extra = {"path": name, "label_column": label_column}
    if payload == "features":
        extra["feature_names"] = features
    else:
        extra["text_column"] = text_column
    return Source(classes=classes, batches=gen(), payload=payload, set_aside=aside, tally=tally, extra=extra)
