"""DVC stage `clean`: decode, validate, de-duplicate (data/ingest -> data/clean)."""

from components.data.contract import DatasetWriter, iter_batches
from components.quality.cleaning import CleanOptions, clean_images
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("clean") as stage:
        p = stage.params.clean
        src, out = stage.path(stage.paths.ingest), stage.path(stage.paths.clean)
        raw = stage.record_input(src)
        options = CleanOptions(image_size=tuple(p.image_size), channels=p.channels,
                               drop_duplicates=p.drop_duplicates)
        with DatasetWriter(out, classes=raw["classes"], metadata={"source": raw.get("source")}) as writer:
            stats = clean_images(iter_batches(src), writer, n_classes=len(raw["classes"]), options=options)
            manifest = writer.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"],
                                    extra={"image_shape": stats["image_shape"]})
        aside = manifest["set_aside"]
        stage.log("%d rows in, %d kept, set aside: %s", manifest["rows_in"], manifest["rows"], aside or "none")
        stage.finish({"clean/rows_in": manifest["rows_in"], "clean/rows": manifest["rows"],
                      "clean/set_aside": sum(aside.values()),
                      **{f"clean/set_aside/{reason}": n for reason, n in aside.items()}},
                     artifacts=[out / "manifest.json", out / "set_aside.jsonl"])


if __name__ == "__main__":
    run_stage(main)
