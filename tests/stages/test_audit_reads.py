"""The audit stage reads only what it uses: with the embed stage's vectors its first pass takes ids,
labels, splits and sources, never the payload (photos' pixels joined from data/clean), so its
reading does not grow with the payload's size (issue 29: split and audit at the speed of a script)."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from trainwise.components.data.contract import DatasetWriter, SetAside, read_manifest
from trainwise.components.embedding.store import write_embeddings
from trainwise.pipelines.stage import run_stage
from tests.reads import spy_reads

REPO = Path(__file__).resolve().parents[2]
H = W = 16
ROWS = 60


def _project(tmp: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    params = yaml.safe_load((tmp / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    params["clean"]["label_issues"]["enabled"] = True
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    ids = [f"r{i:03d}" for i in range(ROWS)]
    labels = np.arange(ROWS) % 2
    pixels = rng.integers(0, 256, (ROWS, H * W * 3), dtype=np.uint8)
    clean, split = tmp / "data" / "clean", tmp / "data" / "split"
    with DatasetWriter(clean, classes=["a", "b"], metadata={"image_shape": [H, W, 3]}) as w:
        w.write(pa.table({"id": ids, "label": labels,
                          "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), H * W * 3),
                          "source": [f"{i}.jpg" for i in ids], "group": ids}))
        w.close(rows_in=ROWS, set_aside=SetAside())
    splits = np.array(["train", "train", "train", "val", "test"])[np.arange(ROWS) % 5]
    with DatasetWriter(split, classes=["a", "b"], base=clean, replaces=("group",),
                       metadata={"image_shape": [H, W, 3]}) as w:
        w.write(pa.table({"id": ids, "label": labels, "group": ids, "split": splits.tolist()}))
        w.close(rows_in=ROWS, set_aside=SetAside())
    emb = rng.normal(size=(ROWS, 8)).astype(np.float32) + labels[:, None]
    write_embeddings(tmp / "data" / "embed", ids=ids, embeddings=emb, manifest={"backbone": "test", "dim": 8})


@pytest.mark.slow  # ~5 CPU-s, the stage's imports; 25 s wall on a busy machine
def test_audit_with_embeddings_never_reads_the_payload(tmp_path, monkeypatch):
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    reads = spy_reads(monkeypatch)
    from trainwise.pipelines import audit

    run_stage(audit.main, exit_process=False)
    assert read_manifest(tmp_path / "data" / "audit")["rows"] == ROWS
    assert reads, "the spy saw no reads"
    payload_reads = [c for c in reads if c is None or "image" in c]
    assert not payload_reads, f"the audit read the payload: {reads}"
