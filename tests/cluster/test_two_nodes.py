"""`dvc repro` with the train stage submitted as a Ray Job to a real two-node Ray cluster.

The cluster (a head and a second node, one CPU each, token auth) runs on this machine; the
train stage's two DDP workers need one CPU each, so they must land on both nodes. Asserts:
the job succeeded, both nodes ran a Ray Train worker, the outputs came back and DVC recorded
them, and MLflow recorded the run in the submitter's store, in the same pipeline run as the
stages that ran locally.
"""

import json
import subprocess
import sys

import mlflow
import pytest

from tests.cluster.local_cluster import local_cluster
from tests.project import copy_project, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("ray")) as c:
        yield c


def _state(cluster, code: str):
    """Ask the cluster's state API from a fresh process: Ray reads RAY_AUTH_MODE once, at import."""
    script = ("import json; from ray.util.state import list_actors, list_nodes; "
              f"a = {cluster.jobs_address!r}; print(json.dumps({code}))")
    out = subprocess.run([sys.executable, "-c", script], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _train_worker_nodes(cluster) -> set[str]:
    return _state(cluster, "[x.node_id for x in list_actors(address=a, filters=[('class_name', '=', "
                           "'RayTrainWorker')], detail=True, limit=100, raise_on_missing_output=False)]")


def _alive_nodes(cluster) -> set[str]:
    return _state(cluster, "[n.node_id for n in list_nodes(address=a) if n.state == 'ALIVE']")


def test_dvc_repro_runs_train_on_the_cluster(cluster, tmp_path):
    root = tmp_path / "project"
    shared = tmp_path / "shared"
    env = copy_project(root, params={
        "tune": {"enabled": False},
        "train": {"epochs": 2, "num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "SPREAD"},
        "ray": {"submit": ["train"], "jobs_address": cluster.jobs_address, "shared_storage": str(shared)},
    })
    env.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_AUTH")})
    out = sh(["dvc", "repro", "train"], root, env, timeout=800)

    assert "submitted Ray job" in out and "done on the cluster" in out
    train = json.loads((root / "metrics/train.json").read_text())
    assert train["train/epochs_run"] == 2
    assert (root / "models/model/model.pt").exists()
    # DVC recorded the outputs that came back: nothing left to reproduce.
    assert "up to date" in sh(["dvc", "status", "train"], root, env)
    lock = (root / "dvc.lock").read_text()
    assert "models/model" in lock and "metrics/train.json" in lock
    # Checkpoints went to the shared storage, not into the job's throw-away working dir.
    assert any((shared / "ray").rglob("checkpoint_*"))

    assert len(_alive_nodes(cluster)) == 2
    assert _train_worker_nodes(cluster) == _alive_nodes(cluster)  # a worker on each node

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_stage = {r.data.tags["trainwise.stage"]: r for r in runs}
    assert by_stage["train"].info.status == "FINISHED"
    assert "val/acc" in by_stage["train"].data.metrics
    assert by_stage["train"].data.tags["trainwise.pipeline_run"] == by_stage["split"].data.tags["trainwise.pipeline_run"]
    assert by_stage["train"].data.tags["git.commit"] == by_stage["split"].data.tags["git.commit"] != "none"
