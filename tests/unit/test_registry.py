import math

import mlflow
import numpy as np
import pytest

from trainwise.components.evaluation.metrics import paired_comparison, paired_f1_interval
from trainwise.components.tracking.mlflow_runs import setup_mlflow
from trainwise.components.tracking.registry import apply_gate, gate_decision

# The demo's case from issue 14.4: +0.019 on test/acc, but the verdict's 95% interval reaches below 0.
DEMO = dict(model_score=0.981, baseline_score=0.962, interval=(-0.004, 0.041))


def test_gate_promotes_only_when_the_lower_end_of_the_interval_exceeds_min_gain():
    win = gate_decision(0.98, 0.95, metric="test/acc", min_gain=0.01, interval=(0.012, 0.05),
                        baseline_name="logistic_regression")
    assert win.promote and win.gain == pytest.approx(0.03)
    assert win.metrics() == {"register/promoted": 1.0, "register/gain": pytest.approx(0.03),
                             "register/gain_ci_low": 0.012, "register/gain_ci_high": 0.05, "register/min_gain": 0.01,
                             "register/require_significant": 1.0}
    assert win.reason.startswith("promoted:") and "95% interval [+0.0120, +0.0500]" in win.reason
    # The point estimate clears the bar, the interval's lower end does not: not promoted by default.
    demo = gate_decision(DEMO["model_score"], DEMO["baseline_score"], metric="test/acc", min_gain=0.0,
                         interval=DEMO["interval"], baseline_name="logistic_regression")
    assert not demo.promote and demo.metrics()["register/promoted"] == 0.0
    assert demo.reason.startswith("not promoted") and "lower end -0.0040 does not exceed register.min_gain 0" \
        in demo.reason and "logistic_regression 0.9620" in demo.reason
    # min_gain raises the bar for the lower end too.
    assert not gate_decision(0.98, 0.95, metric="test/acc", min_gain=0.02, interval=(0.012, 0.05)).promote
    with pytest.raises(ValueError, match="model_score must be a number"):
        gate_decision(math.nan, 0.5, metric="test/acc", min_gain=0.0, interval=(0, 0))
    with pytest.raises(ValueError, match="needs the interval"):
        gate_decision(0.9, 0.5, metric="test/acc", min_gain=0.0, interval=None)


def test_relaxed_gate_judges_the_point_estimate_and_a_tie_never_promotes():
    relaxed = gate_decision(DEMO["model_score"], DEMO["baseline_score"], metric="test/acc", min_gain=0.0,
                            interval=DEMO["interval"], require_significant=False)
    assert relaxed.promote and "register.require_significant is false" in relaxed.reason
    assert relaxed.metrics()["register/require_significant"] == 0.0
    for strict in (True, False):  # a tie: nothing to gain from switching models
        tie = gate_decision(0.5, 0.5, metric="test/acc", min_gain=0.0, interval=(0.0, 0.0),
                            require_significant=strict)
        assert not tie.promote, strict
    assert not gate_decision(0.955, 0.95, metric="test/acc", min_gain=0.01, interval=(0.0, 0.02),
                             require_significant=False).promote  # +0.005 is below the bar


def test_the_gate_uses_the_verdicts_interval_on_real_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    net = np.where(rng.random(300) < 0.96, y, (y + 1) % 3)        # ~96%
    base = np.where(rng.random(300) < 0.94, y, (y + 2) % 3)       # ~94%: a small, unconfirmed gain
    cmp = paired_comparison(net == y, base == y, resamples=500, seed=0)
    gate = gate_decision(float((net == y).mean()), float((base == y).mean()), metric="test/acc", min_gain=0.0,
                         interval=(cmp["ci_low"] / 100, cmp["ci_high"] / 100))
    assert gate.promote == bool(cmp["significant"] and cmp["ci_low"] > 0)
    low, high = paired_f1_interval(y, net, base, n_classes=3, resamples=300, seed=0)
    assert low < gate.gain < high
    assert paired_f1_interval(y, net, net, n_classes=3, resamples=50, seed=0) == (0.0, 0.0)
    perfect = paired_f1_interval(y, y, (y + 1) % 3, n_classes=3, resamples=50, seed=0)
    assert perfect[0] > 0.9


def test_alias_follows_the_gate_through_a_real_registry(tmp_path):
    setup_mlflow(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t", root=tmp_path)
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    with mlflow.start_run() as run:
        pass
    v1, v2, v3, v4 = (client.create_model_version("m", source=(tmp_path / s).as_uri(), run_id=run.info.run_id).version
                      for s in "abcd")

    apply_gate("m", v1, gate_decision(0.99, 0.95, metric="test/acc", min_gain=0.0, interval=(0.02, 0.06)),
               alias="champion", tags={"test/acc": 0.99, "verdict": "good"})
    assert client.get_model_version_by_alias("m", "champion").version == v1
    # The demo's case: a point gain the interval does not confirm leaves the alias where it is.
    apply_gate("m", v2, gate_decision(metric="test/acc", min_gain=0.0, **DEMO), alias="champion")
    assert client.get_model_version_by_alias("m", "champion").version == v1
    apply_gate("m", v3, gate_decision(0.5, 0.5, metric="test/acc", min_gain=0.0, interval=(0.0, 0.0)),
               alias="champion")
    assert client.get_model_version_by_alias("m", "champion").version == v1  # a tie never promotes
    tags1, tags2 = client.get_model_version("m", v1).tags, client.get_model_version("m", v2).tags
    assert (tags1["register.promoted"], tags1["test/acc"], tags1["verdict"]) == ("true", "0.9900", "good")
    assert tags2["register.promoted"] == "false" and tags2["register.reason"].startswith("not promoted")
    assert "[-0.0040, +0.0410]" in tags2["register.reason"]
    # register.require_significant: false takes the point estimate.
    apply_gate("m", v4, gate_decision(metric="test/acc", min_gain=0.0, require_significant=False, **DEMO),
               alias="champion")
    assert client.get_model_version_by_alias("m", "champion").version == v4
    assert client.get_model_version("m", v4).tags["register.promoted"] == "true"
