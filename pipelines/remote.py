"""A stage on a Ray cluster: the submitting side (`submit`, used by `trainwise submit` and by any
stage listed in ``ray.submit`` when `dvc repro` runs it) and the job side (`python -m
trainwise.pipelines.remote STAGE ...`, the Ray Job's entrypoint on the cluster).

On the cluster the job fetches the stage's inputs from the shared storage into its working
dir, points ``ray.storage_path`` at shared storage (checkpoints and Tune state must survive
nodes), runs the stage exactly as DVC would (``python -m pipelines.<stage>``), and uploads the
stage's outputs for the submitter to bring back.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

from trainwise.components.cluster import storage
from trainwise.components.cluster.jobs import REMOTE_ENV, JobError, run_stage_job, stage_io, stop_waiting_jobs
from trainwise.components.ray_start import ray_verbose
from trainwise.components.stage_exit import ORPHANED, Orphaned, watch_parent
from trainwise.components.tracking.credentials import strip_credentials
from trainwise.components.tracking.mlflow_runs import PIPELINE_RUN_ENV, default_tracking_uri, git_commit, pipeline_run_id
from trainwise.pipelines.config import ConfigError, Params
from trainwise.pipelines.stage_error import StageError

GIT_COMMIT_ENV = "TRAINWISE_GIT_COMMIT"
# Settings that travel to the job when set here. Nothing secret: a job's runtime_env is readable
# by anyone with access to the cluster's Jobs API or dashboard, and kept in its job history.
PASS_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "TRAINWISE_RAY_VERBOSE",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
# Credentials the job side reads from its own environment (the nodes' env, a Kubernetes secret,
# an instance role): never sent, unless ray.forward_secrets names them (with a warning).
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_CLIENT_CERT_PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY",
              "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "HF_TOKEN", "RAY_AUTH_TOKEN")


def submitted_here(name: str) -> bool:
    """True when this stage is to run as a Ray Job rather than in this process."""
    if os.environ.get(REMOTE_ENV):
        return False
    try:
        from trainwise.pipelines.config import load_params

        return name in load_params().ray.submit
    except (ConfigError, FileNotFoundError):
        return False  # the stage itself reports params errors


def jobs_address(params: Params) -> str:
    address = os.environ.get("RAY_API_SERVER_ADDRESS") or params.ray.jobs_address
    if not address:
        raise ConfigError("ray.jobs_address: stages listed in ray.submit need the cluster's Jobs API address "
                          "(http://HEAD:8265); set it in params.yaml or export RAY_API_SERVER_ADDRESS")
    return address


def _tracking_uri(params: Params, root: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri or default_tracking_uri(root)
    if uri.startswith("sqlite:") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _without_credentials(uri: str) -> tuple[str, bool]:
    """``uri`` without a user:password part (http://user:pw@host -> http://host); True if it had one."""
    bare, user, password = strip_credentials(uri)
    return bare, bool(user or password)


def job_env(params: Params, environ: dict[str, str], *, tracking_uri: str, name: str,
            warn=lambda msg: print(msg, file=sys.stderr)) -> dict[str, str]:
    """The environment variables a submitted job gets: non-secret settings only.

    Credentials are for the cluster to hold (docs/cluster.md); one that ray.forward_secrets
    names is sent anyway, with a warning each time. Credentials inside the tracking URI are cut off.
    """
    uri, had_credentials = _without_credentials(tracking_uri)
    if had_credentials:
        warn(f"[{name}] warning: the MLflow tracking URI holds a user name/password; the job gets {uri} without "
             "them. Give the cluster's nodes MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/cluster.md)")
    env = {"MLFLOW_TRACKING_URI": uri, **{k: environ[k] for k in PASS_ENV if environ.get(k)}}
    for key in params.ray.forward_secrets:
        if not environ.get(key):
            warn(f"[{name}] warning: ray.forward_secrets names {key}, which is not set here; not sent")
            continue
        warn(f"[{name}] warning: sending {key} to the Ray job (ray.forward_secrets): anyone with access to the "
             "cluster's Jobs API or dashboard can read it there. Prefer giving the cluster's nodes their own "
             "credentials (docs/cluster.md)")
        env[key] = environ[key]
    return env


def submit(name: str, *, root: str | os.PathLike = ".", write=None) -> dict:
    """Run stage ``name`` on the Ray cluster of params ``ray.jobs_address``; outputs land here."""
    from trainwise.pipelines.config import load_params

    root = Path(root).resolve()
    params = load_params(root / "params.yaml")
    address = jobs_address(params)
    shared = params.ray.shared_storage
    if not shared:
        raise ConfigError("ray.shared_storage: submitting a stage needs storage every cluster node reads "
                          "(a shared path or an fsspec URL such as s3://bucket/trainwise)")
    storage_path = params.ray.storage_path
    if "://" not in storage_path and not os.path.isabs(storage_path):
        storage_path = storage.join(shared, "ray")  # a relative path would die with the job's working dir
    uri = _tracking_uri(params, root)
    host = urlparse(address).hostname or ""
    if uri.startswith(("sqlite:", "file:")) and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[{name}] warning: MLflow store {uri} is a local file; nodes of a remote cluster cannot write it. "
              "Use a tracking server (mlflow.tracking_uri / MLFLOW_TRACKING_URI).", file=sys.stderr)
    env = {**job_env(params, dict(os.environ), tracking_uri=uri, name=name),
           PIPELINE_RUN_ENV: pipeline_run_id(), GIT_COMMIT_ENV: git_commit(root)}
    # `dvc repro` killed while the job runs: this process notices (as a stage would), stops the job
    # through the Jobs API from the watchdog's thread, then gets SIGINT (issue 16: no orphans).
    def say(msg: str) -> None:
        print(f"[{name}] {msg}", file=sys.stderr, flush=True)

    def stop_jobs() -> None:
        say("stopping its Ray job")
        for job_id in stop_waiting_jobs():
            say(f"stopped Ray job {job_id}")

    watch_parent(log=say, on_orphaned=stop_jobs)
    try:
        return run_stage_job(stage_io(root, name), root=root, address=address, shared=shared,
                             storage_path=storage_path, env_vars=env, timeout_s=params.ray.job_timeout_s,
                             write=write or (lambda s: print(s, end="", flush=True)),
                             verbose=ray_verbose(params.ray.verbose))
    except JobError as err:
        raise StageError(str(err)) from err
    except KeyboardInterrupt:
        if ORPHANED.is_set():
            raise Orphaned(f"the process that started stage {name} is gone; its Ray job was stopped") from None
        raise


