"""baseline -> evaluate -> report on digits in a temporary project (no Ray: a small MLP trained in
the test stands in for the train stage's output), then the terminal summary and the HTML page in
a real headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from trainwise.components.embedding.store import write_no_backbone
from tests.demo_data import write_digits_split
from trainwise.components.models import build_model
from trainwise.components.training.data import load_split
from trainwise.components.training.export import save_model
from tests.browser import render_in_chromium, require_chromium
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # ~20-30 s: sklearn + MLflow store creation + three stages


def _train_mlp(split_dir):
    torch.manual_seed(0)
    x, y, _ = load_split(split_dir, "train")
    model = build_model("mlp", input_shape=(1, 8, 8), n_classes=10, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):  # full batch: ~0.95 test accuracy in a second
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["model"] = "mlp"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    split = write_digits_split(root / "data")
    write_no_backbone(root / "data/embed")  # the embed stage's output without train.backbone
    classes = json.loads((split / "manifest.json").read_text())["classes"]
    model = _train_mlp(split)
    save_model(root / "models/model", model.state_dict(),
               {"model": "mlp", "input_shape": [1, 8, 8], "classes": classes, "dropout": 0.0})
    (root / "metrics").mkdir()
    (root / "metrics/train.json").write_text(json.dumps(
        {"val/acc": 0.95, "train/acc": 0.99, "gap/acc": 0.04, "cost/usd": 0.0006, "cost/wall_s": 24.0}))
    (root / "metrics/tune.json").write_text(json.dumps({"cost/usd": 0.003, "cost/wall_s": 120.0}))
    (root / "plots").mkdir()
    with open(root / "plots/train_curve.csv", "w") as f:
        w = csv.DictWriter(f, ["epoch", "train/loss", "val/loss", "train/acc", "val/acc", "gap/acc"])
        w.writeheader()
        for e in (1, 2, 3):
            w.writerow({"epoch": e, "train/loss": 1 / e, "val/loss": 1.1 / e, "train/acc": 0.8 + e / 20,
                        "val/acc": 0.78 + e / 25, "gap/acc": 0.02})
    old_cwd, old_env = os.getcwd(), dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["TRAINWISE_PIPELINE_RUN"] = "test-run-1"
    os.environ.pop("TRAINWISE_SUMMARY_BY_CLI", None)
    os.chdir(root)
    try:
        from trainwise.pipelines import baseline, evaluate, report

        for stage in (baseline, evaluate, report):
            stage.main()
        yield root
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)


def _json(root, rel):
    return json.loads((root / rel).read_text())


def test_baselines_cover_four_models_with_accuracy_f1_time_and_cost(project):
    m = _json(project, "metrics/baseline.json")
    for name in ("majority", "logistic_regression", "decision_tree", "gradient_boosting"):
        for k in ("val/acc", "test/acc", "test/f1_macro", "fit_s", "cost/usd"):
            assert f"baseline/{name}/{k}" in m, (name, k)
    assert m["baseline/majority/test/acc"] < 0.2  # 10 balanced classes
    assert m["baseline/gradient_boosting/test/acc"] > 0.9 and m["baseline/logistic_regression/test/acc"] > 0.9
    rows = list(csv.DictReader(open(project / "models/baseline/test_predictions.csv")))
    from trainwise.components.data.contract import read_table

    assert len(rows) == read_table(project / "data/split", columns=["id"], filter_split="test").num_rows
    assert {"id", "label", "gradient_boosting"} <= set(rows[0])


def test_evaluate_writes_metrics_calibration_verdict_and_attributions(project):
    ev = _json(project, "metrics/evaluate.json")
    assert ev["test/acc"] > 0.85 and 0 <= ev["test/ece"] <= 1
    # no test row flagged by the audit here: the second number is the headline
    assert ev["test/flagged_rows"] == 0 and ev["test/acc_unflagged"] == ev["test/acc"]
    assert ev["verdict/ci_low"] <= ev["verdict/diff"] <= ev["verdict/ci_high"]
    base = _json(project, "metrics/baseline.json")
    assert ev["verdict/cost_ratio"] == pytest.approx((0.0006 + 0.003) / base["cost/usd"])
    details = _json(project, "models/evaluate/evaluation.json")
    v = details["verdict"]
    assert v["baseline"] in ("logistic_regression", "gradient_boosting", "decision_tree")
    assert "mlp" in v["sentence"] and v["baseline"].replace("_", " ") in v["sentence"]
    assert "points (95% CI)" in v["sentence"]
    # paired on the same rows: the diff is exactly network acc - that baseline's test acc
    assert v["diff"] == pytest.approx(100 * (ev["test/acc"] - base[f"baseline/{v['baseline']}/test/acc"]))
    # The registry gate believes the verdict: same interval, promoted only if its lower end clears min_gain.
    assert ev["register/gain_ci_low"] == pytest.approx(v["ci_low"] / 100)
    assert ev["register/promoted"] == float(v["ci_low"] / 100 > ev["register/min_gain"])
    rows = details["attributions"]["rows"]
    assert len(rows) == 16 and any(not r["correct"] for r in rows) and any(r["correct"] for r in rows)
    wrong = details["confidently_wrong"]
    assert wrong and all(a["confidence"] >= b["confidence"] for a, b in zip(wrong, wrong[1:]))
    for png in ("plots/confusion.png", "plots/reliability.png", "models/evaluate/attributions.png",
                "models/evaluate/confident_wrong.png"):
        assert (project / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert sum(int(r["count"]) for r in csv.DictReader(open(project / "plots/calibration.csv"))) == ev["test/rows"]


def test_report_holds_every_section_and_says_what_is_missing(project):
    page = (project / "reports/report.html").read_text()
    sentence = _json(project, "models/evaluate/evaluation.json")["verdict"]["sentence"]
    assert f"Verdict: {sentence}" in page
    for h in ("Data", "Split and leakage check", "Learning curves and overfitting gap", "Tuning trials",
              "Baselines vs network", "Test metrics and calibration", "Attributions", "Cost per stage", "MLflow runs"):
        assert f"<h2>{h}</h2>" in page, h
    assert "not available: the audit stage wrote no data/audit/label_issues.csv" in page
    assert "<h2>Tuning trials</h2><p class='missing'>" in page  # no trials.csv in this project
    assert "not available: the split stage reports no leakage check" in page
    assert page.count("data:image/png;base64,") >= 5  # curves, confusion, reliability, wrong, attributions
    assert "expected calibration error" in page and "network (mlp)" in page
    for stage in ("baseline", "evaluate"):  # the MLflow run ids of this pipeline run
        run_id = _mlflow_run_id(project, stage)
        assert run_id in page


def _mlflow_run_id(root, stage):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainwise")
    runs = client.search_runs([exp.experiment_id], f"tags.`trainwise.stage` = '{stage}'")
    return runs[0].info.run_id


def test_report_is_logged_to_mlflow(project):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert "report.html" in [a.path for a in client.list_artifacts(_mlflow_run_id(project, "report"))]


def test_label_suspects_appear_with_thumbnails_when_the_audit_writes_them(project, monkeypatch):
    ids = [r["id"] for r in list(csv.DictReader(open(project / "models/baseline/test_predictions.csv")))[:3]]
    suspects = project / "data/audit/label_suspects.jsonl"
    suspects.write_text("".join(json.dumps({"id": i, "given": "1", "predicted": "7", "confidence": 0.9 - k / 10})
                                + "\n" for k, i in enumerate(ids)))
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.setenv("TRAINWISE_SUMMARY_BY_CLI", "1")
    try:
        from trainwise.pipelines import report

        report.main()
        page = (project / "reports/report.html").read_text()
    finally:
        suspects.unlink()
    assert "<h3>Label suspects</h3><div class='tablebox'><table>" in page and ids[0] in page
    assert "alt='label suspects'" in page


def test_terminal_summary_prints_the_verdict(project, monkeypatch, capsys):
    from trainwise.pipelines.cli import main

    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    sentence = _json(project, "models/evaluate/evaluation.json")["verdict"]["sentence"]
    assert f"verdict            {sentence}" in out


def test_report_renders_in_headless_chromium(project, tmp_path):
    require_chromium()  # skips without chromium, fails under CI=true
    page = tmp_path / "report.html"
    shutil.copy(project / "reports/report.html", page)
    result = render_in_chromium(page, screenshot=tmp_path / "shot.png", width=1280)
    assert result["scroll_width"] <= result["viewport_width"] == 1280, result["too_wide"]  # nothing overflows sideways
    assert result["errors"] == [], result["errors"]
    assert {"Data", "Baselines vs network", "Attributions", "MLflow runs"} <= set(result["headings"])
    assert result["images"] >= 5 and result["broken_images"] == []
    assert result["toc_links"] == len(result["headings"])  # the page's own script ran
    shot = (tmp_path / "shot.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert img.std() > 5  # something was drawn, not a blank page


def test_stale_or_missing_baseline_predictions_name_the_stage_to_rerun(project):
    from trainwise.components.data.contract import DataContractError, read_test_predictions

    path = project / "models/baseline/test_predictions.csv"
    ids = [r["id"] for r in csv.DictReader(open(path))]
    assert len(read_test_predictions(path, "decision_tree", ids)) == len(ids)
    with pytest.raises(DataContractError, match="re-run the baseline stage"):
        read_test_predictions(path, "decision_tree", ids[:-1] + ["not-a-test-row"])
    with pytest.raises(DataContractError, match="no column 'svm'"):
        read_test_predictions(path, "svm", ids)
    with pytest.raises(FileNotFoundError, match="run the baseline stage first"):
        read_test_predictions(project / "nope.csv", "decision_tree", ids)
