import json

import pyarrow as pa
import pytest

from components.data.contract import (DataContractError, DatasetWriter, SetAside, content_id, read_manifest,
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
