"""DVC stage `ingest`: raw source -> Parquet shards + manifest (data/ingest)."""

import os
from pathlib import Path

from trainwise.components.data.sources import Source, ingest, open_source
from trainwise.components.data.sources.trees import is_url
from trainwise.pipelines.config import IngestParams
from trainwise.pipelines.stage import Stage, run_stage


def source_from_params(p: IngestParams, root: Path) -> Source:
    """The source params.yaml's `ingest` section names; a relative local path is the repo's."""
    path = p.path if is_url(p.path) or os.path.isabs(p.path) else str(root / p.path)
    source = open_source(
        p.source, path=path, label_column=p.label_column, text_column=p.text_column, split_column=p.split_column,
        feature_columns=p.feature_columns, max_image_pixels=p.max_image_pixels,
        max_file_bytes=p.max_file_mb << 20, max_archive_bytes=p.max_archive_mb << 20, n_samples=p.n_samples, length=p.sequence_length,
        seed=p.seed, generator=p.generator, cache_dir=str(root / p.cache_dir) if p.cache_dir else None)
    if "path" in source.extra:
        source.extra["path"] = p.path  # as written in params.yaml, not this machine's absolute path
    return source


def main() -> None:
    with Stage("ingest") as stage:
        p = stage.params.ingest
        source = source_from_params(p, stage.root)
        out = stage.path(stage.paths.ingest)
        manifest = ingest(source, out, shard_rows=p.shard_rows, shard_bytes=p.shard_mb << 20,
                          metadata={"source": p.source})
        aside = manifest["set_aside"]
        stage.log("%d seen, %d rows, %d classes, set aside: %s -> %s", manifest["rows_in"], manifest["rows"],
                  len(manifest["classes"]), aside or "none", out)
        reused = source.cache.reused if source.cache is not None else 0
        if source.cache is not None:
            stage.log("%d unchanged files taken from the ingest cache (%s), not read again", reused, p.cache_dir)
        if manifest.get("labels_read_as_missing"):
            stage.log("labels read as missing, not as classes (rows set aside missing_label): %s",
                      manifest["labels_read_as_missing"])
        if manifest.get("empty_classes"):
            stage.log("warning: no usable rows in class(es) %s", manifest["empty_classes"])
        stage.finish({"ingest/rows_in": manifest["rows_in"], "ingest/rows": manifest["rows"],
                      "ingest/classes": len(manifest["classes"]),
                      "ingest/set_aside": sum(aside.values()), "ingest/reused": reused,
                      **{f"ingest/set_aside/{reason}": n for reason, n in aside.items()}},
                     artifacts=[out / "manifest.json", out / "set_aside.jsonl"])


if __name__ == "__main__":
    run_stage(main)
