"""MLflow helpers: store set-up, flattened params, batched metric history, lineage tags."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping

import psutil

# The masking rules live in credentials.py (one place for the tracker, error messages and
# submitted jobs); re-exported here for the callers that know them from here.
from trainwise.components.tracking.credentials import MASK, is_secret_key, mask_secrets, mask_value  # noqa: F401

PIPELINE_RUN_ENV = "TRAINWISE_PIPELINE_RUN"
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and it guessed the
# GenAI view (traces, token usage) for trainwise. The value is the one the UI's own kind selector
# writes for "custom model development" (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT),
# which opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def resolve_tracking_uri(tracking_uri: str | None, root: Path) -> str:
    """env > params > SQLite in the repo."""
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or default_tracking_uri(root)


def setup_mlflow(*, tracking_uri: str | None, experiment: str, root: Path) -> str:
    """Point MLflow at the store (env > params > SQLite in the repo); return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri, root)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; left there, it would outrank
    # params.yaml for the next stage set up in this process (tests, `trainwise stage`).
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            # Keep artifacts beside the SQLite file instead of under whatever cwd runs first.
            artifact_location = (root / "mlartifacts").resolve().as_uri()
        try:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
        except MlflowException:  # created concurrently by another stage: use theirs
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    exp = client.get_experiment(exp_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind the user picked in the UI is theirs to keep
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ui_command(uri: str, root: Path) -> str:
    """The `mlflow ui` command that shows this store (relative when the store is in the repo)."""
    local = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    if uri == local:
        uri = "sqlite:///mlflow.db"
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


# MLflow 3.17's UI ignores the experiment's kind tag: it shows the GenAI or the Model training
# view by its own toggle, remembered per browser (default GenAI) and overridden by this query
# parameter. Links trainwise prints carry it, so they open on the runs table.
UI_RUNS_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into MLflow's UI that opens the experiment's runs view (or one run) in Model training."""
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}{path}?{UI_RUNS_VIEW}"


def where_to_look(uri: str, root: Path, *, experiment: str, model: str, experiment_id: str | None = None) -> str:
    if experiment_id is None:
        return f"{ui_command(uri, root)}  -> experiment '{experiment}', model '{model}'"
    if uri.startswith(("http://", "https://")):
        return f"open {ui_url(uri, experiment_id)}  (experiment '{experiment}', model '{model}')"
    return (f"{ui_command(uri, root)}, then open {ui_url(LOCAL_UI, experiment_id)}  "
            f"(experiment '{experiment}', model '{model}')")


def latest_verdict(experiment_id: str) -> str | None:
    """The verdict tag of the newest `evaluate` run, if any."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs([experiment_id], "tags.`trainwise.stage` = 'evaluate'",
                                             order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags.get("verdict") if runs else None


def flatten(d: Mapping, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists are joined so they fit MLflow's param values."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


ENV_TAG_PREFIXES = ("TRAINWISE_", "RAY_", "MLFLOW_")


def environment_tags(environ: Mapping[str, str]) -> dict[str, str]:
    """The runtime settings that shape a run (TRAINWISE_*, RAY_*, MLFLOW_*) as ``env.*`` tags, masked."""
    return mask_secrets({f"env.{k}": v for k, v in sorted(environ.items()) if k.startswith(ENV_TAG_PREFIXES)})


def dvc_locked_hashes(lock_file: Path, paths: Iterable[str]) -> dict[str, str]:
    """{path: md5} that dvc.lock records for ``paths`` as some stage's output.

    Inside ``dvc repro`` the upstream stage has been run and locked before this one starts,
    so this is the hash DVC will record for this stage's dependency. A lock entry whose size
    or file count no longer matches the path on disk (the data changed since) is left out.
    """
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    wanted = {os.path.normpath(p) for p in paths}
    found = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            rel = os.path.normpath(str(out.get("path", "")))
            if rel in wanted and out.get("md5") and _lock_entry_matches(Path(lock_file).parent / rel, out):
                found[rel] = out["md5"]
    return found


def _lock_entry_matches(path: Path, entry: Mapping) -> bool:
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        return entry.get("nfiles") == len(files) and entry.get("size") == sum(f.stat().st_size for f in files)
    return path.is_file() and entry.get("size") == path.stat().st_size


def log_history(run_id: str, rows: Iterable[Mapping[str, float]], *, step_key: str = "epoch") -> int:
    """Log per-step metrics in batches (one round trip per 1,000 values, not one per value)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(row[step_key]))
               for row in rows for k, v in row.items()
               if k != step_key and isinstance(v, (int, float)) and v == v]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    return len(metrics)


def log_trial_runs(rows: list[dict], histories: Mapping[str, list[dict]], *, param_keys: Iterable[str]) -> list[str]:
    """One MLflow child run per Tune trial (under the active run): its sampled params, every
    reported epoch, its cost, why it stopped and whether it overfit; the run's status is FAILED
    for a trial that errored. Logged after the sweep from Tune's own records, so trials need
    no access to the tracking store (and a resumed sweep logs each trial once)."""
    import mlflow

    run_ids = []
    for row in rows:
        child = mlflow.start_run(run_name=row["trial"], nested=True, tags={
            "trainwise.stage": "tune.trial", "trainwise.trial_status": row["status"],
            "trainwise.stopped_by": row.get("stopped_by", ""), "trainwise.overfit": str(row.get("overfit", False))})
        try:
            mlflow.log_params({k: row[k] for k in param_keys if k in row})
            history = histories.get(row["trial"], [])
            log_history(child.info.run_id, [{k: v for k, v in h.items() if k != "time_total_s"} for h in history])
            summary = {"cost/usd": row.get("cost/usd", 0.0), "trial/epochs": row["epochs"],
                       "trial/time_s": row.get("time_s", 0.0)}
            summary.update({f"trial/{k}": row[k] for k in row if k.startswith("best_") and row[k] == row[k]})
            mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        finally:
            mlflow.end_run(status="FAILED" if row["status"] == "error" else "FINISHED")
        run_ids.append(child.info.run_id)
    return run_ids


def pipeline_run_id() -> str:
    """One id shared by the stages of one ``dvc repro``: the key of its MLflow parent run.

    A new id, hence a new parent run, starts with every process that drives the pipeline:
    - ``TRAINWISE_PIPELINE_RUN`` when set (``trainwise run`` sets a fresh one per call; a Ray Job
      submitted by a stage inherits it; a user may set one to group hand-run stages);
    - else the nearest ``dvc`` process the stage descends from (its pid + start time, and
      ``DVC_EXP_NAME`` under ``dvc exp run``): every stage of one ``dvc repro`` agrees, a later
      repro, even of a single stage (``dvc repro -s X``), is a different process and gets a new id;
    - else (``trainwise stage X``, ``python -m trainwise.pipelines.X``) a fresh id for this process alone.
    So a stage never attaches to the parent of an older repro.
    """
    if os.environ.get(PIPELINE_RUN_ENV):
        return re.sub(r"[^\w.:-]", "_", os.environ[PIPELINE_RUN_ENV])[:200]  # used inside an MLflow filter
    try:
        for proc in psutil.Process().parents():
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in os.path.basename(proc.name()) or " dvc " in f" {cmd} " or "/dvc " in f"{cmd} ":
                seed = f"{proc.pid}:{proc.create_time()}:{os.environ.get('DVC_EXP_NAME', '')}"
                return "dvc-" + hashlib.blake2b(seed.encode(), digest_size=6).hexdigest()
    except (psutil.Error, OSError):
        pass
    return "adhoc-" + uuid.uuid4().hex[:12]


def git_commit(root: Path) -> str:
    """HEAD of the repo at ``root``; a submitted Ray job (no .git) gets it from TRAINWISE_GIT_COMMIT."""
    if os.environ.get("TRAINWISE_GIT_COMMIT"):
        return os.environ["TRAINWISE_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"
