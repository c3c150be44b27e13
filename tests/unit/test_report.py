from components.evaluation.figures import pareto_front
from components.evaluation.report import build_report, confusion_matrix_from_pairs

MANIFEST = {"rows": 9, "rows_in": 10, "set_aside": {"duplicate": 1}, "classes": ["a", "b"],
            "split_class_counts": {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 1}}}
TOTALS = {"pipeline/wall_s": 3.0, "pipeline/cpu_hours": 0.001, "pipeline/cost/usd": 0.5}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5b1a9e10000000049454e44ae426082")


def test_report_without_later_stages_says_what_is_missing():
    page = build_report(title="t", verdict=None, stages={"ingest": {"cost/usd": 0.5, "cost/wall_s": 3.0}},
                        manifests={"ingest": MANIFEST, "clean": None, "split": None}, curve=None, confusion=None,
                        per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui")
    for heading in ("Split and leakage check", "Learning curves and overfitting gap", "Tuning trials",
                    "Baselines vs network", "Test metrics and calibration", "Per class", "Attributions"):
        assert f"<h2>{heading}</h2><p class='missing'>not available yet" in page, heading
    assert "duplicate: 1" in page and "Verdict" not in page
    assert "not available: the clean stage wrote no label_suspects.jsonl" in page
    assert "no MLflow runs found" in page


def test_report_with_no_data_at_all_still_renders():
    page = build_report(title="t", verdict=None, stages={}, manifests={}, curve=None, confusion=None,
                        per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="m")
    assert "<h2>Data</h2><p class='missing'>not available yet" in page and page.endswith("</html>\n")


def test_full_report_embeds_plots_the_verdict_and_its_interval():
    stages = {"train": {"val/acc": 0.9, "cost/wall_s": 10.0, "cost/usd": 0.2, "gap/acc": 0.05, "train/acc": 0.95},
              "evaluate": {"test/acc": 0.8, "test/f1_macro": 0.7},
              "split": {"split/leakage_pairs": 0},
              "baseline": {"baseline/tree/val/acc": 0.7, "baseline/tree/test/acc": 0.6, "baseline/tree/cost/usd": 0.01,
                           "baseline/tree/test/f1_macro": 0.5, "baseline/tree/fit_s": 0.1}}
    curve = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e, "train/acc": 0.5, "val/acc": 0.4} for e in (1, 2)]
    evaluation = {
        "verdict": {"sentence": "the mlp beats tree <by> 20 points", "baseline": "tree", "diff": 20.0, "ci_low": 12.0,
                    "ci_high": 28.0, "confidence": 0.95, "mcnemar_p": 0.001, "net_cost_usd": 0.2,
                    "baseline_cost_usd": 0.01, "cost_ratio": 20.0},
        "calibration": {"ece": 0.031, "bins": []},
        "confidently_wrong": [{"id": "x1", "label": "a", "predicted": "b", "confidence": 0.99}],
        "attributions": {"method": "integrated_gradients", "rows": [
            {"id": "x1", "label": "a", "predicted": "b", "confidence": 0.99, "correct": False,
             "top_tokens": [{"token": "good", "score": 0.5}]}]}}
    page = build_report(title="t", verdict="the mlp beats tree <by> 20 points", stages=stages,
                        manifests={"split": MANIFEST}, curve=curve,
                        confusion=[{"actual": "a", "predicted": "b"}, {"actual": "b", "predicted": "b"}],
                        per_class=[{"class": "a", "f1": 0.5}],
                        trials=[{"trial": "t1", "cost/usd": "0.1", "best_val/acc": "0.9"},
                                {"trial": "t2", "cost/usd": "0.2", "best_val/acc": "0.95"}],
                        network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui", evaluation=evaluation,
                        images={"reliability": PNG, "attributions": PNG, "confident_wrong": PNG},
                        label_suspects=[], mlflow_runs=[{"stage": "train", "run_id": "abc123", "status": "FINISHED",
                                                         "url": "http://127.0.0.1:5000/#/experiments/1/runs/abc123"}])
    assert "Verdict: the mlp beats tree &lt;by&gt; 20 points" in page  # escaped
    assert "[+12.00, +28.00]" in page and "20.0x" in page and "McNemar" in page
    assert "split/leakage_pairs" in page  # the leakage check shows when split reports one
    assert "expected calibration error (ECE) = 0.0310" in page
    assert "good (+0.50)" in page  # top tokens of a text model
    assert "no likely label errors found" in page
    assert "<a href='http://127.0.0.1:5000/#/experiments/1/runs/abc123'>open</a>" in page
    assert "network (mlp)" in page and "not available yet" not in page
    # learning curves, pareto, confusion (drawn from pairs) + the three PNGs given
    assert page.count("data:image/png;base64,") == 6
    assert "gap/acc = +0.0500" in page


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix_from_pairs([{"actual": "a", "predicted": "b"}, {"actual": "b", "predicted": "b"}], ["a", "b"])
    assert cm.tolist() == [[0, 1], [0, 1]]


def test_pareto_front_keeps_only_undominated_trials():
    pts = [(1.0, 0.90), (2.0, 0.85), (3.0, 0.95), (0.5, 0.80), (4.0, 0.95)]
    assert pareto_front(pts, maximize=True) == [3, 0, 2]
    assert pareto_front([(1.0, 0.3), (2.0, 0.2), (3.0, 0.25)], maximize=False) == [0, 1]


def test_a_report_with_missing_sections_renders_in_chromium(tmp_path):
    import pytest

    from tests.browser import find_chromium, render_in_chromium

    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "r.html"
    page.write_text(build_report(title="t", verdict=None, stages={}, manifests={}, curve=None, confusion=None,
                                 per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="m"))
    result = render_in_chromium(page)
    assert result["errors"] == [] and result["broken_images"] == []
    assert result["headings"][:2] == ["Data", "Split and leakage check"] and result["toc_links"] == 10


def test_the_browser_check_catches_script_errors_and_broken_images(tmp_path):
    import pytest

    from tests.browser import find_chromium, render_in_chromium

    if find_chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><script>undefinedFn();</script></head><body><h2>x</h2>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'></body></html>")
    result = render_in_chromium(page)
    assert any("undefinedFn" in e for e in result["errors"]) and result["broken_images"] == ["broken"]
