"""Shared fixtures: small real datasets written through the real stage components."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from components.data.contract import DatasetWriter, SetAside, iter_batches
from components.data.sources import digits_source
from components.data.splitting import assign_splits
from components.quality.cleaning import CleanOptions, clean_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> Path:
    """The digits demo set taken through ingest -> clean -> split components (no DVC, no MLflow)."""
    root = tmp_path_factory.mktemp("digits")
    src = digits_source()
    with DatasetWriter(root / "ingest", classes=src.classes) as w:
        for b in src.batches:
            w.write(b)
        raw = w.close(rows_in=w.rows, set_aside=SetAside())
    with DatasetWriter(root / "clean", classes=raw["classes"]) as w:
        stats = clean_images(iter_batches(root / "ingest"), w, n_classes=10, options=CleanOptions())
        w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra={"image_shape": stats["image_shape"]})
    with DatasetWriter(root / "split", classes=raw["classes"], metadata={"image_shape": stats["image_shape"]}) as w:
        for batch in iter_batches(root / "clean"):
            splits = assign_splits(batch.column("id").to_pylist(),
                                   fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
            w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits)))
        w.close(rows_in=w.rows, set_aside=SetAside())
    return root / "split"


@pytest.fixture(scope="module")
def ray_session():
    """One in-process Ray per test module that needs it (each start costs ~10 s here)."""
    import ray

    from components.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
