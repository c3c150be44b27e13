"""`dvc repro` runs a stage through a shell; /bin/sh (dash) does not exec the command, so when
`dvc repro` dies the stage's own parent (the shell) lives on. The stage must still stop."""

import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

CHILD = (
    "import sys, time\n"
    "from components.runtime import watch_parent\n"
    "assert watch_parent(interval_s=0.1, grace_s=5, log=lambda m: print(m, flush=True))\n"
    "print('watching', flush=True)\n"
    "try:\n    time.sleep(120)\n"
    "except KeyboardInterrupt:\n    print('interrupted: cleaned up', flush=True)\n    sys.exit(130)\n"
)


@pytest.mark.skipif(shutil.which("dash") is None and shutil.which("sh") is None, reason="needs a POSIX shell")
def test_a_stage_behind_a_shell_stops_when_dvc_dies(tmp_path):
    out = tmp_path / "child.log"
    shell = shutil.which("dash") or shutil.which("sh")
    # "dvc": starts `sh -c "python -c CHILD; echo done"` (the trailing command keeps every shell from
    # exec'ing python), then dies without a word
    middle = (
        "import shlex, subprocess, sys, time\n"
        f"cmd = shlex.join([sys.executable, '-c', {CHILD!r}])\n"
        f"cmd += ' > ' + shlex.quote({str(out)!r}) + ' 2>&1; echo done'\n"
        f"p = subprocess.Popen([{shell!r}, '-c', cmd])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    dvc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    shell_pid = int(dvc.stdout.readline())
    deadline = time.monotonic() + 60
    while "watching" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "the stage never started watching"
        time.sleep(0.05)
    stage = [p for p in psutil.Process(shell_pid).children() if "python" in p.name()]
    assert len(stage) == 1  # the shell is the stage's parent, not dvc
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    try:
        stage[0].wait(timeout=20)
    except psutil.TimeoutExpired:
        stage[0].kill()
        raise AssertionError("the stage kept running after dvc died (its shell parent is still alive)")
    text = out.read_text()
    assert "is gone; stopping" in text and "interrupted: cleaned up" in text, text
