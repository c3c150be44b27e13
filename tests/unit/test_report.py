from trainwise.components.evaluation.figures import pareto_front
from trainwise.components.evaluation.report import build_report, confusion_matrix_from_pairs

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
    assert "not available: the audit stage wrote no label_suspects.jsonl" in page
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
    assert "[+12.00, +28.00]" in page and "= 20x (wall time" in page and "McNemar" in page
    assert "split/leakage_pairs" in page  # the leakage check shows when split reports one
    assert "expected calibration error (ECE) = 0.0310" in page
    assert "good (+0.50)" in page  # top tokens of a text model
    assert "no likely label errors found" in page
    assert "<a href='http://127.0.0.1:5000/#/experiments/1/runs/abc123'>open</a>" in page
    assert "network (mlp)" in page and "not available yet" not in page
    # learning curves, pareto, confusion (drawn from pairs) + the three PNGs given
    assert page.count("data:image/png;base64,") == 6
    assert "gap/acc = +0.0500" in page


# Rows as the tune stage writes trials.csv with the default tune.metric (val/loss): the score
# column is best_val/loss; a trial that errored has no score. Issue 14.6: the Pareto plot looked
# for best_val/acc and said it needed two trials although the demo ran eight.
TRIALS = [{"trial": f"t{i}", "lr": "0.001", "status": "ok", "best_epoch": "3", "best_val/loss": f"{0.5 - i / 20}",
           "val/acc": f"{0.8 + i / 50}", "cost/usd": f"{0.0001 * (i + 1)}"} for i in range(4)] + [
    {"trial": "t4", "lr": "0.01", "status": "error", "best_epoch": "", "best_val/loss": "", "val/acc": "",
     "cost/usd": "0.0"}]
LEAKY_SPLIT = {**MANIFEST, "leakage": {"exact_pairs": 1, "near_pairs": 0, "groups_crossing_splits": 0,
                                       "examples": {"exact": [["id1", "id2"]], "near": []}}}


def _page_with_trials(**kw):
    return build_report(title="t", verdict=None, stages={}, manifests={"split": LEAKY_SPLIT}, curve=None,
                        confusion=None, per_class=None, trials=TRIALS, network="mlp", pipeline=TOTALS,
                        mlflow_hint="m", **kw)


def test_pareto_plot_uses_the_tune_metric_column_and_leakage_is_a_table():
    page = _page_with_trials()
    assert "alt='tune pareto'" in page and "needs at least two trials" not in page
    leak = page.split("<h3>Leakage check</h3>", 1)[1].split("<h2>", 1)[0]
    assert "{" not in leak and "[" not in leak  # no raw Python dict or list
    assert "<td>leakage.exact_pairs</td><td>1</td>" in leak and "1 listed in the split manifest" in leak
    # The split stage's namespaced metrics win when they exist (the names DVC and MLflow show).
    page = build_report(title="t", verdict=None, stages={"split": {"split/leakage/exact_pairs": 0}},
                        manifests={"split": LEAKY_SPLIT}, curve=None, confusion=None, per_class=None, trials=None,
                        network="mlp", pipeline=TOTALS, mlflow_hint="m")
    assert "<td>split/leakage/exact_pairs</td><td>0</td>" in page and "leakage.exact_pairs" not in page
    one = build_report(title="t", verdict=None, stages={}, manifests={}, curve=None, confusion=None, per_class=None,
                       trials=TRIALS[:1], network="mlp", pipeline=TOTALS, mlflow_hint="m")
    assert "Pareto plot: needs at least two trials with cost/usd and best_val/loss" in one


def test_the_pareto_image_renders_in_chromium_when_trials_exist(tmp_path):
    from tests.browser import render_in_chromium, require_chromium

    require_chromium()
    page = tmp_path / "trials.html"
    page.write_text(_page_with_trials())
    result = render_in_chromium(page)
    assert result["errors"] == [] and result["broken_images"] == []
    assert "tune pareto" in result["image_alts"]


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix_from_pairs([{"actual": "a", "predicted": "b"}, {"actual": "b", "predicted": "b"}], ["a", "b"])
    assert cm.tolist() == [[0, 1], [0, 1]]


