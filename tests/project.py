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
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)  # the copy's code, not the developer checkout's
    # A fresh CI machine has no global git identity; `dvc exp run` commits experiment refs.
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="trainwise-test", GIT_AUTHOR_EMAIL="test@localhost",
               GIT_COMMITTER_NAME="trainwise-test", GIT_COMMITTER_EMAIL="test@localhost")
    sh(["git", "init", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "init"], root, env)
    return env
