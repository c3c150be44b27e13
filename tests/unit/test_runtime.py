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


def test_orphaned_process_stops_itself(tmp_path):
    """`dvc repro` SIGKILLed: the stage it started must not keep running (and billing)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "child.log"
    child = (
        "import sys, time\n"
        "from components.runtime import watch_parent\n"
        "watch_parent(interval_s=0.1, grace_s=5, log=lambda m: print(m, flush=True))\n"
        "try:\n    time.sleep(120)\n"
        "except KeyboardInterrupt:\n    print('interrupted: cleaned up', flush=True)\n    sys.exit(130)\n"
    )
    middle = (  # stands in for `dvc repro`: starts the stage, then dies without a word
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=open({str(out)!r}, 'w'))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    time.sleep(1.0)
    assert psutil.pid_exists(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        psutil.Process(child_pid).kill()
        raise AssertionError("orphaned child kept running")
    text = out.read_text()
    assert "is gone; stopping" in text and "interrupted: cleaned up" in text
