"""DVC stage `split`: add a stable, group-preserving `split` column and check for leakage
(data/clean -> data/split)."""

import numpy as np
import pyarrow as pa

from components.data.contract import DatasetWriter, SetAside, iter_batches
from components.data.splitting import assign_splits, class_fraction_gap, split_counts, split_keys
from components.quality.duplicates import cross_split_leaks, signatures
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
        all_splits, all_labels, all_keys, hashes, vectors, keys = [], [], [], [], [], []
        with DatasetWriter(out, classes=clean["classes"],
                           metadata={k: clean[k] for k in CARRIED if k in clean}) as w:
            for batch in iter_batches(src):
                group_keys = split_keys(batch)
                splits = assign_splits(group_keys, fractions=fractions, seed=p.seed)
                w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits, pa.string())))
                all_splits += splits
                all_keys += group_keys
                all_labels += batch.column("label").to_pylist()
                h, v, k = signatures(batch.column(modality), modality, image_shape=clean.get("image_shape"))
                hashes += h
                vectors += [] if v is None else list(v)
                keys += [] if k is None else k
            per_split = split_counts(all_splits, all_labels, clean["classes"])
            leaks = cross_split_leaks(all_splits, hashes=hashes,
                                      near_vectors=np.stack(vectors) if vectors else None,
                                      near_keys=keys or None, near_distance=near_distance)
            crossing_groups = sum(1 for g in _splits_per_group(all_keys, all_splits).values() if len(g) > 1)
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


def _splits_per_group(keys, splits) -> dict:
    seen: dict = {}
    for k, s in zip(keys, splits):
        seen.setdefault(k, set()).add(s)
    return seen


if __name__ == "__main__":
    run_stage(main)
