"""DVC stage `embed`: every row of data/split through a pretrained backbone, once
(data/split -> data/embed: embeddings.parquet + manifest.json).

With no `train.backbone` the stage only writes ``{"backbone": null, "rows": 0}`` (no Ray, no
torch, no MLflow run), so the always-present stage costs nothing on the default pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _no_backbone(params, root: Path) -> None:
    from components.data.contract import write_json_atomic
    from components.embedding.store import write_no_backbone

    write_no_backbone(root / params.paths.embed)
    write_json_atomic(root / params.paths.metrics / "embed.json", {"embed/rows": 0, "cost/usd": 0.0})
    print("[embed] train.backbone is null: nothing to embed (wrote "
          f"{params.paths.embed}/manifest.json with backbone null)", file=sys.stderr)


def main() -> None:
    from pipelines.config import load_params

    root = Path(".").resolve()
    params = load_params(root / "params.yaml")
    if params.train.backbone is None:
        _no_backbone(params, root)
        return
    _embed()


def _embed() -> None:
    from components.embedding.batch import embed_split
    from pipelines.stage import Stage

    with Stage("embed") as stage:
        t, e = stage.params.train, stage.params.embed
        src, out = stage.path(stage.paths.split), stage.path(stage.paths.embed)
        split = stage.record_input(src)
        manifest = embed_split(src, out, split_manifest=split, backbone=t.backbone, pretrained=t.pretrained,
                               root=stage.root, batch_size=e.batch_size, concurrency=e.concurrency,
                               cpus_per_replica=e.cpus_per_replica, use_gpu=e.use_gpu, seed=t.seed,
                               ray_params=stage.params.ray, meter=stage.meter, log=stage.log)
        stage.log("embedded %d rows with %s (%d-d, weights sha256 %s…) in %.1fs (%.1f rows/s)",
                  manifest["rows"], manifest["backbone"], manifest["dim"], manifest["weights_sha256"][:12],
                  manifest["wall_s"], manifest["rows"] / max(manifest["wall_s"], 1e-9))
        stage.finish({"embed/rows": manifest["rows"], "embed/dim": manifest["dim"],
                      "embed/rows_per_s": round(manifest["rows"] / max(manifest["wall_s"], 1e-9), 2)},
                     artifacts=[out / "manifest.json"])


if __name__ == "__main__":
    from pipelines.stage import run_stage

    run_stage(main)
