"""Exact and near duplicates are found and grouped; the leakage check sees pairs across splits."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from trainwise.components.data.contract import DatasetWriter, SetAside, content_id, read_table
from trainwise.components.data.sources import RAW_IMAGE_SCHEMA, encode_png
from trainwise.components.quality.cleaning import clean_dataset
from trainwise.components.quality.duplicates import (NearDuplicateIndex, cross_split_leaks, group_names, image_embedding,
                                           near_pairs, reduce_embedding, signatures, text_key)
from tests.demo_data import clean_options


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
    st, m, kept = _clean(tmp_path, rows, clean_options(image_size=(32, 32)))
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
    st, m, kept = _clean(tmp_path, rows, clean_options(), modality="text", n_classes=2)
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
    assert group_names(ids, pairs) == {0: "b", 1: "b", 2: "a", 3: "a"}
    rev = list(reversed(ids))
    assert group_names(rev, [(3 - j, 3 - i) for i, j in pairs]) == {0: "a", 1: "a", 2: "b", 3: "b"}


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


# -- the sub-quadratic search (NearDuplicateIndex) and the pairs clean hands to split ----------------

def _planted(n, n_copies, seed=0):
    """n unit embeddings of smooth images with ``n_copies`` near copies (+-3 pixel noise) among them."""
    rng = np.random.default_rng(seed)
    imgs = [_smooth(rng, 16)[..., None] for _ in range(n - n_copies)]
    src = rng.choice(len(imgs), n_copies, replace=False)
    imgs += [np.clip(imgs[k].astype(int) + rng.integers(-3, 4, imgs[k].shape), 0, 255).astype(np.uint8) for k in src]
    return np.stack([image_embedding(i) for i in imgs])


def _brute_force(vectors, radius):
    """The search before the index: every pair's distance (the reference answer)."""
    d = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    i, j = np.nonzero(np.triu(d <= radius, k=1))
    return {(int(a), int(b)) for a, b in zip(i, j)}


def test_index_finds_exactly_the_brute_force_pairs_in_bounded_blocks():
    vecs = _planted(600, 40)
    for radius in (0.05, 1.0):  # 1.0 also reaches distinct images: ~300 candidates the full check rejects
        expected = _brute_force(vecs, radius)
        # tiny blocks: the answer must not depend on how the queries and checks are cut up
        with NearDuplicateIndex(radius=radius, query_rows=97, check_pairs=13) as index:
            for start in range(0, len(vecs), 250):       # added in batches, as clean reads them
                index.add(vecs[start:start + 250])
            pairs, dist = index.pairs()
        assert {tuple(p) for p in pairs.tolist()} == expected
        assert np.allclose(dist, np.linalg.norm(vecs[pairs[:, 0]] - vecs[pairs[:, 1]], axis=1), atol=1e-5)
    assert len(_brute_force(vecs, 0.05)) >= 40 and len(_brute_force(vecs, 1.0)) > 5 * len(_brute_force(vecs, 0.05))
    assert {tuple(p) for p in near_pairs(vecs, radius=0.05).tolist()} == _brute_force(vecs, 0.05)


def test_index_leaves_out_rows_set_aside_and_renumbers_the_kept():
    vecs = _planted(200, 20)
    keep = np.ones(len(vecs), bool)
    keep[::3] = False
    with NearDuplicateIndex(radius=0.05) as index:
        index.add(vecs)
        pairs, _ = index.pairs(keep=keep)
    assert {tuple(p) for p in pairs.tolist()} == _brute_force(vecs[keep], 0.05)


def test_projection_never_lengthens_a_distance():
    # why the 36-number search misses nothing: an orthonormal projection is a contraction
    vecs = _planted(300, 0, seed=3)
    a, b = vecs[:150], vecs[150:]
    assert np.all(np.linalg.norm(reduce_embedding(a) - reduce_embedding(b), axis=1)
                  <= np.linalg.norm(a - b, axis=1) + 1e-6)


