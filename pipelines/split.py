"""DVC stage `split`: group near-duplicates by content, then add a stable, group-preserving
`split` column and check for leakage (data/clean + data/embed -> data/split).

Groups join what clean found (exact copies; pixel near-duplicates; equal normalised texts) with
near-duplicates by content (:mod:`trainwise.components.quality.content_groups`): embedding cosine for images,
word edit distance (MinHash + LSH candidates) for text. A row's split is derived from its group's name, so a group
never crosses splits. Memory: a few dozen bytes a row plus the vectors being searched (float16).
"""

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import (DIGEST, TEXT_KEY, DataContractError, DatasetWriter, SetAside, iter_batches,
                                                read_images, read_manifest, read_table)
from trainwise.components.data.splitting import (assign_splits, assign_splits_given, class_fraction_gap, contamination,
                                       split_counts)
from trainwise.components.quality.duplicates import (cross_split_leaks, digest_keys, key64, keys_in_several_splits,
                                                     read_near_pairs)
from trainwise.components.embedding.store import grouping_note, iter_grouping_vectors
from trainwise.components.quality.content_groups import find_groups
from trainwise.pipelines.stage import Stage, run_stage

CARRIED = ("source", "image_shape", "payload_encoding", "sequence_length", "feature_names", "near_duplicates")


def main() -> None:
    with Stage("split") as stage:
        p, nd = stage.params.split, stage.params.split.near_duplicates
        src, out = stage.path(stage.paths.clean), stage.path(stage.paths.split)
        clean = stage.record_input(src)
        modality = clean.get("payload", "image")
        fractions = {"train": p.train, "val": p.val, "test": p.test}
        code_of = {name: k for k, name in enumerate(fractions)}
        ids, labels_all, clean_groups, hashes_all, text_keys, texts = _grouping_inputs(src, modality)
        found = find_groups(ids, modality=modality, exact_keys=hashes_all, clean_groups=clean_groups,
                            texts=texts if modality == "text" else None,
                            vectors=iter_grouping_vectors(stage.path(stage.paths.embed)) if modality == "image" else None,
                            no_vectors_note=grouping_note(stage.path(stage.paths.embed)),
                            pixel_distance=(clean.get("near_duplicates") or {}).get("distance", 0.0),
                            params=nd, labels=labels_all,
                            thumbnails=_thumbnails(src, ids) if modality == "image" else None)
        given = _given_splits(stage.path(stage.paths.ingest), ids)
        splits = assign_splits(found.names, fractions=fractions, seed=p.seed) if given is None else \
            assign_splits_given(found.names, given, fractions=fractions, seed=p.seed)
        contaminated = contamination(found.names, splits) if given is not None else None
        codes_all = np.fromiter((code_of[s] for s in splits), np.int8, len(splits))
        # data/split extends data/clean: its shards hold id, label, group and split, not the payload again
        with DatasetWriter(out, classes=clean["classes"], base=src, replaces=("group",),
                           metadata={k: clean[k] for k in CARRIED if k in clean}) as w:
            _write_rows(w, src, found.names, splits)
            per_split = split_counts(splits, labels_all.tolist(), clean["classes"])
            leaks, crossing_groups = _leakage(src, clean, modality, ids, codes_all, hashes_all, text_keys, found)
            gap = class_fraction_gap(per_split, fractions)
            w.close(rows_in=clean["rows"], set_aside=SetAside(),
                    extra={"fractions": fractions, "seed": p.seed, "split_class_counts": per_split,
                           "max_class_fraction_gap": gap, "near_duplicate_groups": found.summary(ids, splits),
                           **({"given_split": {"brought": sorted({g for g in given if g}),
                                               "contaminated_rows": contaminated}} if given is not None else {}),
                           "leakage": {**leaks, "groups_crossing_splits": crossing_groups}})
        sizes = {s: sum(c.values()) for s, c in per_split.items()}
        ok = leaks["exact_pairs"] == 0 and leaks["near_pairs"] == 0 and crossing_groups == 0
        stage.log("split %s; largest class-fraction gap %.3f", sizes, gap)
        for line in found.describe():
            stage.log("%s", line)
        if given is not None:
            stage.log("the data came with a split (%s): kept as given, the rest drawn by group; contamination: %d of %d "
                      "test rows and %d of %d val rows have a near-duplicate in train (left where the data put them)",
                      ", ".join(sorted({g for g in given if g})), contaminated["test"], sizes.get("test", 0),
                      contaminated["val"], sizes.get("val", 0))
        stage.log("leakage check: %s", "no group crosses splits (checked: %s)" % found.method if ok else
                  f"LEAK: {leaks['exact_pairs']} exact and {leaks['near_pairs']} near duplicate pairs cross "
                  f"splits (examples in {out / 'manifest.json'})")
        stage.finish({**{f"split/{s}_rows": n for s, n in sizes.items()},
                      "split/max_class_fraction_gap": round(gap, 4),
                      **found.metrics(),
                      "split/leakage/exact_pairs": leaks["exact_pairs"],
                      "split/leakage/near_pairs": leaks["near_pairs"],
                      "split/leakage/groups_crossing": crossing_groups,
                      "split/leakage/ok": int(ok),
                      **({"split/given/contaminated_test_rows": contaminated["test"],
                          "split/given/contaminated_val_rows": contaminated["val"]} if given is not None else {})},
                     artifacts=[out / "manifest.json"])


