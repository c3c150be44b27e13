"""ingest and clean import only what they use (issue 29: stages at the speed of a plain script).
Profiled, a third to a half of their time on a few hundred photos was imports that did nothing
for the photos: MLflow with tracking off (5 s a stage on a busy machine), scikit-learn for clean's
KD-tree, torch to learn that the built-in backbone takes 224x224."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from trainwise.pipelines import clean, ingest
from trainwise.pipelines.stage import run_stage
run_stage(ingest.main, exit_process=False)
run_stage(clean.main, exit_process=False)
print("IMPORTED", sorted(m for m in ("mlflow", "torch", "sklearn") if m in sys.modules))
"""


def test_ingest_and_clean_import_no_mlflow_torch_or_sklearn_they_do_not_use(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["mlflow"]["enabled"] = False
    params["ingest"].update(source="image_folder", path="photos")
    params["clean"].update(image_size=[16, 16], channels=3, near_duplicate_distance=0.05)  # the KD-tree runs
    params["train"]["backbone"] = "efficientnet_lite0"     # built in: its input size is known without torch
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    for k in range(8):
        (tmp_path / "photos" / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "photos" / "ab"[k % 2] / f"{k}.png")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics" / "clean.json").read_text())["clean/rows"] == 8
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]
