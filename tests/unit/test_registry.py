import math

import mlflow
import pytest

from components.tracking.mlflow_runs import setup_mlflow
from components.tracking.registry import apply_gate, gate_decision


def test_gate_promotes_only_when_the_gain_reaches_min_gain():
    win = gate_decision(0.98, 0.96, metric="test/acc", min_gain=0.01, baseline_name="logistic_regression")
    assert win.promote and win.gain == pytest.approx(0.02)
    assert win.metrics() == {"register/promoted": 1.0, "register/gain": pytest.approx(0.02), "register/min_gain": 0.01}
    lose = gate_decision(0.965, 0.96, metric="test/acc", min_gain=0.01, baseline_name="logistic_regression")
    assert not lose.promote and lose.metrics()["register/promoted"] == 0.0
    assert "below register.min_gain 0.01" in lose.reason and "logistic_regression 0.9600" in lose.reason
    assert gate_decision(0.5, 0.5, metric="test/acc", min_gain=0.0).promote  # a tie passes a zero bar
    with pytest.raises(ValueError, match="model_score must be a number"):
        gate_decision(math.nan, 0.5, metric="test/acc", min_gain=0.0)


def test_alias_moves_to_a_better_version_and_stays_put_otherwise(tmp_path):
    setup_mlflow(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t", root=tmp_path)
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    with mlflow.start_run() as run:
        pass
    v1 = client.create_model_version("m", source=(tmp_path / "a").as_uri(), run_id=run.info.run_id).version
    v2 = client.create_model_version("m", source=(tmp_path / "b").as_uri(), run_id=run.info.run_id).version

    apply_gate("m", v1, gate_decision(0.99, 0.95, metric="test/acc", min_gain=0.0), alias="champion",
               tags={"test/acc": 0.99, "verdict": "good"})
    assert client.get_model_version_by_alias("m", "champion").version == v1
    apply_gate("m", v2, gate_decision(0.90, 0.95, metric="test/acc", min_gain=0.0), alias="champion")
    assert client.get_model_version_by_alias("m", "champion").version == v1  # not taken by the worse one
    tags1, tags2 = client.get_model_version("m", v1).tags, client.get_model_version("m", v2).tags
    assert (tags1["register.promoted"], tags1["test/acc"], tags1["verdict"]) == ("true", "0.9900", "good")
    assert tags2["register.promoted"] == "false" and tags2["register.reason"].startswith("not promoted")