def test_pareto_front_keeps_only_undominated_trials():
    pts = [(1.0, 0.90), (2.0, 0.85), (3.0, 0.95), (0.5, 0.80), (4.0, 0.95)]
    assert pareto_front(pts, maximize=True) == [3, 0, 2]
    assert pareto_front([(1.0, 0.3), (2.0, 0.2), (3.0, 0.25)], maximize=False) == [0, 1]


def test_a_report_with_missing_sections_renders_in_chromium(tmp_path):
    from tests.browser import render_in_chromium, require_chromium

    require_chromium()
    page = tmp_path / "r.html"
    page.write_text(build_report(title="t", verdict=None, stages={}, manifests={}, curve=None, confusion=None,
                                 per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="m"))
    result = render_in_chromium(page)
    assert result["errors"] == [] and result["broken_images"] == []
    assert result["headings"][:2] == ["Data", "Split and leakage check"] and result["toc_links"] == 10


def test_the_browser_check_catches_script_errors_and_broken_images(tmp_path):
    from tests.browser import render_in_chromium, require_chromium

    require_chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><script>undefinedFn();</script></head><body><h2>x</h2>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'></body></html>")
    result = render_in_chromium(page)
    assert any("undefinedFn" in e for e in result["errors"]) and result["broken_images"] == ["broken"]


def test_wide_and_long_tables_scroll_in_their_own_box_at_1280px(tmp_path):
    """Many tuning trials with long config values: the page itself never scrolls sideways in a
    1280 px window; the tables scroll inside their own box instead."""
    from tests.browser import render_in_chromium, require_chromium

    require_chromium()
    trials = [{"trial": f"train_fn_{i:05d}_{i}_batch_size=64,dropout=0.1234,lr=0.000123456,weight_decay=0.0001",
               **{f"config/{k}_with_a_long_name": f"value-{k}-{i}-" + "x" * 12 for k in range(14)},
               "cost/usd": 0.001 * (i + 1), "best_val/acc": 0.5 + i / 100} for i in range(40)]
    page = tmp_path / "wide.html"
    page.write_text(build_report(title="t", verdict="a verdict", stages={}, manifests={}, curve=None,
                                 confusion=None, per_class=None, trials=trials, network="mlp", pipeline=TOTALS,
                                 mlflow_hint="m"))
    result = render_in_chromium(page, width=1280)
    assert result["errors"] == []
    assert result["viewport_width"] == 1280
    assert result["scroll_width"] <= result["viewport_width"], result["too_wide"]
    boxes = result["scroll_boxes"]
    assert any(b["wider"] for b in boxes) and any(b["taller"] for b in boxes), boxes


def test_without_chromium_the_browser_checks_skip_locally_and_fail_under_ci(monkeypatch):
    import pytest

    from tests.browser import require_chromium

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but no chromium"):
        require_chromium()