def _grouping_inputs(src, modality: str):
    """Pass 1: what grouping needs, a few dozen bytes a row: ids, labels, clean's groups (64-bit
    keys), exact content keys (from clean's ``digest`` column), text keys (clean's ``text_key``) and
    the texts (text). Never the payload of a photo: its pixels would make this pass grow with the
    picture size (150 KB a row at 224x224x3) for keys clean has already computed."""
    schema = read_manifest(src).get("schema", {})
    need = [DIGEST, *([TEXT_KEY] if modality == "text" else [])]
    if any(c not in schema for c in need):
        raise DataContractError(
            f"{src}/manifest.json: its rows have no {' / '.join(c for c in need if c not in schema)} column, "
            "the per-row keys split checks exact copies by (written by clean from this version on); re-run clean "
            "(`dvc repro --force clean`)")
    group = "group" if "group" in schema else "id"
    columns = list(dict.fromkeys(["id", "label", group, *need, *(["text"] if modality == "text" else [])]))
    ids, labels, clean_groups, hashes, text_keys, texts = [], [], [], [], [], []
    for batch in iter_batches(src, columns=columns):
        ids += batch.column("id").to_pylist()
        labels.append(batch.column("label").to_numpy())
        clean_groups.append(np.fromiter((key64(k.encode()) for k in batch.column(group).to_pylist()), np.int64))
        hashes.append(digest_keys(batch.column(DIGEST)))
        if modality == "text":
            text_keys.append(batch.column(TEXT_KEY).to_numpy().astype(np.int64, copy=False))
            texts += batch.column("text").to_pylist()
    labels_all = np.concatenate(labels) if labels else np.empty(0, np.int64)
    hashes_all = np.concatenate(hashes) if hashes else np.empty(0, np.int64)
    clean_groups_all = np.concatenate(clean_groups) if clean_groups else np.empty(0, np.int64)
    return ids, labels_all, clean_groups_all, hashes_all, text_keys, texts


def _thumbnails(src, ids: list[str]):
    """Row numbers -> {row: grey thumbnail} for the pictures the content search proposes as pairs: one
    streamed pass that decodes only those rows, keeping 4 KB a wanted row (trainwise.components.quality.content_groups)."""
    from trainwise.components.quality.content_groups import align_thumbnail

    def read(rows: list[int]) -> dict[int, np.ndarray]:
        want = {ids[r]: r for r in rows}
        return {want[i]: thumb for i, thumb in read_images(src, want, transform=align_thumbnail).items()}
    return read


def _write_rows(w: DatasetWriter, src, names: list[str], splits: list[str]) -> None:
    """Pass 2: each row's group and split (data/split extends data/clean: no payload again)."""
    rows = 0
    for batch in iter_batches(src, columns=["id", "label"]):
        table = pa.Table.from_batches([batch])
        if "group" in table.schema.names:
            table = table.drop_columns(["group"])
        end = rows + batch.num_rows
        table = table.append_column("group", pa.array(names[rows:end], pa.string()))
        w.write(table.append_column("split", pa.array(splits[rows:end], pa.string())))
        rows = end


def _leakage(src, clean: dict, modality: str, ids: list[str], codes_all, hashes_all, text_keys, found):
    """Pairs of exact or near duplicates across splits, and groups in several splits."""
    near = _near_positions(read_near_pairs(src), ids, src) \
        if modality == "image" and (clean.get("near_duplicates") or {}).get("distance", 0.0) > 0 else None
    leaks = cross_split_leaks(codes_all, hashes=hashes_all, near=near,
                              near_keys=np.concatenate(text_keys) if text_keys else None)
    content_crossing = int((codes_all[found.pairs.pairs[:, 0]] != codes_all[found.pairs.pairs[:, 1]]).sum())
    leaks["near_pairs"] += content_crossing
    crossing_groups = keys_in_several_splits(np.fromiter((key64(g.encode()) for g in found.names), np.int64,
                                                         len(found.names)), codes_all)
    leaks["examples"] = {k: [[ids[r] for r in g] for g in v] for k, v in leaks["examples"].items()}
    return leaks, crossing_groups


def _given_splits(ingest_dir, ids: list[str]) -> list[str | None] | None:
    """The split each row came with (ingest's ``given_split``: a test/ folder, a split column), or
    None when the data brought none. Clean does not carry the column; it is joined here by id."""
    if "given_split" not in read_manifest(ingest_dir).get("schema", {}):
        return None
    t = read_table(ingest_dir, columns=["id", "given_split"])
    by_id = dict(zip(t.column("id").to_pylist(), t.column("given_split").to_pylist()))
    return [by_id.get(i) for i in ids]


def _near_positions(near: pa.Table, ids: list[str], src) -> np.ndarray:
    """Clean's pixel near pairs (ids) as row numbers of this pass."""
    position = {i: k for k, i in enumerate(ids)}
    try:
        return np.array([(position[a], position[b]) for a, b in zip(near.column("id").to_pylist(),
                                                                   near.column("other").to_pylist())],
                        dtype=np.int64).reshape(-1, 2)
    except KeyError as err:
        raise DataContractError(f"{src}/near_pairs.parquet names row {err.args[0]} that is not in {src}: the two "
                                "were not written by the same clean; re-run clean (`dvc repro --force clean`)") from None


if __name__ == "__main__":
    run_stage(main)
