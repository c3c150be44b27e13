import io

import pytest

from trainwise.components.ray_start import _DropRayletNoise

NOISE = ("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: abc with "
         "address: 10.0.0.1, which is 4x the maximum expected startup concurrency (2).")


def test_filter_drops_only_the_worker_startup_warning_and_its_newline():
    out = io.StringIO()
    f = _DropRayletNoise(out)
    print(NOISE, file=f)
    print("(raylet) A worker died or was killed: OOM", file=f)
    print("[train] epoch 1", file=f)
    assert out.getvalue() == "(raylet) A worker died or was killed: OOM\n[train] epoch 1\n"


def _orphan(child: str, out, *, shell: str | None = None) -> None:
    """Run ``child`` under a middle process (standing in for `dvc repro`) that is SIGKILLed;
    return once the child has exited (fail if it keeps running). With ``shell``, the middle
    process starts the child the way DVC does, through ``shell -c`` (a command line the shell
    cannot exec away), so the child's parent is a shell that outlives the middle process."""
    import shlex
    import signal
    import subprocess
    import sys
    import time

    import psutil

    if shell is None:
        start = (f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=open({str(out)!r}, 'w'), "
                 "stderr=subprocess.STDOUT)\n")
    else:
        cmd = f"{shlex.join([sys.executable, '-c', child])} > {shlex.quote(str(out))} 2>&1; echo done"
        start = f"p = subprocess.Popen([{shell!r}, '-c', {cmd!r}])\n"
    middle = "import subprocess, sys, time\n" + start + "print(p.pid, flush=True)\ntime.sleep(120)\n"
    parent = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    # Kill the middle process only once the child's watcher runs (it prints 'watching' then):
    # killed sooner, the child would see init as its parent and watch nothing.
    deadline = time.monotonic() + 60
    while "watching" not in (out.read_text() if out.exists() else ""):
        try:
            exited = psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            exited = True
        if exited or time.monotonic() > deadline:
            for pid in (child_pid, parent.pid):
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
            parent.wait()
            raise AssertionError(f"the child never started watching its parent: {out.read_text()!r}")
        time.sleep(0.05)
    if shell is not None:  # the stage is the shell's child, not the middle process's
        stage = [c for c in psutil.Process(child_pid).children() if "python" in c.name()]
        assert len(stage) == 1, stage
        child_pid = stage[0].pid
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)
    psutil.Process(child_pid).kill()
    raise AssertionError("orphaned child kept running")


# A stand-in stage: watches its parent, says so, and cleans up when interrupted.
STOPPING_CHILD = (
    "import sys, time\n"
    "from trainwise.components.stage_exit import watch_parent\n"
    "assert watch_parent(interval_s=0.1, grace_s=5, log=lambda m: print(m, flush=True))\n"
    "print('watching', flush=True)\n"
    "try:\n    time.sleep(120)\n"
    "except KeyboardInterrupt:\n    print('interrupted: cleaned up', flush=True)\n    sys.exit(130)\n"
)


@pytest.mark.parametrize("via_shell", [False, True], ids=["direct", "behind-a-shell"])
def test_orphaned_process_stops_itself(tmp_path, via_shell):
    """`dvc repro` SIGKILLed: the stage it started must not keep running (and billing). DVC runs a
    stage through $SHELL (else /bin/sh); dash does not exec the command, so behind a shell the
    stage's own parent lives on after `dvc repro` dies, and the stage must still stop."""
    import shutil

    out = tmp_path / "child.log"
    _orphan(STOPPING_CHILD, out, shell=(shutil.which("dash") or shutil.which("sh")) if via_shell else None)
    text = out.read_text()
    assert "is gone; stopping" in text and "interrupted: cleaned up" in text, text


