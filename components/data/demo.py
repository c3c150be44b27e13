"""The demo dataset taken through the real ingest -> clean -> split components, without DVC or
MLflow: for tests and benchmarks that need a realistic split in seconds."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from components.data.contract import DatasetWriter, SetAside, iter_batches
from components.data.sources import digits_source
from components.data.splitting import assign_splits
from components.quality.cleaning import CleanOptions, clean_images


def write_digits_split(root: str | Path, *, fractions: dict[str, float] | None = None, seed: int = 0) -> Path:
    """Write ``root/{ingest,clean,split}``; returns the split dataset directory."""
    root = Path(root)
    fractions = fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    src = digits_source()
    with DatasetWriter(root / "ingest", classes=src.classes) as w:
        for b in src.batches:
            w.write(b)
        raw = w.close(rows_in=w.rows, set_aside=SetAside())
    with DatasetWriter(root / "clean", classes=raw["classes"]) as w:
        stats = clean_images(iter_batches(root / "ingest"), w, n_classes=len(raw["classes"]), options=CleanOptions())
        w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra={"image_shape": stats["image_shape"]})
    with DatasetWriter(root / "split", classes=raw["classes"], metadata={"image_shape": stats["image_shape"]}) as w:
        for batch in iter_batches(root / "clean"):
            splits = assign_splits(batch.column("id").to_pylist(), fractions=fractions, seed=seed)
            w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits)))
        w.close(rows_in=w.rows, set_aside=SetAside())
    return root / "split"
