"""A stage run as a program (``python -m pipelines.<stage>``) ends through ``exit_now``: the same
exit code, message, atexit handlers and thread joins as a normal exit, without the interpreter's
teardown of every module (seconds per stage with torch and MLflow loaded)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A stage program: a non-daemon thread still writing when main returns, an atexit handler, and an
# object whose __del__ runs only in the interpreter's final teardown.
PROGRAM = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    from trainwise.pipelines.config import ConfigError
    from trainwise.pipelines.stage import run_stage

    out = Path(sys.argv[1])

    class Teardown:
        def __del__(self):
            (out / "teardown").write_text("ran")

    keep = Teardown()  # a module global: freed only by the interpreter's teardown

    def late_writer():
        time.sleep(0.5)
        (out / "thread").write_text("joined")

    def main():
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        threading.Thread(target=late_writer).start()
        import trainwise.pipelines.stage
        print("stage output; program:", trainwise.pipelines.stage._STAGE_PROGRAM[0], flush=False)  # buffered: must still reach the pipe
        if sys.argv[2] == "config":
            raise ConfigError("params.yaml: train.epochs must be > 0")
        if sys.argv[2] == "exit-string":
            sys.exit("stopped: a reason")

    run_stage(main)
""")


def run_program(tmp_path: Path, mode: str, **env) -> subprocess.CompletedProcess:
    script = tmp_path / "stage_program.py"
    script.write_text(PROGRAM)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    full_env.pop("PYTHONUNBUFFERED", None)  # stdout stays block-buffered into the pipe, as under dvc
    return subprocess.run([sys.executable, str(script), str(tmp_path), mode], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode, code", [("ok", 0), ("config", 2), ("exit-string", 1)])
def test_a_stage_program_exits_with_its_code_after_threads_atexit_and_output(tmp_path, mode, code):
    proc = run_program(tmp_path, mode)
    assert proc.returncode == code, proc.stderr
    assert "stage output; program: True" in proc.stdout  # its Stage bills from the process start
    assert (tmp_path / "thread").read_text() == "joined"  # non-daemon threads are waited for
    assert (tmp_path / "atexit").read_text() == "ran"     # Ray's shutdown, MLflow's flushes run here
    if mode == "config":
        assert "trainwise: error: params.yaml: train.epochs must be > 0" in proc.stderr
        assert "Traceback" not in proc.stderr
    if mode == "exit-string":
        assert proc.stderr.strip().endswith("stopped: a reason")
    # The interpreter's teardown is what is skipped: the global's __del__ never runs ...
    assert not (tmp_path / "teardown").exists()


def test_fast_exit_can_be_turned_off(tmp_path):
    proc = run_program(tmp_path, "config", TRAINWISE_FAST_EXIT="0")
    assert proc.returncode == 2
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "teardown").read_text() == "ran"  # ... unless TRAINWISE_FAST_EXIT=0


def test_run_stage_called_from_other_code_returns_or_raises():
    from trainwise.pipelines.config import ConfigError
    from trainwise.pipelines.stage import run_stage

    ran = []
    run_stage(lambda: ran.append(1))  # defined here, not in __main__: no exit
    assert ran == [1]

    def bad():
        raise ConfigError("params.yaml: x")

    with pytest.raises(SystemExit) as exited:
        run_stage(bad)
    assert exited.value.code == 2
