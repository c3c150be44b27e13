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

from trainwise.components.data.contract import SetAside, content_id
from trainwise.components.data.sources.base import (GIVEN_SPLITS, PAYLOAD_TYPES, Source, SourceError, Tally, order_labels,
                                          raw_schema)
from trainwise.components.data.sources.trees import fetch_to_temp, is_url

MISSING_LABEL = "missing_label"
UNKNOWN_SPLIT = "unknown_split"  # ingest.split_column holds a value that names no split
EMPTY_TEXT = "empty_text"
NOT_UTF8 = "not_utf8"             # the text-folder source's reason for the same problem
ROW_TOO_LARGE = "row_too_large"   # a text cell over ingest.max_file_mb, the limit a text file has
# Label cells that mean "no label": pyarrow's CSV reader already reads "", "NA", "NULL", "NaN", ...
# as null, but not "None" (what str(None) writes), and Parquet strings are taken as they are.
MISSING_WORDS = frozenset({"none", "null", "nan"})
# The CSV reader parses blocks of this many bytes; a row longer than a block cannot be parsed, so
# on such a row the block grows (up to the row limit) and reading resumes after the rows already read.
CSV_BLOCK = 1 << 22
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

    def _csv(self, types: dict | None, include: list[str] | None = None, *, block: int = CSV_BLOCK,
             skip: int = 0):
        convert = pcsv.ConvertOptions(column_types=types or {}, include_columns=include or [],
                                      strings_can_be_null=True)
        return pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=block, skip_rows_after_names=skip),
                             parse_options=pcsv.ParseOptions(delimiter=self.delimiter), convert_options=convert)

    def batches(self, columns: list[str], types: dict, batch_rows: int, *, max_row_bytes: int
                ) -> Iterator[pa.RecordBatch]:
        if self.kind == "parquet":
            try:
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows, columns=columns)
            except pa.ArrowInvalid as err:
                raise SourceError(f"ingest.path: {self.name}: {err}") from None
            return
        done, block = 0, CSV_BLOCK
        while True:
            try:
                for batch in self._csv(types, columns, block=block, skip=done):
                    done += batch.num_rows
                    yield batch
                return
            except pa.ArrowInvalid as err:
                if "straddl" not in str(err):  # "straddling object straddles two block boundaries"
                    raise SourceError(self._explain(err, types)) from None
                if block > 2 * max_row_bytes:
                    raise SourceError(
                        f"ingest.path: {self.name}: a row at or after row {done + 1} is far longer than "
                        f"ingest.max_file_mb ({max_row_bytes >> 20} MiB), so the file cannot be read past it; "
                        f"shorten or remove that row, or raise ingest.max_file_mb") from None
                # room for any row up to twice the limit: those over it are then set aside by name
                block = min(block * 4, 2 * max_row_bytes + (1 << 20))

    def _explain(self, err: pa.ArrowInvalid, types: dict) -> str:
        msg = str(err)
        m = re.search(r"column #(\d+)", msg)
        # Arrow numbers CSV columns as they are in the file
        column = self.columns[int(m.group(1))] if m and int(m.group(1)) < len(self.columns) else None
        where = f"ingest.path: {self.name}" + (f" (column {column!r})" if column else "")
        if column is not None and pa.types.is_floating(types.get(column, pa.null())):
            return (f"{where}: {msg}; every value of a feature column must be a number (or empty); fix the "
                    f"file or leave the column out of ingest.feature_columns")
        return f"{where}: {msg}; fix the file (is it a CSV with a header row?)"


