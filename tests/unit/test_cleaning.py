import hashlib

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import DatasetWriter, content_id, read_manifest, read_table
from trainwise.components.data.sources import RAW_IMAGE_SCHEMA, encode_png
from trainwise.components.data.images import decode_image
from trainwise.components.quality.cleaning import clean_dataset
from trainwise.components.quality.duplicates import exact_duplicate_rows
from tests.demo_data import clean_options


def _raw(rows):
    payloads = [p for p, _, _ in rows]
    return pa.table({"id": [content_id(p, s) for p, _, s in rows], "label": [l for _, l, _ in rows],
                     "image": payloads, "source": [s for _, _, s in rows]}, schema=RAW_IMAGE_SCHEMA)


def test_clean_quarantines_dedupes_and_accounts_for_every_row(tmp_path):
    rng = np.random.default_rng(0)
    img = [encode_png(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(4)]
    rows = [
        (img[0], 0, "a/0.png"),
        (img[0], 0, "a/0-copy.png"),          # exact duplicate, same label
        (img[1], 1, "b/1.png"),
        (img[1], 0, "a/1-mislabeled.png"),    # duplicate that disagrees on the label
        (b"not an image", 1, "b/broken.png"),  # corrupt
        (img[2], 7, "c/2.png"),               # label outside the 2 classes
        (img[3], 1, "b/3.png"),
    ]
    with DatasetWriter(tmp_path / "clean", classes=["a", "b"]) as w:
        stats = clean_dataset(iter([_raw(rows).to_batches()[0]]), w, n_classes=2, modality="image",
                              options=clean_options())
        m = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
    assert m["rows_in"] == 7
    assert m["set_aside"] == {"corrupt_payload": 1, "duplicate": 1, "duplicate_label_conflict": 2,
                              "label_out_of_range": 1}
    assert m["rows"] == 2
    kept = read_table(tmp_path / "clean")
    assert sorted(kept.column("source").to_pylist()) in (["a/0.png", "b/3.png"], ["a/0-copy.png", "b/3.png"])
    assert kept.schema.field("image").type == pa.list_(pa.uint8(), 64)
    assert read_manifest(tmp_path / "clean")["image_shape"] == [8, 8, 1]


def test_duplicate_keeper_is_independent_of_row_order():
    def set_aside(recs):
        ids = [r[0] for r in recs]
        digests = np.stack([np.frombuffer(hashlib.md5(r[1].encode()).digest(), np.uint8) for r in recs])
        found = exact_duplicate_rows(ids, digests, np.array([r[2] for r in recs], np.int64))
        return {ids[r]: reason for r, reason in found.items()}

    recs = [("id-b", "h1", 0), ("id-a", "h1", 0), ("id-c", "h2", 1)]
    assert set_aside(recs) == set_aside(list(reversed(recs))) == {"id-b": ("duplicate", {"of": "id-a"})}


def test_decode_resizes_and_converts_channels():
    rgb = np.zeros((16, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = decode_image(encode_png(rgb), size=(8, 6), channels=1)
    assert out.shape == (8, 6, 1) and out.dtype == np.uint8
    assert 70 < out.mean() < 80  # red -> luminance ~76
    assert decode_image(encode_png(rgb), size=(8, 6), channels=3).shape == (8, 6, 3)


def _numeric_raw(modality, rows):
    return pa.table({"id": [f"r{i}" for i in range(len(rows))], "label": [l for _, l in rows],
                     modality: pa.array([v for v, _ in rows], pa.list_(pa.float32())),
                     "source": [f"s/{i}" for i in range(len(rows))]})


def test_sequences_and_features_are_checked_for_nan_inf_and_length(tmp_path):
    from trainwise.components.quality.cleaning import clean_dataset

    rows = [([0.0, 1.0, 2.0], 0), ([1.0, 2.0, 3.0], 1), ([1.0, float("nan"), 3.0], 0), ([1.0, 2.0], 1),
            ([float("inf"), 0.0, 0.0], 1), ([5.0, 6.0, 7.0], 0), (None, 0), ([0.0, 1.0, 2.0], 0)]
    for modality, key in (("sequence", "sequence_length"), ("features", "feature_names")):
        with DatasetWriter(tmp_path / modality, classes=["a", "b"]) as w:
            st = clean_dataset(iter(_numeric_raw(modality, rows).to_batches()), w, n_classes=2, modality=modality,
                               options=clean_options())
            m = w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
        assert m["set_aside"] == {"corrupt_payload": 1, "duplicate": 1, "non_finite_values": 2, "wrong_length": 1}
        assert m["rows_in"] == 8 and m["rows"] == 3
        t = read_table(tmp_path / modality)
        assert t.schema.field(modality).type == pa.list_(pa.float32(), 3)
        assert m[key] == (3 if modality == "sequence" else ["f0", "f1", "f2"])


def test_text_is_normalised(tmp_path):
    from trainwise.components.quality.cleaning import clean_dataset, normalize_text

    assert normalize_text("  ﬁne\tday\x00\n ") == "fine day"
    raw = pa.table({"id": ["a", "b"], "label": [0, 1], "text": ["Hello\u00a0 world ", b"caf\xc3\xa9".decode()],
                    "source": ["x", "y"]})
    with DatasetWriter(tmp_path / "t", classes=["a", "b"]) as w:
        st = clean_dataset(iter(raw.to_batches()), w, n_classes=2, modality="text", options=clean_options())
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    assert read_table(tmp_path / "t").column("text").to_pylist() == ["Hello world", "café"]
