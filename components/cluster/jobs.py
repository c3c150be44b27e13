"""Submit a DVC stage to a Ray cluster as a Ray Job, stream its logs, bring its outputs back.

DVC runs a stage's command where `dvc repro` was typed and has no remote execution. trainwise
bridges the two: the stage's data inputs (its non-code DVC deps) are copied to storage every
node reads, the code travels as the job's ``working_dir`` (without data, outputs, .git or the
venv: Ray caps a working_dir at 100 MiB), the job runs the stage on the cluster
(``python -m trainwise.pipelines.remote``), and its DVC outputs come back into the local workspace, so
``dvc repro`` records them as if the stage had run here.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainwise.components.cluster import storage

# Deps under these paths are code or config: they reach the job inside its working_dir.
CODE_PATHS = ("pipelines", "components", "params.yaml", "dvc.yaml", "pyproject.toml")
# Never uploaded as working_dir (data, outputs, local state); gitignore-style patterns.
WORKING_DIR_EXCLUDES = ["/.git", "/.dvc/cache", "/.dvc/tmp", "/.venv", "/data", "/models", "/metrics", "/plots",
                        "/reports", "/.trainwise", "/mlflow.db", "/mlartifacts", "/mlruns", "/dvc_plots",
                        "/benchmarks/results", "/tests", "__pycache__", "*.egg-info", ".pytest_cache",
                        # credentials kept beside a project never travel in the job's package
                        ".env", ".env.*", "*.pem", "*.key", ".netrc", "/.dvc/config.local"]
REMOTE_ENV = "TRAINWISE_REMOTE_JOB"  # set inside a submitted job: the stage runs there, never re-submits
# How Ray stops the job (read by the job's supervisor, which runs with the job's env_vars): SIGINT,
# which a stage handles like Ctrl-C (MLflow run FAILED, Ray Train / Tune stopped, nothing
# uploaded), instead of SIGTERM, which ends Python on the spot; SIGKILL after 10 s if it has not.
STOP_ENV = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "10"}


class JobError(RuntimeError):
    """The job could not be submitted, or it failed; the message says where to look."""


@dataclass(frozen=True)
class StageIO:
    name: str
    inputs: list[str]   # data deps, relative to the project root: copied through shared storage
    outputs: list[str]  # DVC outs (incl. metrics and plots): brought back after the job


def _is_code(path: str) -> bool:
    first = Path(path).parts[0] if Path(path).parts else path
    return first in CODE_PATHS or path.endswith(".py")


def stage_io(root: str | Path, name: str) -> StageIO:
    """The stage's data inputs and outputs, as dvc.yaml declares them (templating resolved)."""
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        stages = repo.stage.collect(name)
    except Exception as err:  # dvc raises several types for a missing stage
        raise JobError(f"dvc.yaml has no stage {name!r} ({err})") from err
    finally:
        repo.close()
    stage = stages[0]
    return StageIO(name=name,
                   inputs=[d.def_path for d in stage.deps if not _is_code(d.def_path)],
                   outputs=[o.def_path for o in stage.outs])


def job_entrypoint(io: StageIO, *, base: str, storage_path: str) -> str:
    args = ["python", "-m", "trainwise.pipelines.remote", io.name, "--base", base, "--storage-path", storage_path]
    for flag, paths in (("--inputs", io.inputs), ("--outputs", io.outputs)):
        if paths:
            args += [flag, *paths]
    return shlex.join(args)


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, RuntimeError from the SDK's version probe
        raise JobError(
            f"cannot reach the Ray Jobs API at {address} ({type(err).__name__}: {err}). Start the cluster, or "
            "set ray.jobs_address / RAY_API_SERVER_ADDRESS to the head's dashboard address "
            "(http://HEAD:8265); with token auth also export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN") from err


ERROR_PREFIX = "trainwise: error: "


def _stream_logs(client, job_id: str, write: Callable[[str], None], timeout_s: float) -> str | None:
    """Relay the job's logs until it ends; returns the last ``trainwise: error:`` line seen."""
    last_error: list[str] = []

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)
            last_error.extend(line.split(ERROR_PREFIX, 1)[1].strip() for line in chunk.splitlines()
                              if ERROR_PREFIX in line)

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout=timeout_s))
    except asyncio.TimeoutError:
        client.stop_job(job_id)
        raise JobError(f"Ray job {job_id} ran past {timeout_s:.0f}s (ray.job_timeout_s) and was stopped") from None
    return last_error[-1] if last_error else None


