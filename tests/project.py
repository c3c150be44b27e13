"""A throw-away copy of the project for tests that run real `dvc repro` / Ray jobs on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUTPUT_DIRS = {"data", "models", "metrics", "plots", "reports"}


def sh(args, cwd, env, timeout=900) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def copy_project(root: Path, *, params: dict[str, dict] | None = None) -> dict[str, str]:
    """Copy the project's sources (not a developer's pipeline outputs) to ``root``, update
    params.yaml sections with ``params``, make it a git repo; returns the env to run it with."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        # data/raw/ is a source (the ingest stage's `ingest.path` dependency); the rest of data/ is output
        if src.is_file() and (f.split("/")[0] not in OUTPUT_DIRS or f.startswith("data/raw/")) and f != "dvc.lock":
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    data = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in (params or {}).items():
        data[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = project_env(root)
    sh(["git", "init", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "init"], root, env)
    return env


def project_env(root: Path) -> dict[str, str]:
    """The environment to run DVC and the stages in the project copy at ``root`` with."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)  # the copy's code, not the developer checkout's
    # A fresh CI machine has no global git identity; `dvc exp run` commits experiment refs.
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="trainwise-test", GIT_AUTHOR_EMAIL="test@localhost",
               GIT_COMMITTER_NAME="trainwise-test", GIT_COMMITTER_EMAIL="test@localhost")
    return env


# The demo pipeline as the tests run it (tests/conftest.py:demo_pipeline, once a session): params
# shrunk. FIFO, not the default ASHA: every trial runs max_epochs, which keeps the run short and
# its trial-epochs fixed (ASHA, ordered: the same trials at any concurrency, is tested in
# tests/stages/test_tune.py and tests/unit/test_ordered_asha.py). The search space is the shipped
# one plus label_smoothing, a key the train stage once ignored: the e2e test checks train trains
# with every key tune chose.
DEMO_TRIALS = 3  # more than run at once (2): a finished trial must hand its CPU back
DEMO_EXTRA_SPACE = {"label_smoothing": {"type": "uniform", "low": 0.05, "high": 0.3}}


def demo_params() -> dict[str, dict]:
    space = yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["search_space"]
    return {"tune": dict(num_samples=DEMO_TRIALS, max_concurrent_trials=2, max_epochs=2, grace_period=1,
                         scheduler="fifo", search_space={**space, **DEMO_EXTRA_SPACE}),
            "train": dict(epochs=3)}


def copy_finished_project(src: Path, dst: Path) -> dict[str, str]:
    """Copy a project that has run (its outputs, DVC cache, git history and MLflow store) to
    ``dst`` (which must not exist); returns the env to run it with. The MLflow store names its
    artifact folders by absolute path: those under ``src`` are renamed to ``dst``'s copies, so the
    copy reads and writes only itself."""
    import sqlite3

    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)  # -a: outputs stay hard links into the DVC cache
    db = dst / "mlflow.db"
    if db.exists():
        con = sqlite3.connect(db)
        try:
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for col in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if col[2].upper().startswith(("VARCHAR", "TEXT")):
                        con.execute(f'UPDATE "{table}" SET "{col[1]}" = replace("{col[1]}", ?, ?) '
                                    f'WHERE instr("{col[1]}", ?) > 0', (str(src), str(dst), str(src)))
            con.commit()
        finally:
            con.close()
    return project_env(dst)
