"""The clean and split stages as DVC runs them: their reports are DVC metrics, and dvc.yaml
declares each stage's own params."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from components.data.contract import read_manifest, read_table
from tests.conftest import REPO


def test_dvc_yaml_declares_quality_params_and_metrics():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "clean" in stages["clean"]["params"] and "split" in stages["split"]["params"]
    for name in ("clean", "split"):
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stages[name]["metrics"]]
        assert metrics == [f"${{paths.metrics}}/{name}.json"]
    assert "components/quality/duplicates.py" in stages["split"]["deps"]  # the leakage check


@pytest.mark.slow
def test_ingest_clean_split_with_injected_noise(tmp_path):
    params = {"clean": {"noise": {"rate": 0.2, "seed": 1}, "label_issues": {"policy": "flag"}},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "ray": {"num_cpus": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO)
    for stage in ("ingest", "clean", "split"):
        proc = subprocess.run([sys.executable, "-m", f"pipelines.{stage}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    clean = json.loads((tmp_path / "metrics/clean.json").read_text())
    assert clean["clean/rows_in"] == clean["clean/rows"] + clean["clean/set_aside"]
    assert clean["clean/noise/flipped"] > 200
    assert clean["clean/label_issues/f1"] >= 0.85
    assert clean["clean/label_issues/flagged"] == clean["clean/label_issues/found"]
    with open(tmp_path / "data/clean/label_issues.csv") as f:
        suspects = list(csv.DictReader(f))
    assert len(suspects) == 50 and {"given_label", "predicted_label", "confidence"} <= set(suspects[0])

    split = json.loads((tmp_path / "metrics/split.json").read_text())
    assert split["split/leakage/ok"] == 1 and split["split/leakage/near_pairs"] == 0
    assert sum(split[f"split/{s}_rows"] for s in ("train", "val", "test")) == clean["clean/rows"]
    man = read_manifest(tmp_path / "data/split")
    assert man["image_shape"] == [8, 8, 1] and man["leakage"]["groups_crossing_splits"] == 0
    # the marker and true-label columns travel with the data; training reads only what it names
    t = read_table(tmp_path / "data/split")
    assert {"id", "label", "image", "split", "group", "true_label", "label_issue"} <= set(t.schema.names)
    from components.training.data import load_split
    x, y, _ = load_split(str(tmp_path / "data/split"), "train")
    assert x.shape[1:] == (1, 8, 8) and len(y) == split["split/train_rows"]
