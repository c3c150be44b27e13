"""DVC stage `embed`: every row of data/split through a pretrained backbone, once
(data/split -> data/embed: embeddings.parquet + manifest.json).

With no `train.backbone` the stage only writes ``{"backbone": null, "rows": 0}`` (no Ray, no
torch, no MLflow run), so the always-present stage costs nothing on the default pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _no_backbone(params, root: Path) -> None:
    from components.data.contract import write_json_atomic
    from components.embedding.store import write_no_backbone

    write_no_backbone(root / params.paths.embed)
    write_json_atomic(root / params.paths.metrics / "embed.json", {"embed/rows": 0, "cost/usd": 0.0})
    print("[embed] train.backbone is null: nothing to embed (wrote "
          f"{params.paths.embed}/manifest.json with backbone null)", file=sys.stderr)


def main() -> None:
    """No backbone: done here, importing neither torch, Ray nor MLflow (the stage runs in every
    `dvc repro`). A backbone: the full stage (:func:`_embed`) under run_stage's error handling."""
    from pipelines.config import ConfigError, load_params

    root = Path(".").resolve()
    try:
        params = load_params(root / "params.yaml")
    except ConfigError as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        sys.exit(2)
    if params.train.backbone is None:
        _no_backbone(params, root)
        return
    from pipelines.stage import run_stage

    run_stage(_embed)


def _embed() -> None:
    import time

    from components.data.contract import read_table
    from components.models.backbone_names import mismatch
    from components.embedding.batch import embed_images
    from components.embedding.store import write_embeddings
    from components.models.backbones import BackboneError, build_backbone
    from components.runtime import init_ray
    from pipelines.stage import Stage, StageError

    with Stage("embed") as stage:
        t, e, rp = stage.params.train, stage.params.embed, stage.params.ray
        src, out = stage.path(stage.paths.split), stage.path(stage.paths.embed)
        split = stage.record_input(src)
        why = mismatch(t.backbone, split.get("payload"))  # an image backbone on text rows, or the reverse
        if why:
            raise StageError(f"params.yaml: {why}")
        try:  # here, before Ray starts: a bad name or weights file fails in a second, naming the param
            info = build_backbone(t.backbone, t.pretrained, seed=t.seed, root=stage.root).info
        except BackboneError as err:
            raise StageError(str(err)) from None
        resources = init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose)
        per = {"GPU": 1.0} if e.use_gpu else {"CPU": float(e.cpus_per_replica)}
        key = next(iter(per))
        replicas = e.concurrency or max(1, int(resources.get(key, 0) // per[key]))
        stage.meter.reserve(cpus=replicas * e.cpus_per_replica, gpus=replicas if e.use_gpu else 0)
        stage.log("embedding %d rows with %s (%s weights, sha256 %s...) on %d replica(s)", split["rows"],
                  info.name, info.weights, info.weights_sha256[:12], replicas)
        t0 = time.perf_counter()
        by_id = embed_images([src / s for s in split["shards"]], payload=split["payload"],
                             image_shape=tuple(split["image_shape"]) if split.get("image_shape") else None,
                             name=t.backbone, pretrained=t.pretrained, seed=t.seed, root=str(stage.root),
                             batch_size=e.batch_size, replicas=replicas, cpus_per_replica=e.cpus_per_replica,
                             use_gpu=e.use_gpu, log=stage.log)
        wall = time.perf_counter() - t0
        rows = read_table(src, columns=["id", "split"])
        ids, splits = rows.column("id").to_pylist(), rows.column("split").to_pylist()
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise StageError(f"embed: {len(missing)} rows came back without an embedding (e.g. {missing[:3]})")
        manifest = write_embeddings(out, ids=ids, splits=splits, embeddings=np.stack([by_id[i] for i in ids]),
                                    manifest={**info.manifest(), "pretrained": t.pretrained,
                                              "source_content_hash": split["content_hash"],
                                              "replicas": replicas, "wall_s": round(wall, 2)})
        stage.log("embedded %d rows into %d-d vectors in %.1fs (%.1f rows/s)", manifest["rows"], manifest["dim"],
                  wall, manifest["rows"] / max(wall, 1e-9))
        stage.finish({"embed/rows": manifest["rows"], "embed/dim": manifest["dim"],
                      "embed/rows_per_s": round(manifest["rows"] / max(wall, 1e-9), 2)},
                     artifacts=[out / "manifest.json"])


if __name__ == "__main__":
    main()
