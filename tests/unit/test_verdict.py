"""The verdict and the registry gate (components/evaluation/verdict.py) read one interval."""

import numpy as np
import pytest

from trainwise.components.evaluation.metrics import paired_comparison, paired_f1_interval
from trainwise.components.evaluation.verdict import judge, registry_gate

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 3, 400)
PRED = np.where(RNG.random(400) < 0.9, Y, (Y + 1) % 3)        # ~90% right
BASE = np.where(RNG.random(400) < 0.8, Y, (Y + 2) % 3)        # ~80% right
KW = dict(resamples=200, confidence=0.95, seed=3)


def test_the_verdict_compares_on_the_same_rows_and_prices_the_network():
    v = judge(Y, PRED, BASE, net_name="the network", baseline="logistic_regression", baseline_acc=0.8,
              net_cost_usd=0.3, baseline_cost_usd=0.1, note="a note", **KW)
    assert v.comparison == paired_comparison(PRED == Y, BASE == Y, **KW)
    assert v.cost_ratio == pytest.approx(3.0) and v.sentence.endswith(". a note") and "logistic regression" in v.sentence
    m = v.metrics(0.9)
    assert m["verdict/cost_ratio"] == pytest.approx(3.0) and m["evaluate/gain_vs_best_baseline"] == pytest.approx(0.1)
    assert m["verdict/ci_low"] == v.comparison["ci_low"]
    assert v.record(confidence=0.95)["baseline"] == "logistic_regression"
    free = judge(Y, PRED, BASE, net_name="n", baseline="b", baseline_acc=0.8, net_cost_usd=0.3, baseline_cost_usd=0.0,
                 note=None, **KW)
    assert free.cost_ratio == float("inf") and "None" not in free.sentence


def test_the_gate_on_accuracy_uses_the_verdicts_interval_and_on_f1_its_own():
    v = judge(Y, PRED, BASE, net_name="n", baseline="b", baseline_acc=0.8, net_cost_usd=1, baseline_cost_usd=1,
              note=None, **KW)
    common = dict(y=Y, pred=PRED, base_pred=BASE, n_classes=3, min_gain=0.0, require_significant=True, **KW)
    acc = registry_gate(v, 0.9, 0.8, metric="test/acc", **common)
    assert (acc.ci_low, acc.ci_high) == pytest.approx((v.comparison["ci_low"] / 100, v.comparison["ci_high"] / 100))
    assert acc.promote and acc.baseline_name == "b"
    f1 = registry_gate(v, 0.9, 0.8, metric="test/f1_macro", **common)
    assert (f1.ci_low, f1.ci_high) == pytest.approx(paired_f1_interval(Y, PRED, BASE, n_classes=3, **KW))