def test_the_orphan_hook_runs_in_the_watcher_before_the_interrupt_even_when_it_fails(tmp_path):
    """A submitted stage stops its Ray job from on_orphaned (its main thread may sit in an event
    loop that swallows SIGINT); a hook that raises must not cancel the interrupt."""
    out = tmp_path / "child.log"
    _orphan(
        "import sys, threading, time\n"
        "from trainwise.components.stage_exit import watch_parent\n"
        "def hook():\n"
        "    print('hook in', threading.current_thread().name, flush=True)\n"
        "    raise ConnectionError('jobs API down')\n"
        "assert watch_parent(interval_s=0.1, grace_s=5, log=lambda m: print(m, flush=True), on_orphaned=hook)\n"
        "print('watching', flush=True)\n"
        "try:\n    time.sleep(120)\n"
        "except KeyboardInterrupt:\n    print('interrupted: cleaned up', flush=True)\n    sys.exit(130)\n",
        out)
    text = out.read_text()
    assert "hook in trainwise-parent-watch" in text, text
    assert "while stopping: ConnectionError: jobs API down" in text
    assert text.index("hook in") < text.index("interrupted: cleaned up")


def test_an_orphan_that_swallows_the_interrupt_still_publishes_nothing(tmp_path):
    """Ray Train turns SIGINT into a graceful abort that can still return a result; the
    stage then reaches its writers, which must refuse: no metrics file, no model dir, no temp."""
    out, outputs = tmp_path / "child.log", tmp_path / "outputs"
    (outputs / "model").mkdir(parents=True)
    (outputs / "model" / "old.txt").write_text("previous model")
    _orphan(
        "import sys, tempfile, time\n"
        "from pathlib import Path\n"
        "from trainwise.components.atomic_io import replace_dir, write_json_atomic\n"
        "from trainwise.components.stage_exit import Orphaned, watch_parent\n"
        "assert watch_parent(interval_s=0.1, grace_s=5, log=lambda m: print(m, flush=True))\n"
        "print('watching', flush=True)\n"
        "try:\n    time.sleep(120)\n"
        "except KeyboardInterrupt:\n    print('aborted gracefully', flush=True)\n"
        f"out = Path({str(outputs)!r})\n"
        "new_model = lambda: Path(tempfile.mkdtemp(prefix='.model.tmp-', dir=out))\n"
        "for name, write in [('metrics', lambda: write_json_atomic(out / 'train.json', {'acc': 1.0})),\n"
        "                    ('model', lambda: replace_dir(new_model(), out / 'model'))]:\n"
        "    try:\n        write()\n        print(name, 'written', flush=True)\n"
        "    except Orphaned as err:\n        print(name, 'refused:', err, flush=True)\n",
        out)
    text = out.read_text()
    assert "aborted gracefully" in text
    assert "metrics refused: not writing" in text and "model refused: not writing" in text, text
    assert not (outputs / "train.json").exists()
    assert (outputs / "model" / "old.txt").read_text() == "previous model"  # the old output is untouched
    assert not [p.name for p in outputs.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_a_local_ray_start_that_misses_the_registration_window_is_retried(capsys):
    from trainwise.components.ray_start import _start_local_ray

    class FakeRay:  # stands in for the ray module: its start-up window cannot be made to time out on demand
        def __init__(self, failures: int):
            self.failures, self.inits, self.shutdowns = failures, 0, 0

        def init(self, **kwargs):
            self.inits += 1
            if self.inits <= self.failures:
                raise Exception("The current node timed out during startup. This could happen because ...")

        def shutdown(self):
            self.shutdowns += 1

    ok = FakeRay(failures=1)
    _start_local_ray(ok, num_cpus=2, attempts=3)
    assert (ok.inits, ok.shutdowns) == (2, 1)
    assert "missed its 30 s start-up window" in capsys.readouterr().err
    hopeless = FakeRay(failures=5)
    with pytest.raises(Exception, match="timed out during startup"):
        _start_local_ray(hopeless, num_cpus=2, attempts=2)
    assert hopeless.inits == 2
    other = FakeRay(failures=0)
    other.init = lambda **kw: (_ for _ in ()).throw(ValueError("bad num_cpus"))
    with pytest.raises(ValueError):  # any other error is not retried
        _start_local_ray(other, num_cpus=2)
