"""The one door every stage's MLflow logging goes through: masked, batched, outage-proof.

A tracking server that goes away mid-stage must not cost the user the training run. Every
write goes through :class:`Tracker`; the first write that fails with a connection-type error
switches it offline, and that write and every later one are appended to a JSONL spool file
(one per run) instead. :func:`replay_spool` sends a spool to the server once it is back (the
next stage does it at start) and marks the run with the status it ended with.

``enabled=False`` (``mlflow.enabled: false``) makes every method a no-op, so a stage runs the
same without any tracking store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from trainwise.components.tracking.credentials import mask_secrets, mask_value, strip_credentials

log = logging.getLogger("trainwise")

SPOOL_SUFFIX = ".jsonl"
# Fail in seconds, not minutes, when the server is gone (MLflow's defaults: 7 retries with
# exponential back-off, 120 s timeout). Users may still override them in the environment.
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; the message says where and what to do."""


def set_fail_fast_http_env() -> None:
    for k, v in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def check_reachable(uri: str, *, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if an http(s) tracking server does not answer.

    Any HTTP answer counts as reachable (a proxy may not serve ``/health``); a refused or
    timed-out connection does not. File and database stores are checked by using them.
    """
    if not uri.startswith(("http://", "https://")):
        return
    # MLflow (requests) sends a URI's user:password as basic auth; urllib would take them for the
    # host name and call a running server unreachable. Any answer counts, so they are not sent.
    bare, _, _ = strip_credentials(uri)
    try:
        urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(f"MLflow tracking server {_safe_uri(uri)} is unreachable ({reason}). "
                                  "Start it, point MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params.yaml) "
                                  "at a running one, or set mlflow.enabled: false to run without tracking. "
                                  "Nothing was computed.") from None


def _safe_uri(uri: str) -> str:
    return mask_value(uri)


def is_outage(err: BaseException) -> bool:
    """True for errors meaning "the store is not there right now", not "the request is wrong"."""
    try:
        import requests

        if isinstance(err, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    text = str(err)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                   "timed out", "RemoteDisconnected", "Connection aborted", "database is locked",
                                   "status code 502", "status code 503", "status code 504"))


class Tracker:
    """Logging for one MLflow run; spools to ``spool_dir/<run_id>.jsonl`` while the store is down."""

    def __init__(self, *, run_id: str | None, tracking_uri: str | None, spool_dir: str | os.PathLike,
                 enabled: bool = True):
        self.run_id, self.tracking_uri, self.enabled = run_id, tracking_uri, enabled and run_id is not None
        self.spool_dir = Path(spool_dir)
        self.online = self.enabled
        self.spooled = 0
        self.skipped: list[str] = []
        self.rejected: list[str] = []
        self.outage: str | None = None

    @property
    def active(self) -> bool:
        """Logging reaches MLflow now (enabled and online)."""
        return self.enabled and self.online

    @property
    def spool_path(self) -> Path:
        return self.spool_dir / f"{self.run_id}{SPOOL_SUFFIX}"

    # -- the one place writes go through ---------------------------------------------------
    def _write(self, op: dict, send: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        if self.online:
            try:
                send()
                return
            except Exception as err:
                if not is_outage(err):  # a rejected request: tracking must not end the stage either
                    self.rejected.append(f"{op['op']}: {str(err).splitlines()[0][:200]}")
                    log.warning("MLflow rejected %s (%s); the stage goes on", op["op"], self.rejected[-1])
                    return
                self._go_offline(err)
        self._spool(op)

    def _go_offline(self, err: BaseException) -> None:
        self.online = False
        self.outage = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        log.warning("MLflow tracking store unreachable (%s); the stage goes on and spools its logging to %s",
                    self.outage, self.spool_path)

    def _spool(self, op: dict) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if op["op"] == "log_artifact":  # a snapshot: a later stage may overwrite the file before replay
            src = Path(op["path"])
            dst = self.spool_dir / f"{self.run_id}.files" / str(self.spooled) / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
            op = {**op, "path": str(dst), "artifact_path": op["artifact_path"] or (src.name if src.is_dir() else None)}
        with open(self.spool_path, "a") as f:
            f.write(json.dumps({"uri": self.tracking_uri, "run_id": self.run_id, **op}) + "\n")
        self.spooled += 1

    def _client(self):
        import mlflow

        return mlflow.MlflowClient()

    # -- what stages call --------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        params = {k: str(v) for k, v in mask_secrets(params).items()}
        self._log_batch(params=params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        tags = {k: str(v) for k, v in mask_secrets(tags).items()}
        self._log_batch(tags=tags)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0, run_id: str | None = None) -> None:
        now = int(time.time() * 1000)
        self._log_batch(metrics=[[k, float(v), now, step] for k, v in metrics.items()], run_id=run_id)

    def log_history(self, rows: Iterable[Mapping[str, float]], *, step_key: str = "epoch") -> int:
        """Per-step metrics (e.g. every epoch) in batched round trips."""
        now = int(time.time() * 1000)
        metrics = [[k, float(v), now, int(row[step_key])] for row in rows for k, v in row.items()
                   if k != step_key and isinstance(v, (int, float)) and v == v]
        for i in range(0, len(metrics), 1000):
            self._log_batch(metrics=metrics[i:i + 1000])
        return len(metrics)

    def _log_batch(self, *, metrics=(), params=None, tags=None, run_id: str | None = None) -> None:
        op = {"op": "log_batch", "metrics": list(metrics), "params": params or {}, "tags": tags or {}}
        if run_id:
            op["run_id_override"] = run_id
        self._write(op, lambda: _apply(self._client(), self.run_id, op))

    def log_artifact(self, path: str | os.PathLike, *, artifact_path: str | None = None) -> None:
        p = Path(path).resolve()
        if not p.exists():
            return
        op = {"op": "log_artifact", "path": str(p), "artifact_path": artifact_path}
        self._write(op, lambda: _apply(self._client(), self.run_id, op))

    def log_input(self, *, name: str, digest: str, context: str, source: str | os.PathLike) -> None:
        """Record a dataset the run read (MLflow's Datasets panel); no data is loaded or copied."""
        op = {"op": "log_input", "name": name, "digest": digest, "context": context, "source": str(source)}
        self._write(op, lambda: _apply(self._client(), self.run_id, op))

    def end(self, status: str) -> None:
        """End the run (fluent API: the run the stage started) with ``status``."""
        if not self.enabled:
            return
        import mlflow

        if self.online:
            try:
                mlflow.end_run(status=status)  # pops the run first, so a failure still leaves no active run
                return
            except Exception as err:
                if not is_outage(err):
                    raise
                self._go_offline(err)
        else:
            try:
                mlflow.end_run(status=status)  # offline: only pops the local run; the server may not answer
            except Exception:  # the end status is spooled just below and replayed with the rest
                pass
        self._spool({"op": "end_run", "status": status, "end_time": int(time.time() * 1000)})

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """Run a tracking call that cannot be spooled (model logging, reads); None when offline.

        A stage uses it where it can go on without the answer: training is never lost to
        tracking, and ``what`` is reported at the end as not recorded.
        """
        if not self.enabled:
            return None
        if self.online:
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if not is_outage(err):
                    raise
                self._go_offline(err)
        self.skipped.append(what)
        self._spool({"op": "note", "skipped": what})
        return None

    def report(self) -> str | None:
        """One paragraph on what happened to tracking, or None if nothing unusual did."""
        if not self.enabled or (self.online and not self.spooled):
            return None
        msg = (f"the MLflow tracking store became unreachable during this stage ({self.outage}). The stage "
               f"completed and its outputs and DVC metrics are written; {self.spooled} logging operation(s) "
               f"were spooled to {self.spool_path} and will be sent to run {self.run_id} by the next stage that "
               "starts with the store reachable.")
        if self.skipped:
            msg += f" Not recorded (cannot be replayed): {', '.join(self.skipped)}."
        return msg


def _apply(client, run_id: str, op: dict) -> None:
    """Send one (live or spooled) operation to the store."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    rid = op.get("run_id_override") or run_id
    if kind == "log_batch":
        params = [Param(k, v) for k, v in op["params"].items()]
        tags = [RunTag(k, v) for k, v in op["tags"].items()]
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
        for i in range(0, max(len(metrics), 1), 1000):
            client.log_batch(rid, metrics=metrics[i:i + 1000], params=params if i == 0 else [],
                             tags=tags if i == 0 else [])
    elif kind == "log_artifact":
        p = Path(op["path"])
        if p.is_dir():
            client.log_artifacts(rid, str(p), artifact_path=op["artifact_path"] or p.name)
        elif p.exists():
            client.log_artifact(rid, str(p), artifact_path=op["artifact_path"])
    elif kind == "log_input":
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        ds = MetaDataset(source=LocalArtifactDatasetSource(op["source"]), name=op["name"], digest=op["digest"])
        client.log_inputs(rid, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                      tags=[InputTag("mlflow.data.context", op["context"])])])
    elif kind == "end_run":
        client.set_terminated(rid, op["status"], end_time=op["end_time"])
    elif kind == "note":
        client.set_tag(rid, "trainwise.tracking_outage", f"not recorded: {op['skipped']}")


def replay_spool(spool_dir: str | os.PathLike, *, tracking_uri: str) -> list[tuple[str, int]]:
    """Send every spooled run for ``tracking_uri`` to the store; return [(run_id, ops sent)].

    A file is removed once all its operations are sent; if the store fails again part-way, the
    rest stays spooled (rewritten atomically) for the next attempt.
    """
    import mlflow

    done = []
    spool_dir = Path(spool_dir)
    if not spool_dir.is_dir():
        return done
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    for path in sorted(spool_dir.glob(f"*{SPOOL_SUFFIX}")):
        ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not ops or ops[0].get("uri") != tracking_uri:
            continue
        sent = 0
        for i, op in enumerate(ops):
            try:
                _apply(client, op["run_id"], op)
                sent += 1
            except Exception as err:
                if is_outage(err):  # gone again: keep the rest for the next attempt
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text("".join(json.dumps(o) + "\n" for o in ops[i:]))
                    tmp.replace(path)
                    return done
                log.warning("MLflow rejected spooled %s of run %s (%s); skipped", op["op"], op["run_id"],
                            str(err).splitlines()[0][:200])
        path.unlink()
        shutil.rmtree(spool_dir / f"{ops[0]['run_id']}.files", ignore_errors=True)
        done.append((ops[0]["run_id"], sent))
    return done
