"""Stages against a real `mlflow server` (127.0.0.1, a free port), and what happens when it dies.

Not a mock: the server is started as a subprocess in its own process group and killed with
SIGKILL, the way a crashed or unplugged server looks to a client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.demo_data import write_digits_split
from trainwise.pipelines.stage import SPOOL_DIR, Stage
from trainwise.pipelines.stage_error import StageError
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, store: Path, port: int):
        self.store, self.port, self.proc = store, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 180) -> "MlflowServer":
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts")],
            stdout=open(self.store / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
            except OSError:
                assert self.proc.poll() is None, (self.store / "server.log").read_text()[-2000:]
                time.sleep(0.5)
                continue
            # /health answers before the tracking store is set up (the first store request
            # creates the SQLite schema, seconds on a busy machine): warm it with one real
            # request, with a long timeout, so a stage's short-timeout client is not the first.
            try:
                urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
                                       timeout=max(deadline - time.monotonic(), 10)).close()
            except urllib.error.HTTPError:
                pass  # the store answered (an error status is still an answer)
            return self
        self.kill()
        raise TimeoutError(f"mlflow server did not answer in {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL the server's process group (the CLI, uvicorn and its job runner): a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def project(tmp_path):
    write_digits_split(tmp_path / "data")
    return tmp_path


def _params(root: Path, uri: str) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({
        "paths": {"ingest": "data/ingest", "clean": "data/clean", "split": "data/split"},
        "mlflow": {"tracking_uri": uri, "experiment": "outage"}}))


def test_an_unreachable_server_stops_the_stage_at_start_in_seconds(project):
    _params(project, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.baseline"], cwd=project, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is unreachable" in proc.stderr and "mlflow.enabled: false" in proc.stderr
    assert "Nothing was computed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (project / "metrics").exists()  # before any compute
    assert time.monotonic() - t0 < 180          # imports included (slow on a loaded machine); the check: next test


def test_server_killed_mid_stage_spools_then_replays_at_the_next_stage(project, capfd):
    server = MlflowServer(project / "server", _free_port()).start()
    try:
        _params(project, server.uri)
        with Stage("train", root=project) as stage:
            stage.record_input(project / "data/split")   # online: tags and dataset inputs reach the server
            server.kill()                                 # the server dies mid-run
            stage.tracker.log_history([{"epoch": e, "train/loss": 1.0 / e} for e in (1, 2, 3)])
            model = stage.tracker.call("the model (log + register)", lambda: mlflow.MlflowClient().search_runs(["0"]))
            stage.finish({"train/epochs_run": 3}, artifacts=[project / "data/split/manifest.json"])
        run_id = stage.run_id
        assert model is None
        # Training completed: outputs and DVC metrics are there, and the stage said what happened.
        metrics = json.loads((project / "metrics/train.json").read_text())
        assert metrics["train/epochs_run"] == 3 and metrics["cost/usd"] > 0
        spool = project / SPOOL_DIR / f"{run_id}.jsonl"
        ops = [json.loads(line)["op"] for line in spool.read_text().splitlines()]
        assert ops[0] == "log_batch" and ops[-1] == "end_run" and "log_artifact" in ops and "note" in ops
        said = capfd.readouterr().err  # what the user sees
        assert "became unreachable" in said and str(spool) in said and "Not recorded (cannot be replayed): the model" \
            in said

        server.start()                                    # back, same store
        with Stage("evaluate", root=project) as nxt:      # the next stage replays the spool first
            nxt.finish({})
        assert not spool.exists()
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == \
            [(1, 1.0), (2, 0.5), (3, 1 / 3)]
        assert run.data.metrics["train/epochs_run"] == 3 and run.data.metrics["cost/usd"] == metrics["cost/usd"]
        assert [a.path for a in client.list_artifacts(run_id)] == ["manifest.json"]
        assert "not recorded: the model" in run.data.tags["trainwise.tracking_outage"]
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"split/train", "split/val", "split/test"}
        assert f"replayed {len(ops)} spooled operation(s) of run {run_id}" in capfd.readouterr().err
    finally:
        server.kill()


def test_a_stage_refuses_to_start_without_the_server_and_says_so_in_process(project):
    _params(project, f"http://127.0.0.1:{_free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StageError, match="unreachable"):
        Stage("split", root=project).__enter__()
    assert time.monotonic() - t0 < 30  # MLflow's own retries would take minutes (7, exponential back-off)


# A stand-in stage for `dvc repro`: the real Stage (MLflow run, cost meter, metrics file); `tune`
# also logs two trial runs the way the tune stage does.
_TINY_STAGE = '''
import sys
from trainwise.components.tracking.mlflow_runs import log_trial_runs
from trainwise.pipelines.stage import Stage

name = sys.argv[1]
with Stage(name) as stage:
    if name == "tune":
        rows = [{"trial": f"t{i}", "status": "ok", "epochs": 1, "lr": 0.1 * (i + 1), "cost/usd": 0.001}
                for i in range(2)]
        log_trial_runs(rows, {}, param_keys=["lr"])
    stage.finish({f"{name}/done": 1})
'''


def test_each_dvc_repro_is_one_parent_run_with_its_stages_and_trials_nested(tmp_path):
    """Real `dvc repro` (twice, then a single stage) against a real MLflow server."""
    server = MlflowServer(tmp_path / "server", _free_port()).start()
    try:
        root = tmp_path / "proj"
        root.mkdir()
        (root / "stage.py").write_text(_TINY_STAGE)
        (root / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": server.uri,
                                                                     "experiment": "repro"}}))
        (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
            "ingest": {"cmd": "python stage.py ingest", "deps": ["stage.py"],
                       "outs": [{"metrics/ingest.json": {"cache": False}}]},
            "tune": {"cmd": "python stage.py tune", "deps": ["metrics/ingest.json"],
                     "outs": [{"metrics/tune.json": {"cache": False}}]}}}))
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TRAINWISE_PIPELINE_RUN")}
        env.update(PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")

        def dvc(*args):
            proc = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

        dvc("init", "--no-scm", "-q")
        dvc("repro")
        dvc("repro", "--force")
        dvc("repro", "--force", "--single-item", "tune")   # a single-stage repro: a parent of its own

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        exp = client.get_experiment_by_name("repro")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        by_id = {r.info.run_id: r for r in runs}
        parents = sorted((r for r in runs if r.data.tags["trainwise.stage"] == "pipeline"),
                         key=lambda r: r.info.start_time)
        assert len(parents) == 3 and len({p.data.tags["trainwise.pipeline_run"] for p in parents}) == 3
        children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                    for p in parents}
        assert [sorted(r.data.tags["trainwise.stage"] for r in children[p.info.run_id]) for p in parents] == \
            [["ingest", "tune"], ["ingest", "tune"], ["tune"]]
        for p in parents:
            stages = children[p.info.run_id]
            assert p.info.status == "FINISHED" and "mlflow.parentRunId" not in p.data.tags  # top level
            assert {"git.commit", "params.hash"} <= set(p.data.tags)
            assert all(s.data.tags["trainwise.pipeline_run"] == p.data.tags["trainwise.pipeline_run"] for s in stages)
            assert p.data.metrics["pipeline/cost/usd"] == pytest.approx(
                sum(s.data.metrics["cost/usd"] for s in stages)) and p.data.metrics["pipeline/cost/usd"] > 0
        assert len({p.data.tags["params.hash"] for p in parents}) == 1  # same params
        trials = [r for r in runs if r.data.tags["trainwise.stage"] == "tune.trial"]
        assert len(trials) == 6
        for t in trials:  # each trial under a tune run, which is under a pipeline run
            tune_run = by_id[t.data.tags["mlflow.parentRunId"]]
            assert tune_run.data.tags["trainwise.stage"] == "tune"
            assert by_id[tune_run.data.tags["mlflow.parentRunId"]].data.tags["trainwise.stage"] == "pipeline"
        _ui_opens_on_the_pipeline_runs(server.uri, exp.experiment_id, [p.info.run_name for p in parents])
    finally:
        server.kill()


def _ui_opens_on_the_pipeline_runs(uri: str, experiment_id: str, parent_names: list[str]) -> None:
    """The link trainwise prints, in a real headless Chromium: MLflow's runs table with one row per
    repro. Without `?workflowType=machine_learning` MLflow 3.17's UI shows its GenAI overview."""
    import re

    from trainwise.components.tracking.mlflow_runs import ui_url
    from tests.browser import _chromium, find_chromium, in_ci

    binary = find_chromium()
    if binary is None:
        assert not in_ci(), "CI=true but no chromium binary (apt-get install chromium)"
        return  # the MLflow API checks above still ran
    dom = _chromium(binary, "--virtual-time-budget=20000", "--window-size=1400,900", "--dump-dom",
                    ui_url(uri, experiment_id), timeout=180).stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "matching runs" in text and all(name in text for name in parent_names), text[-2000:]
