"""Submitting stages to a cluster: what travels, atomic copies back, params, clear errors.
(The real two-node run is tests/cluster/test_two_nodes.py.)"""

import os

import pytest
import yaml

from trainwise.components.cluster import storage
from trainwise.components.cluster.jobs import WORKING_DIR_EXCLUDES, JobError, _client, job_entrypoint, stage_io
from trainwise.components.atomic_io import MARKER_TEXT, OUTPUT_MARKER
from trainwise.pipelines.config import ConfigError, parse_params
from trainwise.pipelines.remote import _job_params, submit
from trainwise.pipelines.stage import _stage_name
from tests.conftest import REPO


def test_stage_io_comes_from_dvc_yaml_without_code():
    io = stage_io(REPO, "train")
    assert "data/audit" in io.inputs and "models/tune/best_params.json" in io.inputs
    assert not [p for p in io.inputs if p.endswith(".py") or p.startswith(("components", "pipelines"))]
    assert "params.yaml" not in io.inputs  # travels with the code
    assert {"models/model", "metrics/train.json"} <= set(io.outputs)
    entry = job_entrypoint(io, base="s3://b/jobs/k", storage_path="s3://b/ray")
    assert entry.startswith("python -m trainwise.pipelines.remote train --base s3://b/jobs/k --storage-path s3://b/ray")
    assert "--outputs models/model" in entry


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(JobError, match="no stage 'trian'"):
        stage_io(REPO, "trian")


def test_working_dir_excludes_are_anchored():
    # "/data" excludes the pipeline's data folder, not components/data (code the job needs)
    assert "/data" in WORKING_DIR_EXCLUDES and "data" not in WORKING_DIR_EXCLUDES


