import json

import pyarrow as pa
import pytest

from trainwise.components.data.contract import (DataContractError, DatasetWriter, SetAside, content_id, read_manifest,
                                      read_table)


def _table(n, start=0):
    return pa.table({"id": [f"r{i}" for i in range(start, start + n)], "label": [i % 2 for i in range(start, start + n)],
                     "features": [[float(i)] for i in range(n)], "source": ["t"] * n})


def test_writer_shards_and_manifest_counts(tmp_path):
    aside = SetAside()
    aside.add("x1", "a.png", "corrupt_payload")
    aside.add("x2", "b.png", "corrupt_payload")
    with DatasetWriter(tmp_path / "out", classes=["neg", "pos"], shard_rows=4) as w:
        w.write(_table(5))
        w.write(_table(5, start=5))
        m = w.close(rows_in=12, set_aside=aside)
    assert m["rows"] == 10 and m["rows_in"] == 12
    assert m["set_aside"] == {"corrupt_payload": 2}
    assert m["class_counts"] == {"neg": 5, "pos": 5}
    assert m["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_manifest(tmp_path / "out") == m
    assert read_table(tmp_path / "out").column("id").to_pylist() == [f"r{i}" for i in range(10)]
    lines = (tmp_path / "out" / "set_aside.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["x1", "x2"]


def test_counts_that_do_not_add_up_are_refused(tmp_path):
    with DatasetWriter(tmp_path / "out", classes=["a", "b"]) as w:
        w.write(_table(3))
        with pytest.raises(DataContractError, match="do not add up"):
            w.close(rows_in=4, set_aside=SetAside())
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "out"
    with DatasetWriter(out, classes=["a", "b"]) as w:
        w.write(_table(3))
        w.close(rows_in=3, set_aside=SetAside())
    before = read_manifest(out)
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, classes=["a", "b"]) as w:
            w.write(_table(7))
            raise RuntimeError("crash mid-write")
    assert read_manifest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # temp dir cleaned up


def test_missing_manifest_says_which_stage_to_run(tmp_path):
    with pytest.raises(DataContractError, match="missing; run the stage"):
        read_manifest(tmp_path / "nothing")


def test_content_id_depends_on_content_and_source_not_order():
    a = content_id(b"pixels", "cats/1.png")
    assert a == content_id(b"pixels", "cats/1.png")
    assert a != content_id(b"pixels", "cats/2.png")  # same content elsewhere: recorded, not merged
    assert a != content_id(b"pixelz", "cats/1.png")


def _images_table(n: int):
    import numpy as np
    import pyarrow as pa

    pixels = np.arange(n * 12, dtype=np.uint8).reshape(n, 12)
    return pa.table({"id": [f"r{i:02d}" for i in range(n)], "label": [i % 2 for i in range(n)],
                     "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 12),
                     "source": [f"s{i}" for i in range(n)], "group": [f"r{i:02d}" for i in range(n)]})


def test_an_extension_stores_only_what_it_adds_and_reads_as_whole_rows(tmp_path):
    """split and audit write the payload no more: their shards hold id, label and their own columns,
    and the readers join the chain by id (issue 29: 21x the photos on disk before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainwise.components.data.contract import (DataContractError, DatasetWriter, SetAside, iter_batches, payload_dir,
                                          read_manifest, read_table)

    t = _images_table(20)
    with DatasetWriter(tmp_path / "clean", classes=["a", "b"]) as w:
        w.write(t)
        w.close(rows_in=20, set_aside=SetAside())
    splits = ["test" if i % 4 == 0 else "train" for i in range(20)]
    with DatasetWriter(tmp_path / "split", classes=["a", "b"], base=tmp_path / "clean", replaces=("group",)) as w:
        for k in range(0, 20, 7):  # written in batches, as the stage does
            part = t.slice(k, 7)
            w.write(part.set_column(4, "group", pa.array(["g"] * part.num_rows))
                    .append_column("split", pa.array(splits[k:k + part.num_rows])))
        m = w.close(rows_in=20, set_aside=SetAside())
    stored = pq.read_schema(tmp_path / "split" / m["shards"][0]).names
    assert stored == ["id", "label", "group", "split"]                    # no payload, no source
    assert m["payload"] == "image" and m["extends"]["base"] == "../clean" and "image" in m["schema"]
    whole = read_table(tmp_path / "split")
    assert whole.column_names == ["id", "label", "image", "source", "group", "split"]
    assert whole.column("image").to_pylist() == t.column("image").to_pylist()
    assert set(whole.column("group").to_pylist()) == {"g"}                # split's group replaces clean's
    test = read_table(tmp_path / "split", columns=["label", "image"], filter_split="test")
    assert test.num_rows == 5 and test.column_names == ["label", "image"]
    # an audit-like extension of the extension: drops a row, relabels the rest, adds a column
    with DatasetWriter(tmp_path / "audit", classes=["a", "b"], base=tmp_path / "split") as w:
        for b in iter_batches(tmp_path / "split", columns=["id", "label"], batch_rows=6):
            b = pa.Table.from_batches([b])
            b = b.filter(pa.array([i != "r03" for i in b.column("id").to_pylist()]))
            w.write(b.set_column(1, "label", pa.array([1] * b.num_rows, pa.int64()))
                    .append_column("label_issue", pa.array([False] * b.num_rows)))
        w.close(rows_in=20, set_aside=SetAside(rows=[{"id": "r03", "source": "s3", "reason": "label_issue"}]))
    audited = read_table(tmp_path / "audit")
    assert audited.num_rows == 19 and "r03" not in audited.column("id").to_pylist()
    assert set(audited.column("label").to_pylist()) == {1} and audited.column("split").to_pylist()[0] == "test"
    assert payload_dir(tmp_path / "audit") == (tmp_path / "clean").resolve()
    # audit's own columns with a split filter: the split comes from data/split (as the frozen head reads it)
    assert read_table(tmp_path / "audit", columns=["id", "label"], filter_split="test").num_rows == 5
    assert read_manifest(tmp_path / "audit")["content_hash"] != read_manifest(tmp_path / "split")["content_hash"]
    # reading an extension's own columns never opens the payload
    (tmp_path / "clean" / "part-00000.parquet").rename(tmp_path / "clean" / "moved.parquet")
    assert read_table(tmp_path / "split", columns=["id", "split"]).num_rows == 20
    (tmp_path / "clean" / "moved.parquet").rename(tmp_path / "clean" / "part-00000.parquet")
    # a base rewritten with other rows: the extension no longer fits it, and says what to do
    with DatasetWriter(tmp_path / "clean", classes=["a", "b"]) as w:
        w.write(_images_table(25).slice(5))
        w.close(rows_in=20, set_aside=SetAside())
    with pytest.raises(DataContractError, match="was not written from the data there now"):
        read_table(tmp_path / "split")


def test_pixels_are_written_byte_stream_split_and_read_back_the_same(tmp_path):
    """Decoded pixels (list<uint8>, stored by Parquet as 4-byte integers) are written with
    BYTE_STREAM_SPLIT + LZ4, not dictionary + snappy (faster to write and read, smaller); readers
    get the same arrays, and the other columns keep the defaults."""
    import pyarrow.parquet as pq

    t = _images_table(20)
    with DatasetWriter(tmp_path / "clean", classes=["a", "b"]) as w:
        w.write(t)
        m = w.close(rows_in=20, set_aside=SetAside())
    meta = pq.ParquetFile(tmp_path / "clean" / m["shards"][0]).metadata.row_group(0)
    chunks = {meta.column(j).path_in_schema: meta.column(j) for j in range(meta.num_columns)}
    pixels = chunks["image.list.element"]
    assert "BYTE_STREAM_SPLIT" in pixels.encodings and pixels.compression == "LZ4"
    assert "RLE_DICTIONARY" in chunks["id"].encodings and chunks["id"].compression == "SNAPPY"
    assert read_table(tmp_path / "clean").equals(t)
