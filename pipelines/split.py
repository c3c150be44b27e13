"""DVC stage `split`: add a stable, group-preserving `split` column and check for leakage
(data/clean -> data/split).

Memory is bounded by one batch plus a few bytes a row: the leakage check keeps 64-bit keys
(content hash, normalised text, group) and a split code per row, never payloads or embeddings.
Near-duplicate image pairs are not searched again: clean found them once and wrote them to
``near_pairs.parquet`` beside its manifest; a pair whose two rows landed in different splits is a leak.
"""

import numpy as np
import pyarrow as pa

from components.data.contract import DataContractError, DatasetWriter, SetAside, iter_batches
from components.data.splitting import assign_splits, class_fraction_gap, split_counts, split_keys
from components.quality.duplicates import cross_split_leaks, key64, keys_in_several_splits, read_near_pairs, row_keys
from pipelines.stage import Stage, run_stage

CARRIED = ("source", "image_shape", "sequence_length", "feature_names", "near_duplicates")


def main() -> None:
    with Stage("split") as stage:
        p = stage.params.split
        src, out = stage.path(stage.paths.clean), stage.path(stage.paths.split)
        clean = stage.record_input(src)
        modality = clean.get("payload", "image")
        near_distance = (clean.get("near_duplicates") or {}).get("distance", 0.0)
        fractions = {"train": p.train, "val": p.val, "test": p.test}
        code_of = {name: k for k, name in enumerate(fractions)}
        near = read_near_pairs(src) if modality == "image" and near_distance > 0 else None
        wanted = set(near.column("id").to_pylist()) | set(near.column("other").to_pylist()) if near else set()
        position: dict[str, int] = {}  # rows named in a near pair -> their row number
        all_splits, labels, codes, hashes, text_keys, group_keys = [], [], [], [], [], []
        rows = 0
        with DatasetWriter(out, classes=clean["classes"],
                           metadata={k: clean[k] for k in CARRIED if k in clean}) as w:
            for batch in iter_batches(src):
                keys = split_keys(batch)
                splits = assign_splits(keys, fractions=fractions, seed=p.seed)
                w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits, pa.string())))
                all_splits += splits  # the same few str objects: 8 bytes a row
                labels.append(batch.column("label").to_numpy())
                codes.append(np.fromiter((code_of[s] for s in splits), np.int8, len(splits)))
                group_keys.append(np.fromiter((key64(k.encode()) for k in keys), np.int64, len(keys)))
                h, t = row_keys(batch.column(modality), modality)
                hashes.append(h)
                if t is not None:
                    text_keys.append(t)
                if wanted:
                    for k, row_id in enumerate(batch.column("id").to_pylist()):
                        if row_id in wanted:
                            position[row_id] = rows + k
                rows += batch.num_rows
            codes_all = np.concatenate(codes) if codes else np.empty(0, np.int8)
            per_split = split_counts(all_splits, np.concatenate(labels).tolist() if labels else [], clean["classes"])
            del all_splits
            leaks = cross_split_leaks(codes_all, hashes=np.concatenate(hashes) if hashes else np.empty(0, np.int64),
                                      near_keys=np.concatenate(text_keys) if text_keys else None,
                                      near=_near_positions(near, position, src))
            crossing_groups = keys_in_several_splits(np.concatenate(group_keys) if group_keys else
                                                     np.empty(0, np.int64), codes_all)
            leaks["examples"] = _examples_as_ids(leaks["examples"], src)
            gap = class_fraction_gap(per_split, fractions)
            w.close(rows_in=clean["rows"], set_aside=SetAside(),
                    extra={"fractions": fractions, "seed": p.seed, "split_class_counts": per_split,
                           "max_class_fraction_gap": gap,
                           "leakage": {**leaks, "groups_crossing_splits": crossing_groups}})
        sizes = {s: sum(c.values()) for s, c in per_split.items()}
        ok = leaks["exact_pairs"] == 0 and leaks["near_pairs"] == 0 and crossing_groups == 0
        stage.log("split %s; largest class-fraction gap %.3f; leakage check: %s", sizes, gap,
                  "no duplicate pair crosses splits" if ok else
                  f"LEAK: {leaks['exact_pairs']} exact and {leaks['near_pairs']} near duplicate pairs cross "
                  f"splits (examples in {out / 'manifest.json'})")
        stage.finish({**{f"split/{s}_rows": n for s, n in sizes.items()},
                      "split/max_class_fraction_gap": round(gap, 4),
                      "split/leakage/exact_pairs": leaks["exact_pairs"],
                      "split/leakage/near_pairs": leaks["near_pairs"],
                      "split/leakage/groups_crossing": crossing_groups,
                      "split/leakage/ok": int(ok)},
                     artifacts=[out / "manifest.json"])


def _near_positions(near: pa.Table | None, position: dict[str, int], src) -> np.ndarray | None:
    """Clean's near pairs (ids) as row-number pairs of this pass."""
    if near is None:
        return None
    try:
        return np.array([(position[a], position[b]) for a, b in zip(near.column("id").to_pylist(),
                                                                   near.column("other").to_pylist())],
                        dtype=np.int64).reshape(-1, 2)
    except KeyError as err:
        raise DataContractError(f"{src}/near_pairs.parquet names row {err.args[0]} that is not in {src}: the two "
                                "were not written by the same clean; re-run clean (`dvc repro --force clean`)") from None


def _examples_as_ids(examples: dict, src) -> dict:
    """Row numbers in the leak examples -> row ids (one more read of the id column, only on a leak)."""
    wanted = {r for groups in examples.values() for g in groups for r in g}
    if not wanted:
        return examples
    id_at, rows = {}, 0
    for batch in iter_batches(src):
        ids = batch.column("id").to_pylist()
        id_at.update({r: ids[r - rows] for r in wanted if rows <= r < rows + len(ids)})
        rows += len(ids)
    return {kind: [[id_at[r] for r in g] for g in groups] for kind, groups in examples.items()}


if __name__ == "__main__":
    run_stage(main)
