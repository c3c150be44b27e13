"""DVC stage `clean`: decode, validate, de-duplicate (data/ingest -> data/clean, plus
data/clean/near_duplicate_conflicts.json). Likely label errors are the audit stage's job (after split)."""

from components.data.contract import DatasetWriter, iter_batches, write_json_atomic
from components.quality.cleaning import CleanOptions, clean_dataset
from components.quality.duplicates import write_near_pairs
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("clean") as stage:
        p = stage.params.clean
        src, out = stage.path(stage.paths.ingest), stage.path(stage.paths.clean)
        raw = stage.record_input(src)
        options = CleanOptions(
            image_size=tuple(p.image_size), channels=p.channels, drop_duplicates=p.drop_duplicates,
            payload_length=p.payload_length, near_duplicate_distance=p.near_duplicate_distance)
        with DatasetWriter(out, classes=raw["classes"], metadata={"source": raw.get("source")}) as writer:
            stats = clean_dataset(iter_batches(src), writer, n_classes=len(raw["classes"]),
                                  modality=raw.get("payload", "image"), options=options, classes=raw["classes"],
                                  feature_names=raw.get("feature_names"))
            manifest = writer.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
        write_json_atomic(out / "near_duplicate_conflicts.json", stats["conflicts"])
        write_near_pairs(out, stats["near_pairs"])  # split's leakage check reads them: no second search
        aside = manifest["set_aside"]
        stage.log("%d rows in, %d kept, set aside: %s", manifest["rows_in"], manifest["rows"], aside or "none")
        m = stats["metrics"]
        stage.log("duplicates: %d exact (+%d label conflicts), %d near-duplicate groups (%d disagree on the label)",
                  m["clean/exact_duplicates"], m["clean/exact_duplicate_conflicts"], m["clean/near_duplicate_groups"],
                  m["clean/near_duplicate_conflicts"])
        stage.finish({"clean/rows_in": manifest["rows_in"], "clean/rows": manifest["rows"],
                      "clean/set_aside": sum(aside.values()),
                      **{f"clean/set_aside/{reason}": n for reason, n in aside.items()}, **m},
                     artifacts=[out / "manifest.json", out / "set_aside.jsonl", out / "near_duplicate_conflicts.json"])


if __name__ == "__main__":
    run_stage(main)
