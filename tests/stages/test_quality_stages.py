"""The clean, split and audit stages as DVC runs them: their reports are DVC metrics, dvc.yaml
declares each stage's own params, the audit acts on train rows only, and it starts Ray only for
data of at least clean.label_issues.ray_min_rows rows."""

import csv
import json
import subprocess
import sys

import pytest
import yaml

from trainwise.components.data.contract import read_manifest, read_table
from trainwise.pipelines.config import CleanParams
from tests.conftest import REPO

DOWNSTREAM = ("baseline", "tune", "train", "evaluate")


def test_dvc_yaml_declares_quality_params_and_metrics():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # clean reads exactly its own keys: a label-audit or split knob does not re-run it
    read_by_clean = {f"clean.{k}" for k in CleanParams.model_fields if k not in ("label_issues", "noise")}
    assert {k for k in stages["clean"]["params"] if k.startswith("clean")} == read_by_clean
    assert {"clean.label_issues", "clean.noise"} <= set(stages["audit"]["params"])
    assert "split" in stages["split"]["params"]
    for name in ("clean", "split", "audit"):
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stages[name]["metrics"]]
        assert metrics == [f"${{paths.metrics}}/{name}.json"]
    assert "components/quality/duplicates.py" in stages["split"]["deps"]  # the leakage check
    assert {"${paths.split}", "${paths.embed}"} <= set(stages["audit"]["deps"])
    assert stages["audit"]["outs"] == ["${paths.audit}"]
    for name in DOWNSTREAM:  # training and its judges read the audited split (data/audit), whose rows extend
        # data/split and data/clean (the payload is stored once): those are deps too, so DVC re-runs them
        # when any link of the chain changes and a cluster job is shipped all three
        assert {"${paths.audit}", "${paths.split}", "${paths.clean}"} <= set(stages[name]["deps"]), name
    assert "${paths.audit}" in stages["report"]["deps"]  # label_issues.csv and the audit's decision


def _run(stage, cwd, env, *, probe=False):
    """Run a stage as DVC would; with ``probe``, in a wrapper that reports whether Ray was imported
    or started in the stage's process."""
    cmd = [sys.executable, "-m", f"trainwise.pipelines.{stage}"]
    if probe:
        cmd = [sys.executable, "-c", f"import sys, trainwise.pipelines.{stage} as s; s.main(); ray = sys.modules.get('ray'); "
                                     "print('RAY_STARTED', bool(ray and ray.is_initialized()), 'ray' in sys.modules)"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_ingest_clean_split_audit_with_injected_noise(demo_pipeline, tmp_path):
    # ingest, clean, embed and split as the session's demo pipeline ran them (tests/conftest.py:
    # demo_pipeline); the noise is the audit's (clean.noise is an audit param in dvc.yaml)
    project = tmp_path / "project"
    env = demo_pipeline.copy_to(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["clean"]["noise"].update(rate=0.2, seed=1)
    params["clean"]["label_issues"]["policy"] = "flag"
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params["ray"]["num_cpus"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # 1,797 rows < ray_min_rows (50,000): the folds run in the stage's process, Ray is never imported
    out = _run("audit", project, env, probe=True)
    assert "RAY_STARTED False False" in out and "in-process" in out

    clean = json.loads((project / "metrics/clean.json").read_text())
    assert clean["clean/rows_in"] == clean["clean/rows"] + clean["clean/set_aside"]
    assert not any("label_issues" in k or "noise" in k for k in clean)  # clean no longer judges labels
    audit = json.loads((project / "metrics/audit.json").read_text())
    assert audit["audit/noise/flipped"] > 200 and audit["audit/label_issues/ray"] == 0
    assert audit["audit/label_issues/f1"] >= 0.85
    assert audit["audit/label_issues/acted"] == 0 and audit["audit/rows"] == clean["clean/rows"]  # flag: all kept
    with open(project / "data/audit/label_issues.csv") as f:
        suspects = list(csv.DictReader(f))
    assert len(suspects) >= 50 and {"split", "given_label", "predicted_label", "confidence"} <= set(suspects[0])
    assert "label audit: policy flag" in out  # the one terminal line that says what the audit did
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("trainwise").experiment_id],
        "tags.`trainwise.stage` = 'audit'")[0]
    assert run.data.params["clean.label_issues.policy"] == "flag" and run.data.params["clean.noise.rate"] == "0.2"
    assert run.data.tags["audit.decision"].startswith("policy flag")

    split = json.loads((project / "metrics/split.json").read_text())
    assert split["split/leakage/ok"] == 1 and split["split/leakage/near_pairs"] == 0
    assert sum(split[f"split/{s}_rows"] for s in ("train", "val", "test")) == clean["clean/rows"]
    man = read_manifest(project / "data/audit")
    assert man["image_shape"] == [8, 8, 1] and man["label_issues"]["decision"].startswith("policy flag")
    # the marker and true-label columns travel with the data; training reads only what it names
    t = read_table(project / "data/audit")
    assert {"id", "label", "image", "split", "group", "true_label", "label_issue", "given_label"} <= set(t.schema.names)
    from trainwise.components.training.data import load_split
    x, y, _ = load_split(str(project / "data/audit"), "train")
    assert x.shape[1:] == (1, 8, 8) and len(y) == split["split/train_rows"]

    # From ray_min_rows rows on, the folds are Ray tasks: same folds, same seed, the same suspects.
    params["clean"]["label_issues"]["ray_min_rows"] = 1000
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run("audit", project, env, probe=True)
    assert "RAY_STARTED True True" in out and "as Ray tasks" in out
    with_ray = json.loads((project / "metrics/audit.json").read_text())
    assert with_ray["audit/label_issues/ray"] == 1
    # billed for what it held: one CPU in-process; with Ray, `workers` (2) 1-CPU fold tasks at once
    assert audit["cost/cpu_hours"] == pytest.approx(audit["cost/wall_s"] / 3600, rel=1e-6)
    assert with_ray["cost/cpu_hours"] == pytest.approx(2 * with_ray["cost/wall_s"] / 3600, rel=1e-6)
    assert with_ray["audit/label_issues/found"] == audit["audit/label_issues/found"]
