"""DVC stage `split`: add a stable, id-derived `split` column (data/clean -> data/split)."""

import pyarrow as pa

from components.data.contract import DatasetWriter, SetAside, iter_batches
from components.data.splitting import assign_splits, split_counts
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("split") as stage:
        p = stage.params.split
        src, out = stage.path(stage.paths.clean), stage.path(stage.paths.split)
        clean = stage.record_input(src)
        fractions = {"train": p.train, "val": p.val, "test": p.test}
        all_splits, all_labels = [], []
        with DatasetWriter(out, classes=clean["classes"],
                           metadata={"source": clean.get("source"), "image_shape": clean.get("image_shape")}) as w:
            for batch in iter_batches(src):
                splits = assign_splits(batch.column("id").to_pylist(), fractions=fractions, seed=p.seed)
                w.write(pa.Table.from_batches([batch]).append_column("split", pa.array(splits, pa.string())))
                all_splits += splits
                all_labels += batch.column("label").to_pylist()
            per_split = split_counts(all_splits, all_labels, clean["classes"])
            w.close(rows_in=clean["rows"], set_aside=SetAside(),
                    extra={"fractions": fractions, "seed": p.seed, "split_class_counts": per_split})
        sizes = {s: sum(c.values()) for s, c in per_split.items()}
        stage.log("split %s", sizes)
        stage.finish({f"split/{s}_rows": n for s, n in sizes.items()}, artifacts=[out / "manifest.json"])


if __name__ == "__main__":
    run_stage(main)
