"""The registry gate: a new model version is marked for use only if it truly beats the baselines.

Every trained model is registered (so it can be inspected and compared), but the alias that
serving and users follow (``register.alias``, e.g. ``champion``) moves to a new version only
when the network's gain over the best classical baseline on the test rows exceeds
``register.min_gain``. By default (``register.require_significant: true``) the gate reads the
gain from the *lower end* of the verdict's paired-bootstrap interval, so it never promotes a
model the verdict calls "not significant ... the simpler model would do"; a tie never
promotes. ``require_significant: false`` relaxes it to the point estimate. Otherwise the alias
stays where it was and the version carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    model_score: float
    baseline_score: float
    baseline_name: str
    min_gain: float
    reason: str
    ci_low: float = float("nan")   # interval of (network - baseline) on `metric`, in its units (not points)
    ci_high: float = float("nan")
    confidence: float = float("nan")
    require_significant: bool = True

    @property
    def gain(self) -> float:
        return self.model_score - self.baseline_score

    def metrics(self) -> dict[str, float]:
        """What goes into metrics/evaluate.json (and the report): numbers only."""
        return {"register/promoted": float(self.promote), "register/gain": self.gain,
                "register/gain_ci_low": self.ci_low, "register/gain_ci_high": self.ci_high,
                "register/min_gain": self.min_gain, "register/require_significant": float(self.require_significant)}


def _number(name: str, v) -> float:
    if not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"gate_decision: {name} must be a number, got {v!r}")
    return float(v)


def gate_decision(model_score: float, baseline_score: float, *, metric: str, min_gain: float,
                  interval: tuple[float, float] | None, confidence: float = 0.95,
                  require_significant: bool = True, baseline_name: str = "best baseline") -> GateDecision:
    """Decide whether the new version gets the alias (higher ``metric`` is better).

    ``interval``: the (low, high) interval of ``model_score - baseline_score`` on the same test
    rows, in the metric's units (the verdict's, divided by 100 for points). With
    ``require_significant`` the version is promoted iff ``low > min_gain``; without it, iff the
    point estimate ``model_score - baseline_score > min_gain``. Both are strict: a tie never
    promotes, whatever the bar.
    """
    model_score, baseline_score = _number("model_score", model_score), _number("baseline_score", baseline_score)
    gain = model_score - baseline_score
    if interval is None:
        if require_significant:
            raise ValueError("gate_decision: register.require_significant needs the interval of the gain")
        low = high = float("nan")
    else:
        low, high = _number("interval low", interval[0]), _number("interval high", interval[1])
    ci = f"{confidence:.0%} interval [{low:+.4f}, {high:+.4f}]" if interval is not None else "no interval"
    vs = f"{metric} {model_score:.4f} vs {baseline_name} {baseline_score:.4f}: gain {gain:+.4f}, {ci}"
    if require_significant:
        promote = low > min_gain
        reason = (f"promoted: {vs}; its lower end exceeds register.min_gain {min_gain:g}" if promote else
                  f"not promoted: {vs}; its lower end {low:+.4f} does not exceed register.min_gain {min_gain:g} "
                  "(the gain is not established on this test set; register.require_significant: false would "
                  "judge the point estimate)")
    else:
        promote = gain > min_gain
        reason = (f"promoted: {vs}; the point estimate exceeds register.min_gain {min_gain:g} "
                  "(register.require_significant is false)" if promote else
                  f"not promoted: {vs}; the gain {gain:+.4f} does not exceed register.min_gain {min_gain:g}")
    return GateDecision(promote, metric, model_score, baseline_score, baseline_name, float(min_gain), reason,
                        low, high, float(confidence), bool(require_significant))


def apply_gate(name: str, version: str, decision: GateDecision, *, alias: str,
               tags: dict[str, object] | None = None, client=None) -> GateDecision:
    """Tag the registered version (``tags``: e.g. its test metrics; floats as %.4f) and the
    decision; move ``alias`` to it if promoted, else leave the alias where it was."""
    import mlflow

    client = client or mlflow.MlflowClient()
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, f"{v:.4f}" if isinstance(v, float) else str(v))
    client.set_model_version_tag(name, version, "register.promoted", str(decision.promote).lower())
    client.set_model_version_tag(name, version, "register.reason", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(name, alias, version)
    return decision
