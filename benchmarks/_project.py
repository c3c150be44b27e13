"""Run the pipeline in a scratch copy of this repository (what a fresh clone would hold)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OUTPUT_DIRS = {"data", "models", "metrics", "plots", "reports", "benchmarks"}


def scratch_project(params_update: dict | None = None, *, src: Path = REPO,
                    prefix: str = "trainwise-bench-") -> tuple[Path, dict]:
    """A fresh project from ``src``'s sources (no pipeline outputs), a git repo of its own."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        # data/raw/ is the ingest stage's source (its `ingest.path` dependency); the rest of data/ is output
        if (src / f).is_file() and (f.split("/")[0] not in OUTPUT_DIRS or f.startswith("data/raw/")) \
                and f != "dvc.lock":
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, root / f)
    if params_update:
        params = yaml.safe_load((root / "params.yaml").read_text())
        for section, values in params_update.items():
            params[section].update(values)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(root)
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
    return root, env
