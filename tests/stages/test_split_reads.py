"""The split stage reads clean's per-row keys, not the payload: exact copies are found by the
``digest`` column clean writes (blake2b of each cleaned payload), so split's first pass reads
ids, labels, groups and 16 bytes a row, and its reading does not grow with the photos' size
(issue 29: split at the speed of a script). The leakage check stays honest: copies that the data
put in different splits are still counted, with the pixels themselves no longer read."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import trainwise.components.data.contract as contract
from trainwise.components.data.contract import DataContractError, DatasetWriter, SetAside, content_id, read_manifest
from trainwise.components.data.sources import RAW_IMAGE_SCHEMA, encode_png
from trainwise.components.quality.cleaning import clean_dataset
from tests.reads import spy_reads
from tests.demo_data import clean_options

REPO = Path(__file__).resolve().parents[2]
ORIGINALS, COPIES = 40, 6


def _raw_rows():
    """40 distinct pictures and exact copies of the first 6 (the same file under another name)."""
    rng = np.random.default_rng(3)
    pictures = [encode_png(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(ORIGINALS)]
    rows = [(p, k % 2, f"orig/{k}.png") for k, p in enumerate(pictures)]
    return rows + [(pictures[k], k % 2, f"copy/{k}.png") for k in range(COPIES)]


def _clean(data: Path) -> pa.Table:
    """data/clean as the clean stage writes it (copies kept: drop_duplicates off); returns its rows."""
    rows = _raw_rows()
    table = pa.table({"id": [content_id(p, s) for p, _, s in rows], "label": pa.array([y for _, y, _ in rows], pa.int64()),
                      "image": [p for p, _, _ in rows], "source": [s for _, _, s in rows]}, schema=RAW_IMAGE_SCHEMA)
    options = clean_options(image_size=(12, 12), channels=3, drop_duplicates=False, near_duplicate_distance=0.0)
    with DatasetWriter(data / "clean", classes=["a", "b"]) as w:
        st = clean_dataset(iter(table.to_batches()), w, n_classes=2, modality="image", options=options)
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return contract.read_table(data / "clean")


def _zero_the_payload(clean: Path) -> None:
    """Every row's image replaced by zeros of the same type (encoded files: 8 zero bytes, which no longer
    decode), everything else as clean wrote it."""
    for shard in read_manifest(clean)["shards"]:
        t = pq.read_table(clean / shard)
        k = t.schema.get_field_index("image")
        if pa.types.is_binary(t.schema.field(k).type):
            zeros = pa.array([bytes(8)] * t.num_rows, pa.binary())
        else:
            zeros = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(t.num_rows * t.schema.field(k).type.list_size,
                                                                        np.uint8)), type=t.schema.field(k).type)
        pq.write_table(t.set_column(k, t.schema.field(k), zeros), clean / shard)


def test_split_keys_come_from_clean_digests_not_the_payload(tmp_path, monkeypatch):
    from trainwise.pipelines.split import _grouping_inputs

    kept = _clean(tmp_path)
    assert kept.schema.field("digest").type == pa.binary(16)
    pixels = kept.column("image").to_pylist()
    digests = kept.column("digest").to_pylist()
    # the digest is of the decoded pixels (what an exact copy shares), not of the file or its name
    assert digests == [hashlib.blake2b(bytes(p), digest_size=16).digest() for p in pixels]
    reads = spy_reads(monkeypatch)
    ids, _, _, hashes, _, _ = _grouping_inputs(tmp_path / "clean", "image")
    assert reads and not [c for c in reads if c is None or "image" in c], f"split's key pass read the payload: {reads}"
    source = dict(zip(kept.column("id").to_pylist(), kept.column("source").to_pylist()))
    key = dict(zip((source[i] for i in ids), hashes.tolist()))
    assert all(key[f"copy/{k}.png"] == key[f"orig/{k}.png"] for k in range(COPIES))   # copies share a key
    assert len(set(hashes.tolist())) == ORIGINALS                                       # nothing else does
    # the same keys with the pixels gone: they come from the digests, not from hashing the payload again
    _zero_the_payload(tmp_path / "clean")
    assert _grouping_inputs(tmp_path / "clean", "image")[3].tolist() == hashes.tolist()


def test_clean_data_without_digests_is_refused_with_the_fix(tmp_path):
    from trainwise.pipelines.split import _grouping_inputs

    kept = _clean(tmp_path)
    with DatasetWriter(tmp_path / "old", classes=["a", "b"]) as w:   # data/clean as an older clean wrote it
        w.write(kept.drop_columns(["digest"]))
        w.close(rows_in=kept.num_rows, set_aside=SetAside())
    with pytest.raises(DataContractError, match=r"old/manifest.json: .*no digest column.*re-run clean"):
        _grouping_inputs(tmp_path / "old", "image")


def _project(tmp: Path) -> None:
    """data/clean (copies kept), data/ingest saying the copies came as the test set, no backbone."""
    from trainwise.components.embedding.store import write_no_backbone

    shutil.copy(REPO / "params.yaml", tmp / "params.yaml")
    params = yaml.safe_load((tmp / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    kept = _clean(tmp / "data")
    given = ["test" if s.startswith("copy/") else "train" for s in kept.column("source").to_pylist()]
    with DatasetWriter(tmp / "data" / "ingest", classes=["a", "b"]) as w:
        w.write(kept.select(["id", "label", "source"]).append_column("image", pa.array([b""] * kept.num_rows))
                .append_column("given_split", pa.array(given)))
        w.close(rows_in=kept.num_rows, set_aside=SetAside())
    write_no_backbone(tmp / "data" / "embed", note="test")


def test_split_catches_exact_copies_across_splits_without_reading_pixels(tmp_path, monkeypatch):
    """Copies the data put in test (a given split) while their originals are in train are leaks the
    check must report, by clean's digests, with every photo's pixels zeroed out on disk."""
    import json

    from trainwise.pipelines import split
    from trainwise.pipelines.stage import run_stage

    _project(tmp_path)
    _zero_the_payload(tmp_path / "data" / "clean")   # had split hashed the pixels, every row would be one copy
    monkeypatch.chdir(tmp_path)
    reads = spy_reads(monkeypatch)
    run_stage(split.main, exit_process=False)
    metrics = json.loads((tmp_path / "metrics" / "split.json").read_text())
    assert metrics["split/leakage/exact_pairs"] == COPIES and metrics["split/leakage/ok"] == 0
    assert read_manifest(tmp_path / "data" / "split")["rows"] == ORIGINALS + COPIES
    assert not [c for c in reads if c is None or "image" in c], f"split read the payload: {reads}"
