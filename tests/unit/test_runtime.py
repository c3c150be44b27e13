import io

from components.runtime import _DropRayletNoise

NOISE = ("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: abc with "
         "address: 10.0.0.1, which is 4x the maximum expected startup concurrency (2).")


def test_filter_drops_only_the_worker_startup_warning_and_its_newline():
    out = io.StringIO()
    f = _DropRayletNoise(out)
    print(NOISE, file=f)
    print("(raylet) A worker died or was killed: OOM", file=f)
    print("[train] epoch 1", file=f)
    assert out.getvalue() == "(raylet) A worker died or was killed: OOM\n[train] epoch 1\n"


def test_a_worker_bundle_bigger_than_the_cluster_is_reported_not_waited_for():
    from components.runtime import unschedulable

    assert unschedulable({"CPU": 2.0}, cpus=2) is None
    assert unschedulable({"CPU": 2.0}, cpus=3) == "needs 3 CPUs but the Ray cluster has 2"
    assert unschedulable({"CPU": 8.0}, cpus=2, gpus=2) == "needs 2 GPUs but the Ray cluster has 0"