def test_put_get_roundtrip_and_atomic_replace(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    url = storage.join(str(tmp_path / "shared"), "jobs", "k", "out", "models/model")
    storage.put(src, url)
    dst = tmp_path / "ws" / "models" / "model"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    (dst / OUTPUT_MARKER).write_text(MARKER_TEXT)  # an output a stage wrote (others are refused: test_output_dirs)
    storage.get(url, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        OUTPUT_MARKER, "a.txt", "sub/b.bin"]
    assert (dst / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    # a missing output fails before anything is replaced
    with pytest.raises(FileNotFoundError, match="missing in the shared storage"):
        storage.get(storage.join(str(tmp_path / "shared"), "nope"), dst)
    assert (dst / "a.txt").read_text() == "a"
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_single_file_roundtrip(tmp_path):
    f = tmp_path / "m.json"
    f.write_text("{}")
    url = storage.join(str(tmp_path / "shared"), "metrics/train.json")
    storage.put(f, url)
    storage.get(url, tmp_path / "back" / "train.json")
    assert (tmp_path / "back" / "train.json").read_text() == "{}"


def test_submit_params_are_validated():
    with pytest.raises(ConfigError, match="ray.submit"):
        parse_params({"ray": {"submit": ["ingest"]}})
    assert parse_params({"ray": {"submit": ["tune", "train"]}}).ray.submit == ["tune", "train"]


def test_job_copy_of_params_never_resubmits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ray": {"submit": ["train"], "storage_path": ".x"}}))
    _job_params("/shared/ray")
    ray = yaml.safe_load((tmp_path / "params.yaml").read_text())["ray"]
    assert ray["submit"] == [] and ray["storage_path"] == "/shared/ray" and ray["address"] is None


def test_unreachable_jobs_api_names_the_address_and_the_fix():
    with pytest.raises(JobError, match=r"http://127\.0\.0\.1:9.*ray.jobs_address"):
        _client("http://127.0.0.1:9")


def test_submit_without_shared_storage_says_which_key(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ray": {"jobs_address": "http://127.0.0.1:9"}}))
    with pytest.raises(ConfigError, match="ray.shared_storage"):
        submit("train", root=tmp_path)


def test_stage_name_from_module():
    import trainwise.pipelines.train as train

    assert _stage_name(train.main) == "train"
    assert _stage_name(os.path.join) is None


# --- what fits where (issue 18): counted per node ----------------------------------------------

from trainwise.components.cluster.placement import cannot_fit, groups_that_fit  # noqa: E402

TWO_ONE_CPU_NODES = [({"CPU": 1.0, "memory": 8 * 2**30}, 2)]


def test_fits_are_counted_per_node_not_per_cluster():
    one_cpu = {"CPU": 1}
    assert groups_that_fit(TWO_ONE_CPU_NODES, one_cpu, 1) == 2
    assert groups_that_fit(TWO_ONE_CPU_NODES, one_cpu, 2) == 1
    # 2 CPUs in the cluster, but no node holds a 2-CPU worker: a total count would say it fits
    assert groups_that_fit(TWO_ONE_CPU_NODES, {"CPU": 2}, 1) == 0
    assert "no node has room for even one of them" in cannot_fit(TWO_ONE_CPU_NODES, {"CPU": 2}, 1)
    # GPUs and CPUs both have to fit on the same node
    mixed = [({"CPU": 8.0, "GPU": 1.0}, 2), ({"CPU": 32.0}, 1)]
    assert groups_that_fit(mixed, {"CPU": 4, "GPU": 1}, 1) == 2
    assert groups_that_fit(mixed, {"CPU": 4}, 3) == 4  # 2 + 2 + 8 slots of 4 CPUs


def test_nodes_of_one_shape_are_counted_together():
    from trainwise.components.cluster.placement import _merge, describe_nodes

    nodes = _merge([({"CPU": 1.0, "memory": 12.2 * 2**30, "node:127.0.0.1": 1.0}, 1),
                    ({"CPU": 1.0, "memory": 12.1 * 2**30, "object_store_memory": 1e9}, 1),
                    ({"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}, 1)])
    assert describe_nodes(nodes) == "2 x {CPU: 1}, 1 x {CPU: 8, GPU: 1, accelerator_type:A10G: 1}"
    assert nodes[0][0]["memory"] == 12.1 * 2**30  # the smallest of the group


def test_strict_strategies():
    four = [({"CPU": 4.0}, 2)]
    assert groups_that_fit(four, {"CPU": 1}, 3, "STRICT_PACK") == 2   # one group per node
    assert groups_that_fit(four, {"CPU": 1}, 3, "PACK") == 2          # 8 slots // 3
    assert groups_that_fit(four, {"CPU": 1}, 5, "STRICT_PACK") == 0
    assert "the largest node holds 4" in cannot_fit(four, {"CPU": 1}, 5, "STRICT_PACK")
    three = [({"CPU": 1.0}, 3)]
    assert groups_that_fit(three, {"CPU": 1}, 2, "STRICT_SPREAD") == 1
    assert groups_that_fit([({"CPU": 2.0}, 2)], {"CPU": 1}, 2, "STRICT_SPREAD") == 2
    assert groups_that_fit([({"CPU": 8.0}, 1)], {"CPU": 1}, 2, "STRICT_SPREAD") == 0


def test_the_infeasible_message_names_the_shape_and_the_nodes():
    msg = cannot_fit(TWO_ONE_CPU_NODES, {"CPU": 1}, 3)
    assert msg == ("asks for 3 x {CPU: 1} (PACK) at once, but the Ray cluster's nodes are "
                   "2 x {CPU: 1}: the cluster's nodes hold at most 2 of them at once")
    assert cannot_fit(TWO_ONE_CPU_NODES, {"CPU": 1}, 2) is None


# --- secrets never travel in a job spec (issue 16) ----------------------------------------------

from trainwise.pipelines.remote import job_env  # noqa: E402

SUBMITTER_ENV = {"AWS_SECRET_ACCESS_KEY": "fake-secret-1", "AWS_ACCESS_KEY_ID": "AKIAFAKE",
                 "MLFLOW_TRACKING_PASSWORD": "fake-secret-2", "RAY_AUTH_TOKEN": "fake-token",
                 "AWS_DEFAULT_REGION": "eu-west-1", "TRAINWISE_RAY_VERBOSE": "1"}


def test_job_env_sends_settings_not_credentials():
    warnings = []
    env = job_env(parse_params({}), SUBMITTER_ENV, tracking_uri="http://mlflow:5000", name="train",
                  warn=warnings.append)
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_DEFAULT_REGION": "eu-west-1",
                   "TRAINWISE_RAY_VERBOSE": "1"}
    assert warnings == []


def test_forwarding_a_secret_is_an_explicit_opt_in_that_warns():
    warnings = []
    params = parse_params({"ray": {"forward_secrets": ["AWS_SECRET_ACCESS_KEY", "HF_TOKEN"]}})
    env = job_env(params, SUBMITTER_ENV, tracking_uri="http://mlflow:5000", name="train", warn=warnings.append)
    assert env["AWS_SECRET_ACCESS_KEY"] == "fake-secret-1" and "AWS_ACCESS_KEY_ID" not in env
    assert "HF_TOKEN" not in env
    assert any("sending AWS_SECRET_ACCESS_KEY" in w and "Jobs API" in w for w in warnings)
    assert any("HF_TOKEN, which is not set here" in w for w in warnings)


def test_credentials_in_the_tracking_uri_are_cut_off():
    warnings = []
    env = job_env(parse_params({}), {}, tracking_uri="https://bob:fake-secret-3@mlflow.example:8443/x",
                  name="tune", warn=warnings.append)
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/x"
    assert "fake-secret-3" not in " ".join(warnings) and "MLFLOW_TRACKING_PASSWORD" in warnings[0]


def test_credential_files_never_travel_in_the_working_dir():
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitwildmatch", WORKING_DIR_EXCLUDES)
    assert spec.match_file(".env") and spec.match_file("infra/.env") and spec.match_file(".dvc/config.local")
    assert not spec.match_file("pipelines/remote.py") and not spec.match_file("components/cluster/jobs.py")


# --- bounded waiting and the sweep's clean-up, on a real Ray -----------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

STUCK_STAGE = """
from trainwise.components.ray_start import init_ray
from trainwise.pipelines.stage import run_stage

def main():
    import ray
    from ray.util.placement_group import placement_group
    init_ray(num_cpus=1, schedule_timeout_s={timeout})
    hog = placement_group([{{"CPU": 1}}])
    ray.get(hog.ready())
    print("hog placed", flush=True)
    ray.get(placement_group([{{"CPU": 1}}, {{"CPU": 1}}]).ready())  # the hog holds the only CPU: waits forever
    print("placed?!", flush=True)

run_stage(main)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stage_waiting_on_resources_stops_with_the_shape_and_the_nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_STAGE.format(timeout=5)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - t0
    assert "hog placed" in proc.stdout and "placed?!" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("trainwise: error: ")]
    assert len(error) == 1, proc.stderr[-3000:]
    msg = error[0]
    assert "a placement group of this stage, 2 x {CPU: 1} (PACK), waited" in msg
    assert "ray.schedule_timeout_s=5" in msg and "NO_RESOURCES" not in msg  # said in words
    assert "the nodes that could hold it are busy" in msg or "no node can ever hold it" in msg
    assert "The cluster's nodes: 1 x {CPU: 1" in msg and "0/1 CPU" in msg  # per node, and what is free
    assert "tune.workers_per_trial" in msg and "bigger nodes" in msg and "tune.max_concurrent_trials" in msg
    assert "Traceback" not in proc.stderr
    assert wall < 120, f"took {wall:.0f}s"  # Ray's start-up + 5 s, not forever


FOREIGN_SWEEP = """
import sys, ray
from tests.unit.test_cluster import dead_train_worker_group
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(dead_train_worker_group(), flush=True)
sys.stdin.read()  # keep this job (and its placement group) alive until the test is done
"""


def dead_train_worker_group() -> str:
    """A placement group like a stopped trial's: it held a RayTrainWorker actor, now dead."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from ray.util.state import list_actors

    class RayTrainWorker:
        def ping(self):
            return 1

    RayTrainWorker.__qualname__ = "RayTrainWorker"  # the class name Ray Train's workers have
    pg = placement_group([{"CPU": 0.1}])
    ray.get(pg.ready())
    worker = ray.remote(num_cpus=0.1)(RayTrainWorker).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
    ray.get(worker.ping.remote())
    actor_id = worker._actor_id.hex()
    ray.kill(worker)
    deadline = time.monotonic() + 60
    while list_actors(address=ray.get_runtime_context().gcs_address, filters=[("actor_id", "=", actor_id)])[0].state != "DEAD":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return pg.id.hex()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_placement_group_clean_up_only_touches_this_jobs_groups(ray_session, tmp_path):
    from trainwise.components.tuning.cleanup import reap_orphaned_train_groups

    ray = ray_session
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    other = subprocess.Popen([sys.executable, "-c", FOREIGN_SWEEP, ray.get_runtime_context().gcs_address],
                             cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        theirs = other.stdout.readline().strip()  # another job's stopped trial, on the same cluster
        assert theirs, "the other job did not start"
        ours = dead_train_worker_group()
        table = ray.util.placement_group_table()
        assert table[theirs]["state"] == table[ours]["state"] == "CREATED"
        assert reap_orphaned_train_groups() == 1
        table = ray.util.placement_group_table()
        assert table[ours]["state"] == "REMOVED"
        assert table[theirs]["state"] == "CREATED"  # not ours to remove
    finally:
        other.stdin.close()
        other.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_in_process_ray_workers_run_at_the_drivers_priority(ray_session):
    # Ray's default niceness 15 starves the training workers on any busy machine (train_throughput);
    # init_ray starts the in-process node with its workers at the driver's niceness.
    ray = ray_session

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def test_the_orphan_watchdog_stops_every_job_still_waited_for_from_its_own_thread():
    import threading

    from trainwise.components.cluster import jobs

    class Client:
        def __init__(self, ok):
            self.ok, self.stopped, self.thread = ok, [], None

        def stop_job(self, job_id):
            self.thread = threading.current_thread().name
            if not self.ok:
                raise RuntimeError("the Jobs API is unreachable")
            self.stopped.append(job_id)
            return True

    running, unreachable = Client(True), Client(False)
    jobs._WAITING.update({"trainwise-train-1": running, "trainwise-tune-2": unreachable})
    try:
        out = []
        watcher = threading.Thread(target=lambda: out.extend(jobs.stop_waiting_jobs()), name="watch")
        watcher.start()
        watcher.join(10)
        assert out == ["trainwise-train-1"]          # the unreachable one is not claimed as stopped
        assert running.stopped == ["trainwise-train-1"] and running.thread == "watch"
        assert unreachable.thread == "watch"
    finally:
        jobs._WAITING.clear()
