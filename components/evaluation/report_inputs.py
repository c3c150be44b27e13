"""What the report reads besides metrics: the audit stage's label suspects (with thumbnails) and
the MLflow runs of this pipeline run. Everything here returns None when its source does not
exist, so the report can say "not available" instead of breaking."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from trainwise.components.data.contract import DataContractError, iter_batches, read_images, read_manifest

# Written by the audit stage beside its manifest (`label_issues.csv`, ranked: least self-confident
# first): one row per likely label error with at least `id`; the report shows every other column it
# finds (given / predicted label, confidence...). The other names are accepted for hand-made files.
LABEL_SUSPECTS = ("label_issues.csv", "label_suspects.jsonl", "label_suspects.csv")


def read_label_suspects(audit_dir: str | Path, *, k: int) -> tuple[list[dict] | None, str]:
    """(the ``k`` most confident suspects, or None when no suspects file exists; the file name looked for)."""
    audit_dir = Path(audit_dir)
    for name in LABEL_SUSPECTS:
        p = audit_dir / name
        if not p.exists():
            continue
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        else:
            with open(p) as f:
                rows = list(csv.DictReader(f))
        conf_key = next((c for c in ("confidence", "score", "self_confidence") if rows and c in rows[0]), None)
        if conf_key and not (rows and "rank" in rows[0]):  # a ranked file keeps its order
            rows.sort(key=lambda r: -float(r[conf_key] or 0))
        return [{c: v for c, v in r.items() if not isinstance(v, (list, dict))} for r in rows[:k]], name
    return None, LABEL_SUSPECTS[0]


def _decode(payload: bytes, shape) -> np.ndarray | None:
    from trainwise.components.data.images import decode_image  # the one decoder: thumbnails look as clean saw them

    try:
        return decode_image(payload, size=(shape[0], shape[1]), channels=shape[2])
    except Exception:  # a corrupt file is exactly what clean quarantines: no thumbnail, not an error
        return None


def image_thumbnails(ids: list[str], *, clean_dir: str | Path, ingest_dir: str | Path | None = None
                     ) -> dict[str, np.ndarray]:
    """(H, W, C) uint8 images of ``ids``: from the cleaned dataset, else decoded from ingest (rows
    that clean set aside are only there). Non-image datasets give {}."""
    want, found = set(ids), {}
    try:
        m = read_manifest(clean_dir)
    except DataContractError:
        return {}
    if m.get("payload") != "image" or not want:
        return {}
    h, w, c = m["image_shape"]
    # Streamed, and only the wanted rows are decoded: a handful of thumbnails, not every photo
    found.update(read_images(clean_dir, want))
    rest = want - set(found)
    if rest and ingest_dir is not None:
        try:
            for batch in iter_batches(ingest_dir):
                ids_here = batch.column("id").to_pylist()
                for k in (k for k, i in enumerate(ids_here) if i in rest):
                    img = _decode(batch.column("image")[k].as_py(), (h, w, c))
                    if img is not None:
                        found[ids_here[k]] = img
        except (DataContractError, FileNotFoundError):
            return found
    return found


def text_snippets(ids: list[str], *, clean_dir: str | Path, chars: int = 200) -> dict[str, str]:
    """The first ``chars`` characters of the text of each of ``ids`` (a text dataset; else {})."""
    want, found = set(ids), {}
    try:
        m = read_manifest(clean_dir)
    except DataContractError:
        return {}
    if m.get("payload") != "text" or not want:
        return {}
    for batch in iter_batches(clean_dir):
        ids_here = batch.column("id").to_pylist()
        for k in (k for k, i in enumerate(ids_here) if i in want):
            found[ids_here[k]] = str(batch.column("text")[k].as_py() or "")[:chars]
    return found


def near_duplicate_ids(split_manifest: dict | None, *, members: int = 4) -> tuple[list[str], list[list[str]]]:
    """(ids of the near misses, pairwise; the sample groups' first ``members`` ids) from the split manifest."""
    nd = (split_manifest or {}).get("near_duplicate_groups") or {}
    pairs = [i for m in nd.get("near_misses") or [] for i in (m["id"], m["other"])]
    return pairs, [g["ids"][:members] for g in nd.get("sample") or []]


def pipeline_runs(experiment_id: str, pipeline_run: str, *, tracking_uri: str) -> list[dict]:
    """One row per MLflow run of this pipeline run (its parent run, stage "pipeline", first; then
    the stage runs; not tune trials): stage, run id, status, and a link when the tracking store
    is a server (opening MLflow's Model training view)."""
    import mlflow

    from trainwise.components.tracking.mlflow_runs import ui_url

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], f"tags.`trainwise.pipeline_run` = '{pipeline_run}'", order_by=["attributes.start_time ASC"],
        max_results=200)
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None
    return [{"stage": r.data.tags.get("trainwise.stage", "?"), "run_id": r.info.run_id, "status": r.info.status,
             **({"url": ui_url(base, experiment_id, r.info.run_id)} if base else {})}
            for r in runs]
