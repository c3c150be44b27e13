import numpy as np
import pyarrow as pa

from components.data.contract import DatasetWriter, content_id, read_manifest, read_table
from components.data.sources import RAW_IMAGE_SCHEMA, encode_png
from components.quality.cleaning import CleanOptions, clean_images, decode_image, find_duplicates


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
        stats = clean_images(iter([_raw(rows).to_batches()[0]]), w, n_classes=2, options=CleanOptions())
        m = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra={"image_shape": stats["image_shape"]})
    assert m["rows_in"] == 7
    assert m["set_aside"] == {"corrupt_payload": 1, "duplicate": 1, "duplicate_label_conflict": 2,
                              "label_out_of_range": 1}
    assert m["rows"] == 2
    kept = read_table(tmp_path / "clean")
    assert sorted(kept.column("source").to_pylist()) in (["a/0.png", "b/3.png"], ["a/0-copy.png", "b/3.png"])
    assert kept.schema.field("image").type == pa.list_(pa.uint8(), 64)
    assert read_manifest(tmp_path / "clean")["image_shape"] == [8, 8, 1]


def test_duplicate_keeper_is_independent_of_row_order():
    recs = [("id-b", "h1", 0), ("id-a", "h1", 0), ("id-c", "h2", 1)]
    assert find_duplicates(recs) == find_duplicates(list(reversed(recs))) == {"id-b": ("duplicate", {"of": "id-a"})}


def test_decode_resizes_and_converts_channels():
    rgb = np.zeros((16, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = decode_image(encode_png(rgb), size=(8, 6), channels=1)
    assert out.shape == (8, 6, 1) and out.dtype == np.uint8
    assert 70 < out.mean() < 80  # red -> luminance ~76
    assert decode_image(encode_png(rgb), size=(8, 6), channels=3).shape == (8, 6, 3)
