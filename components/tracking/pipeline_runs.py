"""One MLflow parent run per pipeline run (``dvc repro``), the stage runs nested under it.

The MLflow runs table then shows one row per ``dvc repro`` that opens onto its stages (and the
tune run onto its trials), instead of eight unrelated rows per repro. The parent carries what
identifies the pipeline run: its id (:func:`~trainwise.components.tracking.mlflow_runs.pipeline_run_id`
says when a new one starts), the git commit, a hash of the validated params, and the total cost
of the stage runs under it, updated by every stage as it ends.

The parent is found by tag, not kept in a state file: stages of one repro may run in different
processes, on different machines (a stage submitted as a Ray Job), and a state file could be
left behind by an older repro.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Mapping

PIPELINE_STAGE = "pipeline"   # the parent's `trainwise.stage` tag: filters like the stage runs' tags do
STAGE_TAG, PIPELINE_TAG, PARENT_TAG = "trainwise.stage", "trainwise.pipeline_run", "mlflow.parentRunId"


def params_hash(params: Mapping) -> str:
    """Short hash of the validated params (defaults included): equal hashes, equal settings."""
    return hashlib.blake2b(json.dumps(params, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _parents(client, experiment_id: str, pipeline_run: str) -> list:
    runs = client.search_runs([experiment_id], f"tags.`{PIPELINE_TAG}` = '{pipeline_run}' and "
                                               f"tags.`{STAGE_TAG}` = '{PIPELINE_STAGE}'", max_results=50)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def find_or_create_pipeline_run(experiment_id: str, *, pipeline_run: str, tags: Mapping[str, str],
                                client=None) -> str:
    """The run id of ``pipeline_run``'s parent run in the experiment, created (with ``tags``) if
    no stage of it has run yet. A parent found is marked RUNNING again while a stage runs."""
    import mlflow

    client = client or mlflow.MlflowClient()
    found = _parents(client, experiment_id, pipeline_run)
    if found:
        parent = found[0]
        if parent.info.status != "RUNNING":
            client.update_run(parent.info.run_id, status="RUNNING")
        return parent.info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {pipeline_run}", tags={
        **tags, STAGE_TAG: PIPELINE_STAGE, PIPELINE_TAG: pipeline_run,
        "mlflow.note.content": f"pipeline run {pipeline_run}: one row per `dvc repro`; its stage runs are nested "
                               "below (expand the row), the tune run holds one child run per trial."})
    # Two stages of one pipeline run starting at the same moment (a parallel executor, stages
    # submitted as Ray Jobs) may both have created one: the oldest wins, the other is removed.
    found = _parents(client, experiment_id, pipeline_run)
    if found and found[0].info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)
        return found[0].info.run_id
    return run.info.run_id


def update_pipeline_run(parent_run_id: str, *, experiment_id: str, client=None) -> dict[str, float]:
    """Sum the stage runs under the parent into its metrics and set its status from theirs.

    ``pipeline/cost/usd`` is what this pipeline run's stages spent (a repro that re-ran two
    stages costs those two; the report's total covers every stage behind the current outputs).
    Tune trials are children of the tune run, whose cost already covers them. Status: FAILED if
    a stage failed, RUNNING while one runs, else FINISHED (with the end time of the last stage).
    """
    import mlflow
    from mlflow.entities import Metric

    client = client or mlflow.MlflowClient()
    stages = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=1000)
    totals = {"pipeline/cost/usd": sum(r.data.metrics.get("cost/usd", 0.0) for r in stages),
              "pipeline/wall_s": sum(r.data.metrics.get("cost/wall_s", 0.0) for r in stages),
              "pipeline/cpu_hours": sum(r.data.metrics.get("cost/cpu_hours", 0.0) for r in stages),
              "pipeline/stages": float(len(stages))}
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, len(stages)) for k, v in totals.items()])
    statuses = {r.info.status for r in stages}
    if "FAILED" in statuses or "KILLED" in statuses:
        client.set_terminated(parent_run_id, "FAILED", end_time=now)
    elif "RUNNING" not in statuses and "SCHEDULED" not in statuses:
        client.set_terminated(parent_run_id, "FINISHED", end_time=now)
    return totals
