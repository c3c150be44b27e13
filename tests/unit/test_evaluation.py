import numpy as np
import pytest

from trainwise.components.evaluation.metrics import (calibration, classification_metrics, confidently_wrong,
                                           paired_comparison, verdict)
from trainwise.components.evaluation.summary import best_baseline, totals


def test_classification_metrics_on_known_predictions():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    m, per_class, cm = classification_metrics(y, proba, classes=["a", "b"])
    assert m["test/acc"] == 0.75 and m["test/rows"] == 4
    assert cm.tolist() == [[1, 1], [0, 2]]
    assert per_class[0] == {"class": "a", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


@pytest.mark.parametrize("diff, low, high, ratio, expected", [
    (1.9, 1.3, 2.5, 14.2, "the small cnn beats svm by 1.9 ± 0.6 points (95% CI) at about 10x the cost"),
    (-2.0, -3.0, -1.0, 30.0, "svm beats the small cnn by 2.0 ± 1.0 points (95% CI); the network, at about 30x the cost, "
                             "is not worth it here"),
    (0.4, -0.5, 1.3, 3.2, "the small cnn and svm differ by +0.4 ± 0.9 points (95% CI), not significant, with the "
                          "network at about 3x the cost: the simpler model would do"),
    (0.4, -0.5, 1.3, 1.2, "the small cnn and svm differ by +0.4 ± 0.9 points (95% CI), not significant, with the "
                          "network at a similar cost: the simpler model would do"),
    (0.4, -0.5, 1.3, 0.064, "the small cnn and svm differ by +0.4 ± 0.9 points (95% CI), not significant, with the "
                            "network at about 0.06x the cost: either would do"),
])
def test_verdict_sentence(diff, low, high, ratio, expected):
    assert verdict(net_name="small cnn", baseline_name="svm", diff=diff, ci_low=low, ci_high=high,
                   cost_ratio=ratio) == expected


def test_verdict_quotes_the_cost_ratio_no_finer_than_it_is_measured():
    # two identical demo repros measured 12.5x and 19.6x: the sentence must not tell them apart
    # more finely than "10x" vs "20x", and must not drop the network's cost (inf: baseline cost 0)
    say = {r: verdict(net_name="cnn", baseline_name="svm", diff=1.0, ci_low=0.5, ci_high=1.5, cost_ratio=r)
           for r in (12.5, 14.9, 19.35, 19.41, float("inf"))}
    assert say[12.5] == say[14.9] and say[19.35] == say[19.41] and "about 20x" in say[19.35]
    assert "an unmeasured multiple of the cost" in say[float("inf")]


def test_paired_bootstrap_detects_a_real_difference_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.90
    better = base | (rng.random(2000) < 0.5)  # fixes half of the baseline's errors: +5 points
    c = paired_comparison(better, base, resamples=500, seed=1)
    assert c["diff"] == pytest.approx(100 * (better.mean() - base.mean()))
    assert 0 < c["ci_low"] < c["diff"] < c["ci_high"] and c["significant"] == 1.0 and c["mcnemar_p"] < 1e-6
    same = paired_comparison(base, base, resamples=500, seed=1)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0 and same["significant"] == 0.0
    assert same["mcnemar_p"] == 1.0
    # same accuracy, different mistakes (15 rows each way): the interval straddles 0
    noisy = base.copy()
    noisy[np.flatnonzero(base)[:15]] = False
    noisy[np.flatnonzero(~base)[:15]] = True
    c2 = paired_comparison(noisy, base, resamples=500, seed=1)
    assert c2["diff"] == 0 and c2["ci_low"] < 0 < c2["ci_high"] and c2["significant"] == 0.0
    assert c2["mcnemar_p"] == pytest.approx(1.0)
    assert paired_comparison(better, base, resamples=500, seed=1) == c  # seeded: reproducible


def test_paired_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal-length"):
        paired_comparison(np.ones(3), np.ones(4))


def test_calibration_of_a_perfectly_and_an_over_confident_model():
    y = np.array([0, 1, 0, 1])
    sure_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    ece, rows = calibration(y, sure_right, bins=10)
    assert ece == 0 and rows == [{"bin": "0.90-1.00", "confidence": 1.0, "accuracy": 1.0, "count": 4}]
    half_wrong = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])  # 90% sure, 50% right
    ece, _ = calibration(y, half_wrong, bins=10)
    assert ece == pytest.approx(0.4)


def test_confidently_wrong_orders_by_confidence():
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.4, 0.6], [0.1, 0.9], [0.9, 0.1], [0.3, 0.7]])
    assert confidently_wrong(y, proba, k=5) == [1, 0]
    assert confidently_wrong(y, proba, k=1) == [1]


def test_best_baseline_is_chosen_on_validation_not_test():
    m = {"baseline/tree/val/acc": 0.9, "baseline/tree/test/acc": 0.99,
         "baseline/logreg/val/acc": 0.95, "baseline/logreg/test/acc": 0.94}
    assert best_baseline(m) == ("logreg", 0.94)


def test_pipeline_totals_sum_stage_costs():
    t = totals({"a": {"cost/usd": 0.5, "cost/wall_s": 10}, "b": {"cost/usd": 0.25, "cost/wall_s": 5}})
    assert t["pipeline/cost/usd"] == 0.75 and t["pipeline/wall_s"] == 15


def test_the_verdict_names_a_backbone_network_as_people_do():
    """model.json names a backbone network `backbone:<train.backbone>` (what resolve_backbone writes);
    the verdict once printed "the backbone:all minilm l6 v2"."""
    from trainwise.components.models.backbone_names import network_display_name
    from trainwise.components.models.networks import BACKBONE_PREFIX

    saved = f"{BACKBONE_PREFIX}all_minilm_l6_v2"
    name = network_display_name(saved)
    assert name == "all-MiniLM-L6-v2 + linear head"
    sentence = verdict(net_name=name, baseline_name="linear probe", diff=-0.6, ci_low=-1.2, ci_high=0.1, cost_ratio=30)
    assert sentence.startswith("the all-MiniLM-L6-v2 + linear head and linear probe differ")
    assert network_display_name(f"{BACKBONE_PREFIX}efficientnet_lite0", backbone_mode="finetune") == \
        "EfficientNet-Lite0 + linear head, fine-tuned"
    assert network_display_name(f"{BACKBONE_PREFIX}sentence-transformers/all-mpnet-base-v2") == \
        "all-mpnet-base-v2 + linear head"
    assert network_display_name("small_cnn") == "small cnn"
