"""DVC stage `audit`: likely label errors, found out of fold on the train rows and acted on there only
(data/split + data/embed -> data/audit, plus data/audit/label_issues.csv)."""

from trainwise.components.atomic_io import write_csv_atomic
from trainwise.components.data.contract import DatasetWriter, iter_batches
from trainwise.components.embedding.store import read_embeddings
from trainwise.components.quality.audit import NoiseOptions, audit_dataset
from trainwise.components.quality.label_issues import LabelIssueOptions
from trainwise.components.tracking.mlflow_runs import flatten
from trainwise.pipelines.stage import Stage, run_stage

SUSPECT_COLUMNS = ["rank", "id", "split", "source", "given_label", "predicted_label", "confidence",
                   "given_label_prob", "action"]
# What audit_dataset's first pass reads of each row when it needs no payload (components/quality/audit.py _pass1).
PASS1_COLUMNS = ["id", "label", "split", "source"]
# What the split stage wrote that the audit output carries unchanged (the writer recomputes the rest).
WRITER_KEYS = ("rows", "rows_in", "classes", "class_counts", "set_aside", "payload", "schema", "shards",
               "content_hash", "split_class_counts", "extends")


def main() -> None:
    with Stage("audit") as stage:
        p, li = stage.params.clean, stage.params.clean.label_issues
        src, out = stage.path(stage.paths.split), stage.path(stage.paths.audit)
        split = stage.record_input(src)
        # the audit's params live in `clean` (where users have them); the run logs the ones it reads
        stage.tracker.log_params(flatten(p.model_dump(mode="json", include={"label_issues", "noise"}), "clean."))
        options = LabelIssueOptions(**li.model_dump(exclude={"enabled"})) if li.enabled else None
        use_ray = options is not None and split["rows"] >= li.ray_min_rows
        if use_ray:
            from trainwise.components.ray_start import init_ray

            rp = stage.params.ray
            init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose)
            # the folds are 1-CPU Ray tasks, `workers` at once (no more than there are folds): the stage
            # holds that many CPUs, not its own one
            stage.meter.reserve(cpus=min(li.workers, li.folds))
        embeddings = read_embeddings(stage.path(stage.paths.embed)) if options is not None else None
        # data/audit extends data/split: its shards hold id, label and the audit's columns; the payload
        # stays where clean wrote it (the second pass reads only ids and labels)
        with DatasetWriter(out, classes=split["classes"], base=src,
                           metadata={k: v for k, v in split.items() if k not in WRITER_KEYS}) as writer:
            # with embeddings (or no search) pass 1 needs no payload: reading it would cost the photos' pixels
            # (split's columns joined with clean's payload) for nothing; without, it reduces the payload
            first = iter_batches(src) if options is not None and embeddings is None else \
                iter_batches(src, columns=PASS1_COLUMNS)
            stats = audit_dataset(first, lambda: iter_batches(src), writer,
                                  rewind_rows=lambda: iter_batches(src, columns=["id", "label"]),
                                  modality=split.get("payload", "image"), classes=split["classes"],
                                  image_shape=split.get("image_shape"), options=options,
                                  noise=NoiseOptions(rate=p.noise.rate, seed=p.noise.seed), embeddings=embeddings,
                                  use_ray=use_ray, log=stage.log)
            manifest = writer.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
        write_csv_atomic(out / "label_issues.csv", stats["suspects"], SUSPECT_COLUMNS)
        m = stats["metrics"]
        if options is not None and "audit/label_issues/found" in m:
            stage.log("label issues (%s on %s, %d folds %s, %.1fs): %d suspects (train %d, val %d, test %d; "
                      "val/test only flagged); top %d in %s", li.model, manifest["label_issues"]["features"],
                      li.folds, "as Ray tasks" if use_ray else f"in-process, < ray_min_rows {li.ray_min_rows}",
                      m["audit/label_issues/oof_s"], m["audit/label_issues/found"],
                      m["audit/label_issues/found_train"], m["audit/label_issues/found_val"],
                      m["audit/label_issues/found_test"], len(stats["suspects"]), out / "label_issues.csv")
        # The one line that says whether the audit changed any training data, and why (also in
        # the manifest, the MLflow run and the report).
        stage.log("label audit: %s", stats["decision"])
        stage.tracker.set_tags({"audit.decision": stats["decision"][:5000]})
        stage.finish(m, artifacts=[out / "manifest.json", out / "set_aside.jsonl", out / "label_issues.csv"])


if __name__ == "__main__":
    run_stage(main)
