from components.evaluation.report import build_report, confusion_matrix_from_pairs

MANIFEST = {"rows": 9, "rows_in": 10, "set_aside": {"duplicate": 1}, "classes": ["a", "b"],
            "split_class_counts": {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 1}}}
TOTALS = {"pipeline/wall_s": 3.0, "pipeline/cpu_hours": 0.001, "pipeline/cost/usd": 0.5}


def test_report_without_later_stages_says_what_is_missing():
    page = build_report(title="t", verdict=None, stages={"ingest": {"cost/usd": 0.5, "cost/wall_s": 3.0}},
                        manifests={"ingest": MANIFEST}, curve=None, confusion=None, per_class=None, trials=None,
                        network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui")
    for heading in ("Learning curves", "Tuning trials", "Test metrics", "Per class"):
        assert f"<h2>{heading}</h2><p class='missing'>not available yet" in page
    assert "duplicate: 1" in page and "Verdict" not in page


def test_full_report_embeds_plots_and_the_verdict():
    stages = {"train": {"val/acc": 0.9, "cost/wall_s": 10.0}, "evaluate": {"test/acc": 0.8, "test/f1_macro": 0.7},
              "baseline": {"baseline/tree/val/acc": 0.7, "baseline/tree/test/acc": 0.6,
                           "baseline/tree/test/f1_macro": 0.5, "baseline/tree/fit_s": 0.1}}
    curve = [{"epoch": e, "train/loss": 1 / e, "val/loss": 1.2 / e, "train/acc": 0.5, "val/acc": 0.4} for e in (1, 2)]
    page = build_report(title="t", verdict="the mlp beats tree <by> 20 points", stages=stages,
                        manifests={"split": MANIFEST}, curve=curve,
                        confusion=[{"actual": "a", "predicted": "b"}, {"actual": "b", "predicted": "b"}],
                        per_class=[{"class": "a", "f1": 0.5}], trials=[{"trial": "t1", "lr": 0.1}],
                        network="mlp", pipeline=TOTALS, mlflow_hint="mlflow ui")
    assert page.count("data:image/png;base64,") == 2  # learning curves + confusion matrix
    assert "Verdict: the mlp beats tree &lt;by&gt; 20 points" in page  # escaped
    assert "network (mlp)" in page and "not available yet" not in page


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix_from_pairs([{"actual": "a", "predicted": "b"}, {"actual": "b", "predicted": "b"}], ["a", "b"])
    assert cm.tolist() == [[0, 1], [0, 1]]
