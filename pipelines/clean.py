"""DVC stage `clean`: decode, validate, de-duplicate, find likely label errors
(data/ingest -> data/clean, plus data/clean/label_issues.csv and near_duplicate_conflicts.json)."""

from components.data.contract import DatasetWriter, iter_batches, write_csv_atomic, write_json_atomic
from components.quality.cleaning import CleanOptions, clean_dataset
from components.quality.label_issues import LabelIssueOptions
from pipelines.stage import Stage, run_stage

SUSPECT_COLUMNS = ["rank", "id", "source", "given_label", "predicted_label", "confidence", "given_label_prob",
                   "action"]


def main() -> None:
    with Stage("clean") as stage:
        p, sp = stage.params.clean, stage.params.split
        src, out = stage.path(stage.paths.ingest), stage.path(stage.paths.clean)
        raw = stage.record_input(src)
        li = p.label_issues
        options = CleanOptions(
            image_size=tuple(p.image_size), channels=p.channels, drop_duplicates=p.drop_duplicates,
            payload_length=p.payload_length, near_duplicate_distance=p.near_duplicate_distance,
            label_issues=LabelIssueOptions(policy=li.policy, max_fraction=li.max_fraction, model=li.model,
                                           folds=li.folds, workers=li.workers, top_suspects=li.top_suspects,
                                           seed=li.seed) if li.enabled else None,
            noise_rate=p.noise.rate, noise_seed=p.noise.seed,
            split_fractions={"train": sp.train, "val": sp.val, "test": sp.test}, split_seed=sp.seed)
        if li.enabled:
            from components.runtime import init_ray

            rp = stage.params.ray
            init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose)
        with DatasetWriter(out, classes=raw["classes"], metadata={"source": raw.get("source")}) as writer:
            stats = clean_dataset(iter_batches(src), writer, n_classes=len(raw["classes"]),
                                  modality=raw.get("payload", "image"), options=options, classes=raw["classes"],
                                  feature_names=raw.get("feature_names"))
            manifest = writer.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
        write_csv_atomic(out / "label_issues.csv", stats["suspects"], SUSPECT_COLUMNS)
        write_json_atomic(out / "near_duplicate_conflicts.json", stats["conflicts"])
        aside = manifest["set_aside"]
        stage.log("%d rows in, %d kept, set aside: %s", manifest["rows_in"], manifest["rows"], aside or "none")
        m = stats["metrics"]
        stage.log("duplicates: %d exact (+%d label conflicts), %d near-duplicate groups (%d disagree on the label)",
                  m["clean/exact_duplicates"], m["clean/exact_duplicate_conflicts"], m["clean/near_duplicate_groups"],
                  m["clean/near_duplicate_conflicts"])
        if "skipped" in manifest.get("label_issues", {}):
            stage.log("%s", manifest["label_issues"]["skipped"])
        elif "label_issues" in manifest:
            stage.log("label issues (%s, %d folds in %.1fs): %s; top suspects in %s", li.model, li.folds,
                      m["clean/label_issues/oof_s"], manifest["label_issues"], out / "label_issues.csv")
        stage.finish({"clean/rows_in": manifest["rows_in"], "clean/rows": manifest["rows"],
                      "clean/set_aside": sum(aside.values()),
                      **{f"clean/set_aside/{reason}": n for reason, n in aside.items()}, **m},
                     artifacts=[out / "manifest.json", out / "set_aside.jsonl", out / "label_issues.csv",
                                out / "near_duplicate_conflicts.json"])


if __name__ == "__main__":
    run_stage(main)