@pytest.mark.slow  # runs the split stage three times (MLflow on SQLite)
def test_split_reads_the_near_pairs_clean_found_and_reports_pairs_across_splits(tmp_path):
    """Split does not search again: it counts clean's near pairs whose rows landed apart. With clean's
    group column, none do; with the groups lost (rows split by id) the planted copies leak."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from trainwise.components.quality.duplicates import NEAR_PAIRS_FILE, write_near_pairs
    from tests.conftest import REPO

    rng = np.random.default_rng(7)
    base = [_smooth(rng) for _ in range(60)]
    rows = [(encode_png(b), k % 3, f"orig/{k}.png") for k, b in enumerate(base)]
    rows += [(_jpeg(base[k]), k % 3, f"copy/{k}.jpg") for k in range(30)]  # 30 near copies
    st, m, kept = _clean(tmp_path, rows, clean_options(image_size=(32, 32)))
    assert len(st["near_pairs"]) >= 30
    write_near_pairs(tmp_path / "clean", st["near_pairs"])
    # split also reads embed (no vectors here: grouping by clean's groups and pixels) and ingest (no given split)
    from trainwise.components.embedding.store import write_no_backbone

    write_no_backbone(tmp_path / "embed", note="test")
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "manifest.json").write_text((tmp_path / "clean" / "manifest.json").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"paths": {"ingest": "ingest", "clean": "clean", "embed": "embed", "split": "split"},
         "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)

    def split():
        proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.split"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / "split" / "manifest.json").read_text())["leakage"]

    assert split()["near_pairs"] == 0
    # the same rows without their group column: split falls back to the id and the copies leak
    pairs = (tmp_path / "clean" / NEAR_PAIRS_FILE).read_bytes()
    man = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    with DatasetWriter(tmp_path / "clean", classes=man["classes"]) as w:
        w.write(kept.drop_columns(["group"]))
        w.close(rows_in=man["rows"], set_aside=SetAside(),
                extra={k: man[k] for k in ("image_shape", "near_duplicates")})
    (tmp_path / "clean" / NEAR_PAIRS_FILE).write_bytes(pairs)
    leaks = split()
    assert leaks["near_pairs"] > 0 and leaks["exact_pairs"] == 0
    a, b = leaks["examples"]["near"][0]
    assert {a, b} <= set(kept.column("id").to_pylist())  # examples name rows by id
    # without clean's pairs file the check cannot be honest: a clear error names the file and the fix
    (tmp_path / "clean" / NEAR_PAIRS_FILE).unlink()
    proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.split"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "near_pairs.parquet" in proc.stderr and "dvc repro clean" in proc.stderr


def test_index_memory_does_not_grow_with_rows_squared():
    """The brute force held 2048 x N float32 distance blocks (164 MB at 20k rows, 8 GB at 1M); the
    index holds 36 numbers a row and bounded query / check blocks. Traced allocations (numpy,
    scikit-learn) while it indexes and searches 20k rows stay a few times the 36-number copy."""
    import tracemalloc

    from scipy.fft import idctn

    rng = np.random.default_rng(0)
    n = 20_000
    # embeddings with a photo-like spectrum (energy falling with frequency), made fast: random DCT
    # coefficients scaled by 1/(1 + fx + fy)^2, back to 16x16 pixels, mean removed, unit length
    f = np.arange(16)
    coef = rng.normal(size=(n, 16, 16)) / (1.0 + f[:, None] + f[None, :]) ** 2
    coef[:, 0, 0] = 0
    vecs = idctn(coef, axes=(1, 2), norm="ortho").reshape(n, 256).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs[n // 2:n // 2 + 100] = vecs[:100] + 0.001        # 100 planted near copies
    del coef
    import sklearn.neighbors  # noqa: F401  (imported by pairs(); its import is not the search's memory)

    tracing = tracemalloc.is_tracing()   # pytest may trace already: measure from here, not from its start
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with NearDuplicateIndex(radius=0.05) as index:
            for start in range(0, n, 4096):
                index.add(vecs[start:start + 4096])
            pairs, _ = index.pairs()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert {tuple(p) for p in pairs.tolist()} >= {(k, n // 2 + k) for k in range(100)}
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB traced"   # 36 floats x 20k rows = 2.9 MB (+ tree, blocks)
