"""data/embed's reader and writer: the contract other stages (audit, baseline, train) rely on."""

import json

import numpy as np
import pytest

from trainwise.components.data.contract import DataContractError
import pyarrow.parquet as pq

from trainwise.components.embedding.store import (EMBEDDINGS, grouping_note, grouping_vectors, iter_grouping_vectors,
                                        read_embeddings, write_embeddings, write_no_backbone)


def test_no_backbone_reads_as_none_and_removes_old_embeddings(tmp_path):
    out = tmp_path / "embed"
    write_embeddings(out, ids=["a"], embeddings=np.ones((1, 3)), manifest={"backbone": "x"})
    assert (out / EMBEDDINGS).exists()
    write_no_backbone(out, note="not images")
    assert json.loads((out / "manifest.json").read_text()) == {"backbone": None, "rows": 0, "grouping": None,
                                                               "grouping_note": "not images"}
    assert grouping_note(out) == "not images" and iter_grouping_vectors(out) is None
    assert not (out / EMBEDDINGS).exists()  # a stale file from the last backbone would mislead readers
    assert read_embeddings(out) is None


def test_roundtrip_keeps_order_and_values_without_a_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ids = [f"r{i}" for i in range(5)]
    m = write_embeddings(tmp_path / "e", ids=ids, embeddings=x,
                         manifest={"backbone": "efficientnet_lite0", "weights_sha256": "ab"})
    assert m["rows"] == 5 and m["dim"] == 4
    got_ids, got = read_embeddings(tmp_path / "e")
    assert got_ids == ids and got.dtype == np.float32 and got.shape == (5, 4)
    np.testing.assert_array_equal(got, x)
    # embed runs before split: the file holds no split, so adding data never re-embeds for a split change
    assert pq.read_schema(tmp_path / "e" / EMBEDDINGS).names == ["id", "embedding"]
    model, batches = iter_grouping_vectors(tmp_path / "e", batch_rows=2)
    streamed = list(batches)
    assert model == "efficientnet_lite0" and [len(b[0]) for b in streamed] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in streamed]), x)


def test_grouping_only_features_are_not_a_backbone(tmp_path):
    """Photos without train.backbone: embed writes features for near-duplicate grouping only; the
    stages that train must not mistake them for a backbone's embeddings."""
    x = np.eye(3, dtype=np.float32)
    write_embeddings(tmp_path / "e", ids=["a", "b", "c"], embeddings=x,
                     manifest={"backbone": None, "grouping": "efficientnet_lite0"})
    assert read_embeddings(tmp_path / "e") is None
    model, ids, got = grouping_vectors(tmp_path / "e")
    assert model == "efficientnet_lite0" and ids == ["a", "b", "c"]
    np.testing.assert_array_equal(got, x)


def test_missing_parquet_names_the_fix(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "rows": 3, "dim": 2}))
    with pytest.raises(DataContractError, match="re-run the embed stage"):
        read_embeddings(tmp_path)