def test_report_says_whether_the_label_audit_changed_training_data_and_why():
    why = "auditor not clearly better than chance: out-of-fold accuracy 0.600 vs majority-class rate 0.500"
    audit = {**MANIFEST, "set_aside": {}, "label_issues": {"acted": 0, "decision": why, "found": 754}}
    page = build_report(title="t", verdict=None, stages={"ingest": {"cost/usd": 0.5, "cost/wall_s": 3.0}},
                        manifests={"ingest": MANIFEST, "clean": None, "split": None, "audit": audit}, curve=None,
                        confusion=None, per_class=None, trials=None, network="mlp", pipeline=TOTALS,
                        mlflow_hint="mlflow ui", label_suspects=[{"id": "x1", "split": "test", "action": "flagged"}],
                        suspects_file="data/audit/label_issues.csv")
    assert f"label audit changed no row: {why}" in page
    acted = {**audit, "label_issues": {"acted": 1, "touched": 254, "decision": "254 train rows dropped; auditor trusted"}}
    page = build_report(title="t", verdict=None, stages={"ingest": {"cost/usd": 0.5, "cost/wall_s": 3.0}},
                        manifests={"ingest": MANIFEST, "audit": acted}, curve=None, confusion=None, per_class=None,
                        trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui")
    assert "label audit changed 254 train rows: 254 train rows dropped" in page
    # a trusted auditor whose cap allows no row changes none, and the page says so (issue 27)
    capped = {**audit, "label_issues": {"acted": 0, "touched": 0, "trusted": 1,
                                        "decision": "no train row changed: max_fraction 0 allows none"}}
    page = build_report(title="t", verdict=None, stages={"ingest": {"cost/usd": 0.5, "cost/wall_s": 3.0}},
                        manifests={"ingest": MANIFEST, "audit": capped}, curve=None, confusion=None, per_class=None,
                        trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui")
    assert "label audit changed no row: no train row changed" in page


ND_SPLIT = {**MANIFEST, "near_duplicate_groups": {
    "method": "exact copies (content hash); near-duplicates by efficientnet_lite0 embeddings (cosine >= 0.92)",
    "kind": "cosine", "model": "efficientnet_lite0", "threshold": 0.92, "max_group": 3, "groups": 2,
    "rows_in_groups": 7, "largest_group": 5, "over_max_group": [{"group": "g1", "rows": 5}], "split_threshold": 0.951,
    "unusable_vectors": 0, "notes": [],
    "near_misses": [{"id": "a1", "other": "b7", "similarity": 0.9112, "splits": ["train", "test"]}],
    "sample": [{"group": "g2", "rows": 2, "weakest": 0.931, "ids": ["g2", "c3"], "splits": ["val"]}]}}


def test_report_shows_how_near_duplicates_were_checked_and_the_pairs_nearest_the_threshold():
    page = build_report(title="t", verdict=None, stages={}, manifests={"split": ND_SPLIT}, curve=None, confusion=None,
                        per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="m",
                        images={"near_misses": PNG, "near_groups": PNG}, snippets={"a1": "win a prize <b>now</b>"})
    assert "near-duplicates by efficientnet_lite0 embeddings (cosine &gt;= 0.92)" in page
    assert "the largest has 5 rows" in page and "a threshold above 0.9510 would split it" in page
    assert "Closest pairs left apart (cosine below 0.92)" in page and "0.9112" in page and "train/test" in page
    assert "win a prize &lt;b&gt;now&lt;/b&gt;" in page        # text snippets, escaped
    assert "alt='closest pairs left apart'" in page and "alt='near-duplicate groups'" in page
    old = build_report(title="t", verdict=None, stages={}, manifests={"split": MANIFEST}, curve=None, confusion=None,
                       per_class=None, trials=None, network="mlp", pipeline=TOTALS, mlflow_hint="m")
    assert "no near-duplicate record (an older split)" in old


def test_the_report_names_the_network_as_the_verdict_does():
    """The baselines table read "network (small_cnn)" for a frozen MiniLM + linear head (train.model
    is not what a backbone run trains): the name comes from what evaluate scored."""
    from trainwise.pipelines.config import parse_params
    from trainwise.pipelines.report import _network_name

    text = parse_params({"ingest": {"source": "table", "path": "x.csv", "text_column": "text"},
                         "train": {"backbone": "all_minilm_l6_v2"}})
    assert _network_name(text, {"network": "backbone:all_minilm_l6_v2"}) == "all-MiniLM-L6-v2 + linear head"
    assert _network_name(text, None) == "all-MiniLM-L6-v2 + linear head"  # before evaluate has run
    assert _network_name(parse_params({}), {"network": "small_cnn"}) == "small cnn"
