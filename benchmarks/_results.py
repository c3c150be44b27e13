"""Where a benchmark's figures go: ``benchmarks/results/<name>.json``, stamped with what produced them.

Every figure the README and docs/benchmarks.md quote comes from one of these files
(``python -m benchmarks.render_docs`` renders them; tests/unit/test_docs.py checks the quotes), so
each file says which code it measured: the git commit, whether tracked files had uncommitted
changes, the date, the command line and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance() -> dict:
    """What produced a result: commit (None outside a git checkout), dirty (+ which paths), date (UTC),
    command, machine."""
    commit = _git("rev-parse", "HEAD").strip() or None
    # Changes to results files themselves do not make the measured code dirty.
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
               if "benchmarks/results/" not in line]
    module = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "?"
    # dirty_paths: which tracked files differed from the commit, so a reader can judge whether they
    # touch the measured code (on a shared checkout, other work is often in progress).
    return {"commit": commit, "dirty": bool(changed), "dirty_paths": changed[:30],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(["python -m benchmarks." + module, *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(),
                        "load_average_1m": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}}


def write_results(path: str | os.PathLike, result: dict) -> Path:
    """Write ``result`` (plus its ``provenance``) as indented JSON to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "provenance": provenance()}, indent=2, default=float) + "\n")
    return path
