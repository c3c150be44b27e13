"""`dvc repro` with tune and train submitted as Ray Jobs to a real two-node Ray cluster.

The cluster (a head and a second node, one CPU each, token auth) runs on this machine. Slow
(minutes, CPU-heavy); the scenarios share one cluster and one project copy, and are combined
where one run can show several things without hiding a failure:

- the sweep + train run (issues 16 and 18): 2 trials of 2 one-CPU workers each (a trial's
  workers must span both nodes, beside trial actors that hold no CPU), then train on 2 workers.
  `dvc repro` is SIGKILLed while the train job trains: the job is STOPPED within 30 s and the
  next `dvc repro` completes; outputs come back, `dvc status` is clean, and no fake credential
  of the submitter's environment is in any job's spec read back through the Jobs API.
- a trial shape no node can hold (3 workers on 2 one-CPU nodes): a clear error, fast.
"""

import json
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from tests.cluster.local_cluster import local_cluster
from tests.project import copy_project, sh

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1500)]

FAKE_SECRETS = {"AWS_SECRET_ACCESS_KEY": "fake-aws-secret-7f3a", "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-pw-91c2",
                "AWS_ACCESS_KEY_ID": "AKIAFAKEKEY0000"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("ray")) as c:
        yield c


@pytest.fixture(scope="module")
def project(cluster, tmp_path_factory):
    """One project copy for the module: later tests find the data stages done."""
    tmp = tmp_path_factory.mktemp("cluster-project")
    root, shared = tmp / "project", tmp / "shared"
    env = copy_project(root, params={
        "tune": {"enabled": True, "num_samples": 2, "max_concurrent_trials": 2, "workers_per_trial": 2,
                 "cpus_per_worker": 1, "scheduler": "fifo", "max_epochs": 2, "search_alg": "random"},
        "train": {"epochs": 2, "num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "SPREAD"},
        "ray": {"submit": ["tune", "train"], "jobs_address": cluster.jobs_address, "shared_storage": str(shared)},
    })
    env.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_AUTH")})
    env.update(FAKE_SECRETS)  # what a user's shell holds: none of it may reach a job spec
    return root, shared, env


def _set_params(root, section: str, **values) -> None:
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[section].update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _ask(cluster, code: str):
    """Ask the cluster from a fresh process: Ray reads RAY_AUTH_MODE once, at import."""
    script = ("import json; from ray.util.state import list_actors, list_nodes; "
              "from ray.job_submission import JobSubmissionClient; "
              f"a = {cluster.jobs_address!r}; print(json.dumps({code}, default=str))")
    out = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _jobs(cluster) -> list[dict]:
    return _ask(cluster, "[json.loads(j.json()) for j in JobSubmissionClient(a).list_jobs()]")


def _stage_jobs(cluster, stage: str) -> list[dict]:
    return sorted((j for j in _jobs(cluster) if (j.get("metadata") or {}).get("trainwise.stage") == stage),
                  key=lambda j: j.get("start_time") or 0)


def _train_worker_nodes(cluster) -> set[str]:
    return set(_ask(cluster, "[x.node_id for x in list_actors(address=a, filters=[('class_name', '=', "
                             "'RayTrainWorker')], detail=True, limit=1000, raise_on_missing_output=False)]"))


def _alive_nodes(cluster) -> set[str]:
    return set(_ask(cluster, "[n.node_id for n in list_nodes(address=a) if n.state == 'ALIVE']"))


JOB_WATCHER = """
import sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
client.get_job_status(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    status = client.get_job_status(sys.argv[2])
    if status.is_terminal():
        break
    time.sleep(0.2)
print(status.value, time.monotonic(), flush=True)  # CLOCK_MONOTONIC: the same clock as the test's
"""


def _watch_job(cluster, submission_id: str) -> subprocess.Popen:
    """A process that reports when the job reaches a terminal status (and on which clock reading),
    started and connected before the test acts, so its start-up is not counted."""
    proc = subprocess.Popen([sys.executable, "-c", JOB_WATCHER, cluster.jobs_address, submission_id], env=cluster.env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _wait(what: str, check, timeout_s: float, every_s: float = 0.5, alive=None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(every_s)


def test_sweep_and_train_on_two_nodes_and_a_killed_repro(cluster, project, tmp_path):
    root, shared, env = project
    _set_params(root, "train", epochs=60, patience=60)  # long enough to be killed while it trains
    log_path = tmp_path / "repro.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def dvc_alive():
            assert dvc.poll() is None, log_path.read_text()[-4000:]

        # train's Ray job is training: its first checkpoint is on the shared storage
        _wait("the train job's first checkpoint", lambda: list((shared / "ray").glob("train-*/checkpoint_*")),
              timeout_s=1200, alive=dvc_alive)
        sweep_and_start_s = time.monotonic() - t0
        job = _wait("the running train job", lambda: [j for j in _stage_jobs(cluster, "train")
                                                     if j["status"] == "RUNNING"], timeout_s=60)[0]
        watcher = _watch_job(cluster, job["submission_id"])
        dvc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        dvc.wait(timeout=30)
    finally:
        if dvc.poll() is None:
            dvc.kill()
    first = log_path.read_text()

    # The submitter (the train stage's process, orphaned) notices and stops its job.
    status, at = watcher.communicate(timeout=180)[0].split()
    stopped_after_s = float(at) - killed
    assert status == "STOPPED" and stopped_after_s <= 30, (status, stopped_after_s)

    # The sweep ran on the cluster before: 2 trials, both trained, none stuck on placement.
    assert "submitted Ray job" in first and "[tune]" in first
    trials = (root / "models/tune/trials.csv").read_text().splitlines()
    assert len(trials) == 3, trials  # header + 2 trials
    tune_metrics = json.loads((root / "metrics/tune.json").read_text())
    assert tune_metrics["tune/trials"] == 2 and tune_metrics["tune/failed_trials"] == 0
    assert "hold 1 trial(s) of 2 x {CPU: 1} (PACK) at once; running 1 at a time" in first

    # The next `dvc repro` re-submits train cleanly (tune was recorded and is not redone).
    _set_params(root, "train", epochs=2, patience=2)
    t1 = time.monotonic()
    out = sh(["dvc", "repro", "train"], root, env, timeout=900)
    rerun_s = time.monotonic() - t1
    assert "Running stage 'train'" in out and "Running stage 'tune'" not in out
    assert "submitted Ray job" in out and "done on the cluster" in out
    assert json.loads((root / "metrics/train.json").read_text())["train/epochs_run"] == 2
    assert (root / "models/model/model.pt").exists()
    assert "up to date" in sh(["dvc", "status", "train"], root, env)
    assert any((shared / "ray").rglob("checkpoint_*"))  # on the shared storage, not the job's working dir

    nodes = _alive_nodes(cluster)
    assert len(nodes) == 2 and _train_worker_nodes(cluster) == nodes  # Train workers ran on both nodes

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    finished = {r.data.tags.get("trainwise.stage") for r in runs if r.info.status == "FINISHED"}
    assert {"tune", "train"} <= finished

    # Issue 16: nothing secret in any job's spec, read back through the Jobs API.
    jobs = _jobs(cluster)  # Ray Jobs, and the drivers that merely connected (the tests' own queries)
    submitted = [j for j in jobs if (j.get("metadata") or {}).get("trainwise.stage")]
    assert len(submitted) >= 3  # tune, the killed train, the train that finished
    for j in jobs:
        spec = json.dumps(j)
        for secret in FAKE_SECRETS.values():
            assert secret not in spec, f"{secret} reached job {j['submission_id'] or j['job_id']}"
    for j in submitted:  # the spec read back is the job's real environment (the SDK gets it unredacted)
        assert j["runtime_env"]["env_vars"]["TRAINWISE_GIT_COMMIT"]

    tune_s = re.findall(r"\[tune\] done in ([\d.]+)s", first)
    train_s = re.findall(r"\[train\] done in ([\d.]+)s", out)
    print(f"\ntwo-node cluster: dvc repro up to train's first checkpoint {sweep_and_start_s:.0f}s "
          f"(tune stage on the cluster {tune_s[-1] if tune_s else '?'}s); killed train job STOPPED "
          f"{stopped_after_s:.1f}s after the SIGKILL; re-run `dvc repro train` {rerun_s:.0f}s "
          f"(train stage on the cluster {train_s[-1] if train_s else '?'}s)")


def test_a_trial_shape_no_node_holds_is_a_clear_error(cluster, project):
    root, _, env = project
    _set_params(root, "tune", workers_per_trial=3)  # 3 one-CPU workers, 2 one-CPU nodes
    _set_params(root, "ray", schedule_timeout_s=120)
    proc = subprocess.run(["dvc", "repro", "tune"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("trainwise: error: ")]
    assert errors, out[-3000:]
    msg = errors[-1]  # the submitter's, which repeats what the stage said on the cluster
    assert "tune.workers_per_trial=3" in msg and "3 x {CPU: 1} (PACK)" in msg
    assert "nodes are 1 x {CPU: 1}, 1 x {CPU: 1, second_node: 1}" in msg  # the cluster's nodes, per node
    assert "lower tune.workers_per_trial" in msg and "bigger nodes" in msg
    job = _stage_jobs(cluster, "tune")[-1]
    assert job["status"] == "FAILED"  # ended, not left waiting
    assert (job["end_time"] - job["start_time"]) / 1000 < 120  # well within ray.schedule_timeout_s
    print(f"\ninfeasible trial shape, job {job['submission_id']} ended in "
          f"{(job['end_time'] - job['start_time']) / 1000:.1f}s: {msg}")