def _job_params(storage_path: str) -> None:
    """The job's copy of params.yaml: never re-submit, checkpoints on shared storage."""
    path = Path("params.yaml")
    data = yaml.safe_load(path.read_text())
    ray = data.setdefault("ray", {})
    ray.update(submit=[], storage_path=storage_path, address=None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    """The job side: inputs in, the stage, outputs out. Runs in the job's working dir."""
    ap = argparse.ArgumentParser(prog="python -m trainwise.pipelines.remote")
    ap.add_argument("stage")
    ap.add_argument("--base", required=True, help="this job's folder in the shared storage")
    ap.add_argument("--storage-path", required=True)
    ap.add_argument("--inputs", nargs="*", default=[])
    ap.add_argument("--outputs", nargs="*", default=[])
    args = ap.parse_args(argv)
    for rel in args.inputs:
        storage.get(storage.join(args.base, "in", rel), Path(rel))
    _job_params(args.storage_path)
    from trainwise.components.project.version import version_problem  # the cluster's trainwise must be the project's

    problem = version_problem(yaml.safe_load(Path("params.yaml").read_text()).get("trainwise_version"))
    if problem:
        print(f"trainwise: error: on the cluster: {problem}", file=sys.stderr)
        return 2
    stage = subprocess.Popen([sys.executable, "-m", f"trainwise.pipelines.{args.stage}"], env={**os.environ, REMOTE_ENV: "1"})
    while True:
        try:
            rc = stage.wait()
            break
        except KeyboardInterrupt:
            # The job was stopped (trainwise.components.cluster.jobs.STOP_ENV: SIGINT to every process of the
            # job): the stage got it too and is ending its MLflow run and Ray work; wait for that
            # rather than kill it (subprocess.call would, 0.25 s later).
            continue
    if rc != 0:
        print(f"trainwise: stage {args.stage} failed on the cluster (exit {rc})", file=sys.stderr)
        return rc
    missing = [rel for rel in args.outputs if not Path(rel).exists()]
    if missing:
        print(f"trainwise: stage {args.stage} did not write its outputs {missing}", file=sys.stderr)
        return 1
    for rel in args.outputs:
        storage.put(Path(rel), storage.join(args.base, "out", rel))
    print(f"trainwise: stage {args.stage} done on the cluster; outputs uploaded to {args.base}/out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
