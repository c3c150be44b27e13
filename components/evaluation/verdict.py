"""The verdict (the network against the best baseline, on the very same test rows) and the
registry gate that believes it: both read one paired-bootstrap interval.

The evaluate stage computes predictions and reads the baselines' metrics; :func:`judge` returns a
:class:`Verdict` (the sentence, the interval, the costs), and :func:`registry_gate` decides whether
the registered version's alias may move, by default on the lower end of that same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainwise.components.evaluation.metrics import paired_comparison, paired_f1_interval, verdict
from trainwise.components.tracking.registry import GateDecision, gate_decision


@dataclass(frozen=True)
class Verdict:
    sentence: str
    baseline: str             # the best baseline, chosen on val
    baseline_acc: float       # its test/acc
    comparison: dict          # paired_comparison: diff, ci_low, ci_high (accuracy points), ...
    net_cost_usd: float       # train + tune
    baseline_cost_usd: float
    cost_ratio: float         # network / baseline (inf when the baselines cost nothing)

    def metrics(self, test_acc: float) -> dict[str, float]:
        """``verdict/*`` and the gain over the best baseline, for metrics/evaluate.json."""
        return {**{f"verdict/{k}": v for k, v in self.comparison.items()}, "verdict/cost_ratio": self.cost_ratio,
                "evaluate/gain_vs_best_baseline": test_acc - self.baseline_acc}

    def record(self, *, confidence: float) -> dict:
        """The ``verdict`` of evaluation.json (the report reads it)."""
        return {"sentence": self.sentence, "baseline": self.baseline, "confidence": confidence,
                "net_cost_usd": self.net_cost_usd, "baseline_cost_usd": self.baseline_cost_usd,
                "cost_ratio": self.cost_ratio, **self.comparison}


def judge(y: np.ndarray, pred: np.ndarray, base_pred: np.ndarray, *, net_name: str, baseline: str,
          baseline_acc: float, net_cost_usd: float, baseline_cost_usd: float, note: str | None,
          resamples: int, confidence: float, seed: int) -> Verdict:
    """The network's predictions ``pred`` against the best baseline's ``base_pred`` on the test rows
    ``y``: accuracy difference with its paired-bootstrap interval, the cost ratio, one sentence
    (``note`` appended, e.g. that a frozen-backbone head is the linear probe again)."""
    cmp = paired_comparison(pred == y, base_pred == y, resamples=resamples, confidence=confidence, seed=seed)
    cost_ratio = net_cost_usd / baseline_cost_usd if baseline_cost_usd > 0 else float("inf")
    sentence = verdict(net_name=net_name, baseline_name=baseline.replace("_", " "), diff=cmp["diff"],
                       ci_low=cmp["ci_low"], ci_high=cmp["ci_high"], cost_ratio=cost_ratio, confidence=confidence)
    sentence = f"{sentence}. {note}" if note else sentence
    return Verdict(sentence=sentence, baseline=baseline, baseline_acc=baseline_acc, comparison=cmp,
                   net_cost_usd=net_cost_usd, baseline_cost_usd=baseline_cost_usd, cost_ratio=cost_ratio)


def registry_gate(v: Verdict, model_score: float, baseline_score: float, *, y: np.ndarray, pred: np.ndarray,
                  base_pred: np.ndarray, n_classes: int, metric: str, min_gain: float, require_significant: bool,
                  resamples: int, confidence: float, seed: int) -> GateDecision:
    """Whether the network may be promoted over the best baseline on ``metric``. For test/acc the
    interval is the verdict's own (points to accuracy units); for test/f1_macro a paired bootstrap of
    the same rows, resampled alike."""
    if metric == "test/acc":
        interval = (v.comparison["ci_low"] / 100, v.comparison["ci_high"] / 100)
    else:
        interval = paired_f1_interval(y, pred, base_pred, n_classes=n_classes, resamples=resamples,
                                      confidence=confidence, seed=seed)
    return gate_decision(model_score, baseline_score, metric=metric, min_gain=min_gain, interval=interval,
                         confidence=confidence, require_significant=require_significant, baseline_name=v.baseline)
