"""Photos are stored once, as the files' bytes (issue 29, "The payload is written once"): data/clean
extends data/ingest, and every reader gets the pixels clean decoded, by the same decoder."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainwise.components.data import contract
from trainwise.components.data.contract import (ENCODED, DataContractError, DatasetWriter, SetAside, content_id,
                                                iter_batches, read_images, read_manifest, read_table)
from trainwise.components.data.images import decode_image
from trainwise.components.data.sources import RAW_IMAGE_SCHEMA
from trainwise.components.quality.cleaning import clean_dataset
from tests.demo_data import clean_options
from tests.unit.test_images import _animated_gif, _png, _sideways_photo

SHAPE = (16, 12, 3)


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((5, 5, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _files() -> list[tuple[bytes, str]]:
    """Photos and the awkward cases decode_image handles (EXIF-rotated, 16-bit grey, animated), and a
    file that is not an image (set aside by clean)."""
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    return [*((_jpeg(k), f"a/{k}.jpg") for k in range(6)), (_sideways_photo(), "b/phone.png"),
            (_png(Image.fromarray(ramp)), "b/16bit.png"), (_animated_gif(), "b/anim.gif"),
            (b"not an image", "b/broken.jpg")]


def _ingest_and_clean(root: Path) -> tuple[list[tuple[bytes, str]], dict]:
    files = _files()
    table = pa.table({"id": [content_id(p, s) for p, s in files], "label": [k % 2 for k in range(len(files))],
                      "image": [p for p, _ in files], "source": [s for _, s in files]}, schema=RAW_IMAGE_SCHEMA)
    with DatasetWriter(root / "ingest", classes=["a", "b"]) as w:
        w.write(table)
        w.close(rows_in=table.num_rows, set_aside=SetAside())
    options = clean_options(image_size=SHAPE[:2], channels=SHAPE[2], near_duplicate_distance=0.0)
    with DatasetWriter(root / "clean", classes=["a", "b"], base=root / "ingest") as w:   # as the clean stage writes
        stats = clean_dataset(iter_batches(root / "ingest"), w, n_classes=2, modality="image", options=options)
        manifest = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
    return files, manifest


def _bytes_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("part-*.parquet"))


def test_clean_writes_keys_not_the_photos_and_readers_get_what_clean_decoded(tmp_path):
    files, m = _ingest_and_clean(tmp_path)
    assert m["payload_encoding"] == ENCODED and m["image_shape"] == list(SHAPE)
    assert m["rows"] == len(files) - 1 and m["set_aside"] == {"corrupt_payload": 1}
    # written once: clean's shards hold keys and groups, the files stay in ingest's
    stored = pq.read_schema(tmp_path / "clean" / m["shards"][0]).names
    assert "image" not in stored and {"id", "label", "digest", "group"} <= set(stored)
    assert _bytes_of(tmp_path / "clean") < 0.5 * _bytes_of(tmp_path / "ingest")
    by_id = {content_id(p, s): p for p, s in files}
    t = read_table(tmp_path / "clean")
    assert t.schema.field("image").type == pa.list_(pa.field("element", pa.uint8()), int(np.prod(SHAPE)))
    for row, pixels, digest in zip(t.column("id").to_pylist(), t.column("image").to_pylist(),
                                   t.column("digest").to_pylist()):
        want = decode_image(by_id[row], size=SHAPE[:2], channels=SHAPE[2])
        np.testing.assert_array_equal(np.array(pixels, np.uint8).reshape(SHAPE), want)   # the one decoder's pixels
        assert digest == hashlib.blake2b(want.tobytes(), digest_size=16).digest()         # what clean hashed
    # the files as ingested, for readers that decode where the batch is used (embed, the ray_data loader)
    raw = read_table(tmp_path / "clean", columns=["id", "image"], decode=False)
    assert [by_id[i] for i in raw.column("id").to_pylist()] == raw.column("image").to_pylist()
    some = t.column("id").to_pylist()[5:8]   # the phone photo turned upright, the 16-bit one scaled, the GIF's frame
    got = read_images(tmp_path / "clean", some)
    assert set(got) == set(some)
    for row in some:
        np.testing.assert_array_equal(got[row], decode_image(by_id[row], size=SHAPE[:2], channels=SHAPE[2]))


def test_batches_are_bounded_by_decoded_bytes_and_columns_without_the_photo_skip_decoding(tmp_path, monkeypatch):
    _, m = _ingest_and_clean(tmp_path)
    row = int(np.prod(SHAPE))
    sizes = [b.num_rows for b in iter_batches(tmp_path / "clean", batch_bytes=3 * row)]
    assert sum(sizes) == m["rows"] and max(sizes) <= 3   # 3 decoded photos a batch, whatever the files weigh
    decoded = []
    real = contract.decode_images_in
    monkeypatch.setattr(contract, "decode_images_in", lambda t, *a, **k: decoded.append(t.num_rows) or real(t, *a, **k))
    keys = read_table(tmp_path / "clean", columns=["id", "label", "digest"])
    assert keys.num_rows == m["rows"] and not decoded   # split's key pass decodes nothing


def test_a_stored_file_that_no_longer_decodes_is_named_with_the_fix(tmp_path):
    _, m = _ingest_and_clean(tmp_path)
    shard = tmp_path / "ingest" / read_manifest(tmp_path / "ingest")["shards"][0]
    t = pq.read_table(shard)
    broken = t.column("image").to_pylist()
    broken[0] = broken[0][:40]   # a truncated JPEG: the file changed after clean decoded it
    pq.write_table(t.set_column(t.schema.get_field_index("image"), "image", pa.array(broken, pa.binary())), shard)
    with pytest.raises(DataContractError) as err:
        read_table(tmp_path / "clean")
    assert t.column("id")[0].as_py() in str(err.value) and "dvc repro --force ingest" in str(err.value)


def test_thumbnails_keep_only_what_the_transform_returns(tmp_path):
    files, _ = _ingest_and_clean(tmp_path)
    ids = [content_id(p, s) for p, s in files[:4]]
    got = read_images(tmp_path / "clean", ids, transform=lambda px: px.mean(axis=2).astype(np.uint8)[:4, :4])
    assert set(got) == set(ids) and all(v.shape == (4, 4) for v in got.values())   # not the (16, 12, 3) photos


def test_embed_batches_have_one_size_whatever_the_reader_yields(tmp_path, monkeypatch):
    """Batches of many sizes made the CPU kernels cache a plan per shape (embed's RSS grew with the rows)."""
    from trainwise.components.embedding.batch import _tables

    _, m = _ingest_and_clean(tmp_path)
    real = contract.iter_batches

    def ragged(*a, **k):   # the join yields batches of whatever sizes the bases' row groups give
        sizes = iter([3, 1, 2, 3] * 10)
        for b in real(*a, **k):
            start = 0
            while start < b.num_rows:
                n = next(sizes)
                yield b.slice(start, n)
                start += n
    monkeypatch.setattr(contract, "iter_batches", ragged)
    tables = list(_tables(tmp_path / "clean", payload="image", batch_size=1))   # 4 rows a table
    assert [t.num_rows for t in tables] == [4, 4, 1] and sum(t.num_rows for t in tables) == m["rows"]
    assert all(pa.types.is_binary(t.schema.field("image").type) for t in tables)   # the files, decoded by the embedder