# Jobs this process submitted and still waits for: job id -> its JobSubmissionClient.
_WAITING: dict = {}


def stop_waiting_jobs() -> list[str]:
    """Stop every job this process submitted and still waits for; their ids.

    For the orphan watchdog (trainwise.components.stage_exit.watch_parent), from its own thread: its SIGINT
    alone did not always stop a job, because asyncio's handler turns it into a cancellation of the
    log stream, which Ray's log tail can swallow. The job then trained on after `dvc repro` was
    killed (tests/cluster/test_two_nodes.py saw it once)."""
    return [job_id for job_id, client in list(_WAITING.items()) if stop_quietly(client, job_id)]


def stop_quietly(client, job_id: str) -> bool:
    """Stop a job this process submitted (its submitter is going away); True if a stop was sent."""
    try:
        return bool(client.stop_job(job_id))
    except Exception:  # noqa: BLE001 - already ended, or the API is unreachable: nothing more to do here
        return False


def run_stage_job(io: StageIO, *, root: str | Path, address: str, shared: str, storage_path: str,
                  env_vars: dict[str, str], timeout_s: float = 24 * 3600,
                  write: Callable[[str], None] = print, verbose: bool = False) -> dict:
    """Submit ``io`` as a Ray Job, stream its logs, wait, fetch its outputs. Returns job facts."""
    from ray.job_submission import JobStatus

    root = Path(root).resolve()
    key = f"{io.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    base = storage.join(shared, "jobs", key)
    for rel in io.inputs:
        if not (root / rel).exists():
            raise FileNotFoundError(f"{rel}: input of stage {io.name!r} is missing; run the stages before it "
                                    f"(`dvc repro {io.name}` does)")
        storage.put(root / rel, storage.join(base, "in", rel))
    if not verbose:  # Ray's packaging logs one INFO line per ignored file
        logging.getLogger("ray").setLevel(logging.WARNING)
    client = _client(address)
    runtime_env = {"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES,
                   "env_vars": {**env_vars, **STOP_ENV, REMOTE_ENV: "1"}}
    t0 = time.perf_counter()
    try:
        job_id = client.submit_job(entrypoint=job_entrypoint(io, base=base, storage_path=storage_path),
                                   runtime_env=runtime_env, submission_id=f"trainwise-{key}",
                                   metadata={"trainwise.stage": io.name})
    except Exception as err:
        raise JobError(f"Ray refused the job for stage {io.name!r}: {err}") from err
    write(f"[{io.name}] submitted Ray job {job_id} to {address}; streaming its logs\n")
    _WAITING[job_id] = client
    try:
        stage_error = _stream_logs(client, job_id, write, timeout_s)
        status = client.get_job_status(job_id)
        while not status.is_terminal():  # the log stream can end a moment before the status flips
            time.sleep(0.5)
            status = client.get_job_status(job_id)
    except BaseException:
        # Ctrl-C, or the submitter's watchdog found `dvc repro` gone (SIGINT): a job nobody waits
        # for would train (and bill) on until ray.job_timeout_s. Stop it, then go on failing.
        if stop_quietly(client, job_id):
            write(f"[{io.name}] stopped Ray job {job_id}\n")
        raise
    finally:
        _WAITING.pop(job_id, None)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        # the stage's own `trainwise: error:` (e.g. a shape the cluster cannot hold) says what to fix
        said = f"the stage said: {stage_error}. " if stage_error else ""
        raise JobError(f"Ray job {job_id} for stage {io.name!r} ended {status.value}: {said}{info.message or ''}; "
                       f"full logs: `ray job logs {job_id} --address {address}`. Nothing was copied back.")
    for rel in io.outputs:
        storage.get(storage.join(base, "out", rel), root / rel)
    return {"job_id": job_id, "status": status.value, "wall_s": time.perf_counter() - t0, "base": base}
