"""Exact and near duplicates are found and grouped; the leakage check sees pairs across splits."""

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from components.data.contract import DatasetWriter, content_id, read_table
from components.data.sources import RAW_IMAGE_SCHEMA, encode_png
from components.quality.cleaning import CleanOptions, clean_dataset
from components.quality.duplicates import (connected_groups, cross_split_leaks, image_embedding, near_pairs,
                                           signatures, text_key)


def _smooth(rng, size=32):
    """A photo-like image: low-frequency structure, so JPEG keeps it recognisable."""
    return np.asarray(Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC))


def _jpeg(pixels, quality=75):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _clean(tmp_path, rows, options, modality="image", n_classes=3):
    schema = RAW_IMAGE_SCHEMA if modality == "image" else None
    table = pa.table({"id": [content_id(str(p).encode() if not isinstance(p, bytes) else p, s) for p, _, s in rows],
                      "label": pa.array([l for _, l, _ in rows], pa.int64()),
                      modality: [p for p, _, _ in rows], "source": [s for _, _, s in rows]}, schema=schema)
    with DatasetWriter(tmp_path / "clean", classes=[str(k) for k in range(n_classes)]) as w:
        st = clean_dataset(iter(table.to_batches()), w, n_classes=n_classes, modality=modality, options=options)
        m = w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return st, m, read_table(tmp_path / "clean")


def test_planted_exact_and_near_image_copies_are_found_and_grouped(tmp_path):
    rng = np.random.default_rng(0)
    base = [_smooth(rng) for _ in range(6)]
    brighter = np.clip(base[1].astype(int) + 12, 0, 255).astype(np.uint8)
    rows = [(encode_png(b), k % 3, f"orig/{k}.png") for k, b in enumerate(base)]
    rows += [(encode_png(base[0]), 0, "copy/exact.png"),          # exact copy, same label
             (_jpeg(base[1]), 1, "copy/jpeg.jpg"),                 # near: re-encoded
             (encode_png(brighter), 1, "copy/bright.png"),         # near: brightness shift
             (_jpeg(base[2], 60), 0, "copy/jpeg-mislabeled.jpg")]  # near, disagrees on the label (2 vs 0)
    st, m, kept = _clean(tmp_path, rows, CleanOptions(image_size=(32, 32)))
    assert m["set_aside"] == {"duplicate": 1}
    assert st["metrics"]["clean/exact_duplicates"] == 1
    group = dict(zip(kept.column("source").to_pylist(), kept.column("group").to_pylist()))
    assert group["copy/jpeg.jpg"] == group["copy/bright.png"] == group["orig/1.png"]
    assert group["copy/jpeg-mislabeled.jpg"] == group["orig/2.png"]
    singletons = [group[f"orig/{k}.png"] for k in (0, 3, 4, 5)]
    assert len(set(singletons + [group["orig/1.png"], group["orig/2.png"]])) == 6  # distinct images stay apart
    assert st["metrics"]["clean/near_duplicate_groups"] == 2
    assert st["metrics"]["clean/near_duplicate_conflicts"] == 1
    (conflict,) = st["conflicts"]
    assert sorted(conflict["labels"]) == [0, 2]
    assert m["near_duplicates"]["distance"] == 0.05
    # the digits themselves are distinct handwriting: none of them is a near duplicate of another
    assert m["rows_in"] == m["rows"] + sum(m["set_aside"].values())


def test_distinct_digits_are_not_near_duplicates(digits_split):
    t = read_table(digits_split, columns=["image", "group", "id"])
    assert t.column("group").to_pylist() == t.column("id").to_pylist()
    _, vectors, _ = signatures(t.column("image"), "image", image_shape=[8, 8, 1])
    assert len(near_pairs(vectors, radius=0.05)) == 0


def test_near_duplicate_text_by_normalised_key(tmp_path):
    rows = [("The cat sat.", 0, "a"), ("the  CAT sat", 0, "b"), ("A dog ran!", 1, "c"), ("a dog ran", 0, "d"),
            ("  \x00 ", 1, "e"), ("The cat sat.", 0, "f")]
    st, m, kept = _clean(tmp_path, rows, CleanOptions(), modality="text", n_classes=2)
    assert m["set_aside"] == {"corrupt_payload": 1, "duplicate": 1}   # empty text; "f" exact copy of "a"
    group = dict(zip(kept.column("source").to_pylist(), kept.column("group").to_pylist()))
    group["a"] = group.get("a", group.get("f"))  # a and f are exact copies: one of them is kept
    assert group["a"] == group["b"] and group["c"] == group["d"] and group["a"] != group["c"]
    assert st["metrics"]["clean/near_duplicate_conflicts"] == 1
    assert text_key("Hello,   WORLD!") == text_key("hello world")
    assert dict(zip(kept.column("source").to_pylist(), kept.column("text").to_pylist()))["b"] == "the CAT sat"


def test_group_names_do_not_depend_on_row_order():
    ids = ["d", "b", "c", "a"]
    pairs = [(0, 1), (2, 3)]
    assert connected_groups(ids, pairs) == ["b", "b", "a", "a"]
    rev = list(reversed(ids))
    assert connected_groups(rev, [(3 - j, 3 - i) for i, j in pairs]) == ["a", "a", "b", "b"]


def test_leakage_check_counts_pairs_across_splits():
    rng = np.random.default_rng(1)
    imgs = [_smooth(rng, 16)[..., None] for _ in range(4)]
    near = np.clip(imgs[1].astype(int) + 3, 0, 255).astype(np.uint8)
    vecs = np.stack([image_embedding(i) for i in imgs + [near]])
    hashes = ["h0", "h1", "h2", "h0", "h4"]  # rows 0 and 3 exact; row 4 near row 1
    clean = cross_split_leaks(["train", "test", "val", "train", "test"], hashes=hashes, near_vectors=vecs,
                              near_distance=0.05)
    assert clean["exact_pairs"] == 0 and clean["near_pairs"] == 0
    leaky = cross_split_leaks(["train", "test", "val", "val", "train"], hashes=hashes, near_vectors=vecs,
                              near_distance=0.05)
    assert leaky["exact_pairs"] == 1 and leaky["near_pairs"] == 1
