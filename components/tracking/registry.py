"""The registry gate: a new model version is marked for use only if it beats the baselines.

Every trained model is registered (so it can be inspected and compared), but the alias that
serving and users follow (``register.alias``, e.g. ``champion``) moves to a new version only
when its test metric beats the best classical baseline by at least ``register.min_gain``.
Otherwise the alias stays where it was and the version carries the reason.
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

    @property
    def gain(self) -> float:
        return self.model_score - self.baseline_score

    def metrics(self) -> dict[str, float]:
        """What goes into metrics/evaluate.json (and the report): numbers only."""
        return {"register/promoted": float(self.promote), "register/gain": self.gain,
                "register/min_gain": self.min_gain}


def gate_decision(model_score: float, baseline_score: float, *, metric: str, min_gain: float,
                  baseline_name: str = "best baseline") -> GateDecision:
    """Promote iff ``model_score - baseline_score >= min_gain`` (higher is better)."""
    for name, v in (("model_score", model_score), ("baseline_score", baseline_score)):
        if not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"gate_decision: {name} must be a number, got {v!r}")
    gain = model_score - baseline_score
    if gain >= min_gain:
        reason = (f"{metric} {model_score:.4f} beats {baseline_name} ({baseline_score:.4f}) by {gain:+.4f} "
                  f">= register.min_gain {min_gain:g}")
    else:
        reason = (f"not promoted: {metric} {model_score:.4f} vs {baseline_name} {baseline_score:.4f} is a gain of "
                  f"{gain:+.4f}, below register.min_gain {min_gain:g}")
    return GateDecision(gain >= min_gain, metric, float(model_score), float(baseline_score), baseline_name,
                        float(min_gain), reason)


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
