"""DVC stage `ingest`: raw source -> Parquet shards + manifest (data/ingest)."""

from components.data.contract import DatasetWriter, SetAside
from components.data.sources import open_source
from pipelines.stage import Stage, run_stage


def main() -> None:
    with Stage("ingest") as stage:
        p = stage.params.ingest
        source = open_source(p.source)
        out = stage.path(stage.paths.ingest)
        with DatasetWriter(out, classes=source.classes, shard_rows=p.shard_rows,
                           metadata={"source": p.source}) as writer:
            for batch in source.batches:
                writer.write(batch)
            manifest = writer.close(rows_in=writer.rows, set_aside=SetAside())
        stage.log("%d rows, %d classes -> %s", manifest["rows"], len(manifest["classes"]), out)
        stage.finish({"ingest/rows": manifest["rows"], "ingest/classes": len(manifest["classes"])},
                     artifacts=[out / "manifest.json"])


if __name__ == "__main__":
    run_stage(main)
