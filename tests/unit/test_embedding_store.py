"""data/embed's reader and writer: the contract other stages (audit, baseline, train) rely on."""

import json

import numpy as np
import pytest

from components.data.contract import DataContractError
from components.embedding.store import EMBEDDINGS, read_embeddings, write_embeddings, write_no_backbone


def test_no_backbone_reads_as_none_and_removes_old_embeddings(tmp_path):
    out = tmp_path / "embed"
    write_embeddings(out, ids=["a"], splits=["train"], embeddings=np.ones((1, 3)), manifest={"backbone": "x"})
    assert (out / EMBEDDINGS).exists()
    write_no_backbone(out)
    assert json.loads((out / "manifest.json").read_text()) == {"backbone": None, "rows": 0}
    assert not (out / EMBEDDINGS).exists()  # a stale file from the last backbone would mislead readers
    assert read_embeddings(out) is None


def test_roundtrip_keeps_order_values_and_split_filter(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ids, splits = [f"r{i}" for i in range(5)], ["train", "val", "train", "test", "train"]
    m = write_embeddings(tmp_path / "e", ids=ids, splits=splits, embeddings=x,
                         manifest={"backbone": "efficientnet_lite0", "weights_sha256": "ab"})
    assert m["rows"] == 5 and m["dim"] == 4
    got_ids, got = read_embeddings(tmp_path / "e")
    assert got_ids == ids and got.dtype == np.float32 and got.shape == (5, 4)
    np.testing.assert_array_equal(got, x)
    tr_ids, tr = read_embeddings(tmp_path / "e", split="train")
    assert tr_ids == ["r0", "r2", "r4"]
    np.testing.assert_array_equal(tr, x[[0, 2, 4]])


def test_missing_parquet_names_the_fix(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "rows": 3, "dim": 2}))
    with pytest.raises(DataContractError, match="re-run the embed stage"):
        read_embeddings(tmp_path)
