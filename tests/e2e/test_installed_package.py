"""trainwise as a user gets it (issue 31): a wheel built from this repository, installed into a fresh
venv, `trainwise init` a project on a small image folder, `trainwise run`, `trainwise predict`, all
outside the checkout; the project holds no trainwise source file.

The fresh venv gets the wheel with `pip install --no-deps`, and reaches the dependencies this
checkout's venv already has (torch at the project's pin, Ray, MLflow, DVC...) through a site dir of
links to them, which leaves out the checkout's own editable install (its `trainwise` metadata,
finder and .pth). A full dependency install would download and unpack ~3 GB (minutes, and a
network this test must not need); what is under test is our wheel, its entry point and its
package data, which this installs for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
OURS = ("trainwise", "__editable__", "components", "pipelines", "__pycache__")  # the checkout's install: not linked

pytestmark = [pytest.mark.slow, pytest.mark.package]  # out of the default run: CI's third step (.ci/run)


def _run(args, cwd, env, timeout=1800):
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{out[-6000:]}"
    return out, wall


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the checkout's sources (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (REPO / f).is_file() and f.split("/")[0] not in ("data", "models", "metrics", "plots", "reports"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    return next(out.glob("trainwise-*.whl"))


def _images(root: Path, n: int = 20) -> Path:
    """Two classes told apart by colour; each image a distinct coarse pattern (no near-duplicates)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            blocks = rng.integers(0, 120, (6, 6, 3)).astype(np.uint8)
            blocks[..., 0 if k == 0 else 2] += 120
            img = Image.fromarray(blocks).resize((64, 64), Image.NEAREST)
            img.save(root / name / f"{i}.png")
    return root


def _venv(root: Path, wheel: Path) -> tuple[Path, dict]:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    site = Path(subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.startswith(OURS):
            (deps / entry.name).symlink_to(entry)
    (site / "_checkout_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    # --ignore-installed, no PYTHONPATH, cwd outside: a checkout's trainwise.egg-info on the path is not "installed"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "--no-deps",
                    "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True, timeout=600, env=clean,
                   cwd=root)
    assert (root / "bin" / "trainwise").is_file(), "pip installed no trainwise console script"
    dvc = root / "bin" / "dvc"  # DVC's own launcher, on this venv's interpreter
    dvc.write_text(f"#!{root / 'bin' / 'python'}\nimport sys\nfrom dvc.cli import main\nsys.exit(main())\n")
    dvc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PYTHONPATH",
                                                             "VIRTUAL_ENV")}
    checkout_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([str(root / "bin"), *(p for p in env.get("PATH", "").split(os.pathsep)
                                                          if p and p != checkout_bin)])
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@localhost", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return root, env


def test_wheel_claims_no_generic_top_level_names(wheel):
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"trainwise"}, sorted(tops)


def test_init_run_predict_from_the_installed_wheel(wheel, tmp_path):
    from trainwise.components.project.init import set_param

    venv, env = _venv(tmp_path / "venv", wheel)
    data = _images(tmp_path / "photos")
    transcript = [f"$ trainwise init shapes --data {data}"]
    out, _ = _run(["trainwise", "init", "shapes", "--data", str(data)], tmp_path, env)
    transcript.append(out)
    assert "labels: the class sub-folder names (2: blue, red)" in out and "next: cd shapes && trainwise run" in out
    proj = tmp_path / "shapes"
    # what the installed console script imports is the wheel's, not this checkout
    launcher = (venv / "bin" / "trainwise").read_text()
    module = re.search(r"^from (\S+) import main", launcher, re.M).group(1)
    where, _ = _run([str(venv / "bin" / "python"), "-c", f"import {module} as m; print(m.__file__)"], proj, env)
    assert where.strip().startswith(str(venv)), where
    # a quick run of the chosen settings (the user's knobs: fewer epochs, no sweep, fewer attributions)
    text = (proj / "params.yaml").read_text()
    # and near-duplicate grouping off: 40 generated patterns in two colours are what it is there to group,
    # which would leave nothing to split
    for key, value in {"tune.enabled": False, "train.epochs": 3, "evaluate.bootstrap_resamples": 200,
                       "evaluate.attribution_samples": 4, "evaluate.attribution_steps": 8,
                       "clean.near_duplicate_distance": 0}.items():
        text = set_param(text, key, value)
    assert "    min_cosine: 0.78 " in text
    text = text.replace("    min_cosine: 0.78 ", "    min_cosine: 1.0  ")
    (proj / "params.yaml").write_text(text)
    out, wall = _run(["trainwise", "run"], proj, env)
    transcript += ["$ trainwise run", out, f"(trainwise run: {wall:.0f} s wall)"]
    assert (proj / "mlflow.db").is_file() and (proj / "reports" / "report.html").is_file()
    assert "trainwise stage train" in out
    out, _ = _run(["trainwise", "predict", str(data / "red" / "0.png"), str(data / "blue" / "0.png"),
                   "--out", "predictions.csv"], proj, env)
    transcript += ["$ trainwise predict ...", out]
    table = (proj / "predictions.csv").read_text().splitlines()
    assert len(table) == 3 and "2 of 2 input(s) predicted" in out, (table, out)
    # the project holds only its own files: no trainwise source
    skip = {".git", ".dvc", ".trainwise", "mlartifacts", "mlruns"}  # MLflow's copy of a logged model is its record
    files = [p.relative_to(proj) for p in proj.rglob("*") if p.is_file() and not set(p.relative_to(proj).parts) & skip]
    assert not [f for f in files if f.suffix == ".py" or f.parts[0] in ("components", "pipelines", "trainwise")], files
    _run(["dvc", "status"], proj, env)  # DVC sees the project as complete
    (tmp_path / "transcript.txt").write_text("\n".join(transcript))
    print("\n".join(transcript))
