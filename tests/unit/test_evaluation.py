import numpy as np
import pytest

from components.evaluation.metrics import classification_metrics, verdict
from components.evaluation.summary import best_baseline, totals


def test_classification_metrics_on_known_predictions():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    m, per_class, cm = classification_metrics(y, proba, classes=["a", "b"])
    assert m["test/acc"] == 0.75 and m["test/rows"] == 4
    assert cm.tolist() == [[1, 1], [0, 2]]
    assert per_class[0] == {"class": "a", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


@pytest.mark.parametrize("net, base, cost, expected", [
    (0.99, 0.97, 30.0, "the small cnn beats svm by 2.0 points at 30x the cost"),
    (0.97, 0.99, 30.0, "svm beats the small cnn by 2.0 points; the network is not worth it here"),
    (0.971, 0.970, 1.0, "the small cnn ties svm (+0.1 points) at a similar cost: the simpler model would do"),
])
def test_verdict_sentence(net, base, cost, expected):
    assert verdict(net_acc=net, net_name="small cnn", baseline_acc=base, baseline_name="svm",
                   net_cost=cost, baseline_cost=1.0) == expected


def test_best_baseline_is_chosen_on_validation_not_test():
    m = {"baseline/tree/val/acc": 0.9, "baseline/tree/test/acc": 0.99,
         "baseline/logreg/val/acc": 0.95, "baseline/logreg/test/acc": 0.94}
    assert best_baseline(m) == ("logreg", 0.94)


def test_pipeline_totals_sum_stage_costs():
    t = totals({"a": {"cost/usd": 0.5, "cost/wall_s": 10}, "b": {"cost/usd": 0.25, "cost/wall_s": 5}})
    assert t["pipeline/cost/usd"] == 0.75 and t["pipeline/wall_s"] == 15