def _label_name(value) -> str | None:
    """A label value as a class name; None for a missing one (null, NaN, empty, or a word that
    means missing: MISSING_WORDS). Bytes (CSV cells are read as bytes) raise UnicodeDecodeError
    when they are not UTF-8."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text if text and text.lower() not in MISSING_WORDS else None


def _label_is_utf8(value) -> bool:
    try:
        _label_name(value)
    except UnicodeDecodeError:
        return False
    return True


def _class_names(values) -> Iterator[str]:
    for value in values:
        try:
            name = _label_name(value)
        except UnicodeDecodeError:  # set aside when its row is read
            continue
        if name is not None:
            yield name


def table_source(path: str, *, label_column: str, text_column: str | None = None,
                 feature_columns: list[str] | None = None, max_file_bytes: int, batch_rows: int = 8192,
                 split_column: str | None = None) -> Source:
    """Rows of a CSV/Parquet table. Label and text cells are read as bytes and decoded row by
    row, so one row that is not UTF-8 is set aside (``not_utf8``) instead of failing the file;
    a text cell over ``max_file_bytes`` (ingest.max_file_mb, the limit a text file has) is set
    aside ``row_too_large``."""
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
        if split_column is not None and split_column not in reader.columns:
            raise SourceError(f"ingest.path: {name} has no split column {split_column!r} "
                              f"(ingest.split_column); its columns are {reader.columns}")
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
                c for c in reader.columns if c not in (label_column, split_column)]
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
        label_types = {label_column: pa.binary()}  # UTF-8 is checked row by row
        classes = order_labels(
            n for batch in reader.batches([label_column], label_types, batch_rows, max_row_bytes=max_file_bytes)
            for n in _class_names(batch.column(0).to_pylist()))
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
    types = {label_column: pa.binary(), **({text_column: pa.binary()} if payload == "text" else
                                           {c: pa.float64() for c in features})}
    if split_column is not None:  # last, so the payload columns keep their positions
        columns, types = [*columns, split_column], {**types, split_column: pa.string()}
    schema = raw_schema(payload, given_split=split_column is not None)

    def gen() -> Iterator[pa.Table]:
        row = 0
        try:
            for batch in reader.batches(columns, types, batch_rows, max_row_bytes=max_file_bytes):
                n = batch.num_rows
                sources = [f"{base}:{row + i + 1}" for i in range(n)]
                row += n
                tally.seen += n
                raw_labels = batch.column(0).to_pylist()
                texts: list[str | None] = []
                if payload == "text":
                    # CSV cells come as bytes (read as binary), Parquet strings as str
                    blobs = [v.encode() if isinstance(v, str) else v or b"" for v in batch.column(1).to_pylist()]
                else:
                    matrix = np.column_stack([
                        pc.cast(batch.column(j), pa.float64()).to_numpy(zero_copy_only=False)
                        for j in range(1, 1 + len(features))]).astype(np.float32)
                    blobs = [r.tobytes() for r in matrix]
                    cells = pa.ListArray.from_arrays(
                        pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)),
                        pa.array(matrix.reshape(-1), pa.float32()))
                row_splits = ([GIVEN_SPLITS.get(str(v).strip().lower()) if v is not None else None
                          for v in batch.column(batch.schema.get_field_index(split_column)).to_pylist()]
                         if split_column is not None else [None] * n)
                keep, labels, splits = [], [], []
                for i, (raw, blob, src) in enumerate(zip(raw_labels, blobs, sources)):
                    try:
                        label = _label_name(raw)
                        text = blob.decode("utf-8") if payload == "text" and len(blob) <= max_file_bytes else None
                    except UnicodeDecodeError as err:
                        aside.add(content_id(blob, src), src, NOT_UTF8, error=f"byte {err.start}: {err.reason}",
                                  column=text_column if _label_is_utf8(raw) else label_column)
                        continue
                    if label is None:
                        given = raw.decode("utf-8").strip() if isinstance(raw, bytes) else raw
                        # a word meaning "missing" (None, null): say which, it was not an empty cell
                        if isinstance(given, str) and given:
                            aside.add(content_id(blob, src), src, MISSING_LABEL, given=given)
                            words = extra.setdefault("labels_read_as_missing", {})  # in the manifest
                            words[given] = words.get(given, 0) + 1
                        else:
                            aside.add(content_id(blob, src), src, MISSING_LABEL)
                    elif payload == "text" and len(blob) > max_file_bytes:
                        aside.add(content_id(blob, src), src, ROW_TOO_LARGE, bytes=len(blob),
                                  max_bytes=max_file_bytes)
                    elif payload == "text" and not text.strip():
                        aside.add(content_id(blob, src), src, EMPTY_TEXT)
                    elif split_column is not None and row_splits[i] is None:
                        value = batch.column(batch.schema.get_field_index(split_column))[i].as_py()
                        aside.add(content_id(blob, src), src, UNKNOWN_SPLIT, column=split_column,
                                  value=None if value is None else str(value)[:100])
                    else:
                        keep.append(i)
                        labels.append(label)
                        texts.append(text)
                        splits.append(row_splits[i])
                if not keep:
                    continue
                if payload == "text":
                    cells, kept_cells = None, pa.array(texts, pa.string())
                else:
                    kept_cells = cells.take(pa.array(keep, pa.int64()))
                yield pa.table({
                    "id": [content_id(blobs[i], sources[i]) for i in keep],
                    "label": pa.array([index[name] for name in labels], pa.int64()),
                    payload: kept_cells.cast(PAYLOAD_TYPES[payload]),
                    "source": [sources[i] for i in keep],
                    **({"given_split": pa.array(splits, pa.string())} if split_column is not None else {}),
                }, schema=schema)
        finally:
            cleanup()

    extra = {"path": name, "label_column": label_column, **({"split_column": split_column} if split_column else {})}
    if payload == "features":
        extra["feature_names"] = features
    else:
        extra["text_column"] = text_column
    return Source(classes=classes, batches=gen(), payload=payload, set_aside=aside, tally=tally, extra=extra)
