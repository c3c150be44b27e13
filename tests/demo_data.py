"""Test and benchmark fixtures: the demo dataset taken through the real ingest -> clean -> split ->
audit components, without DVC or MLflow, for tests and benchmarks that need a realistic split in
seconds. (It lives with the tests: a fixture in components/ would be a component importing the
quality layer above it.) The audit here has label-issue search off (no model, no Ray): every row
is kept with ``label_issue`` false, which is what the stages after it read (``data/audit``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import DatasetWriter, SetAside, content_id, iter_batches, read_manifest
from trainwise.components.data.sources import digits_source
from trainwise.components.data.splitting import assign_splits, split_keys
from trainwise.components.quality.audit import NoiseOptions, audit_dataset
from trainwise.components.quality.cleaning import CleanOptions, clean_dataset
from trainwise.pipelines.config import CleanParams


def clean_options(**changes) -> CleanOptions:
    """CleanOptions with params.yaml's defaults (the schema's: the one place they live), changed
    where a test says so."""
    p = CleanParams().model_dump(exclude={"label_issues", "noise", "max_image_side"})
    # `auto` is decided from the images by the clean stage (components/data/image_stats.py): digits -> 8x8 grey
    p = {**p, "image_size": (8, 8) if p["image_size"] == "auto" else tuple(p["image_size"]),
         "channels": 1 if p["channels"] == "auto" else p["channels"]}
    return CleanOptions(**{**p, **changes})


def write_audit(split_dir: str | Path, out_dir: str | Path) -> Path:
    """``out_dir`` = the split dataset as the audit stage writes it with label-issue search off."""
    m = read_manifest(split_dir)
    carried = {k: m[k] for k in ("image_shape", "sequence_length", "feature_names", "source") if k in m}
    with DatasetWriter(out_dir, classes=m["classes"], metadata=carried) as w:
        st = audit_dataset(iter_batches(split_dir), lambda: iter_batches(split_dir), w, modality=m["payload"],
                           classes=m["classes"], image_shape=m.get("image_shape"), options=None,
                           noise=NoiseOptions(rate=0.0, seed=0), embeddings=None, use_ray=False)
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return Path(out_dir)


def write_digits_split(root: str | Path, *, fractions: dict[str, float] | None = None, seed: int = 0) -> Path:
    """Write ``root/{ingest,clean,split,audit}``; returns the split dataset directory."""
    root = Path(root)
    fractions = fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    src = digits_source()
    with DatasetWriter(root / "ingest", classes=src.classes) as w:
        for b in src.batches:
            w.write(b)
        raw = w.close(rows_in=w.rows, set_aside=SetAside())
    with DatasetWriter(root / "clean", classes=raw["classes"], base=root / "ingest") as w:   # as the clean stage writes
        stats = clean_dataset(iter_batches(root / "ingest"), w, n_classes=len(raw["classes"]), modality="image",
                              options=clean_options())
        w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
    with DatasetWriter(root / "split", classes=raw["classes"],
                       metadata={"image_shape": stats["extra"]["image_shape"]}) as w:
        for batch in iter_batches(root / "clean"):
            splits = assign_splits(split_keys(batch), fractions=fractions, seed=seed)
            w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits)))
        w.close(rows_in=w.rows, set_aside=SetAside())
    write_audit(root / "split", root / "audit")
    return root / "split"


def _synthetic_rows(modality: str, *, n_per_class: int, n_classes: int, rng) -> tuple[list, list[int], dict]:
    """Small learnable rows of one non-image modality in its *cleaned* form (see docs/architecture.md)."""
    labels = [k for k in range(n_classes) for _ in range(n_per_class)]
    if modality == "text":
        words = [["alpha", "apple", "amber"], ["beta", "banana", "blue"], ["gamma", "grape", "green"],
                 ["delta", "date", "dune"]]
        filler = ["the", "a", "of", "and", "with", "some"]
        payload = [" ".join(rng.choice(words[k % len(words)] * 2 + filler, size=8).tolist()) for k in labels]
        return payload, labels, {}
    if modality == "sequence":
        length = 40
        t = np.linspace(0, 1, length, dtype=np.float32)
        payload = [np.sin(2 * np.pi * (k + 1) * t + rng.uniform(0, 6.28)).astype(np.float32)
                   + rng.normal(0, 0.3, length).astype(np.float32) for k in labels]
        return payload, labels, {"sequence_length": length}
    if modality == "features":
        n_features = 6
        centers = rng.normal(0, 3, size=(n_classes, n_features))
        payload = [(centers[k] + rng.normal(0, 1, n_features)).astype(np.float32) for k in labels]
        return payload, labels, {"feature_names": [f"f{i}" for i in range(n_features)]}
    raise ValueError(f"unknown modality {modality!r}: text | sequence | features (images: write_digits_split)")


def write_synthetic_split(root: str | Path, modality: str, *, n_per_class: int = 60, n_classes: int = 3,
                          fractions: dict[str, float] | None = None, seed: int = 0) -> Path:
    """A split dataset (``root/split``, and ``root/audit`` as the audit stage writes it) of text /
    sequence / features rows, as clean and split would write them: the fixture for tests of
    modalities that have no demo source of their own.

    Cleaned payload columns: ``text`` string; ``sequence`` fixed_size_list<float32>[L] with
    manifest ``sequence_length``; ``features`` fixed_size_list<float32>[F] with manifest
    ``feature_names``.
    """
    rng = np.random.default_rng(seed)
    payload, labels, extra = _synthetic_rows(modality, n_per_class=n_per_class, n_classes=n_classes, rng=rng)
    if modality == "text":
        column = pa.array(payload, pa.string())
    else:
        width = len(payload[0])
        column = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(payload), pa.float32()), width)
    ids = [content_id(f"{modality}:{i}".encode(), "synthetic") for i in range(len(labels))]
    fractions = fractions or {"train": 0.7, "val": 0.15, "test": 0.15}
    table = pa.table({"id": ids, "label": pa.array(labels, pa.int64()), modality: column,
                      "source": [f"synthetic/{i}" for i in range(len(labels))],
                      "split": assign_splits(ids, fractions=fractions, seed=seed)})
    classes = [f"class_{k}" for k in range(n_classes)]
    with DatasetWriter(Path(root) / "split", classes=classes, metadata=extra) as w:
        w.write(table)
        w.close(rows_in=w.rows, set_aside=SetAside())
    write_audit(Path(root) / "split", Path(root) / "audit")
    return Path(root) / "split"
