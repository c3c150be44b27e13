import mlflow

from components.tracking.mlflow_runs import PIPELINE_RUN_ENV, flatten, log_history, pipeline_run_id, setup_mlflow, ui_command


def test_flatten_nested_sections_for_mlflow_params():
    assert flatten({"tune": {"search_space": {"lr": {"low": 1e-3}}, "enabled": True}, "models": ["a", "b"]}) == {
        "tune.search_space.lr.low": "0.001", "tune.enabled": "True", "models": "a,b"}


def test_history_is_logged_per_epoch_in_a_real_sqlite_store(tmp_path):
    setup_mlflow(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t", root=tmp_path)
    rows = [{"epoch": e, "train/loss": 1.0 / e, "val/acc": 0.5 + e / 10, "note": "x"} for e in (1, 2, 3)]
    with mlflow.start_run() as run:
        n = log_history(run.info.run_id, rows)
    assert n == 6  # numbers only; the string column is skipped
    hist = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/acc")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    exp = mlflow.get_experiment_by_name("t")
    assert exp.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_ui_command_is_relative_for_the_repo_store(tmp_path):
    assert ui_command(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}", tmp_path) == \
        "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert ui_command("http://127.0.0.1:5000", tmp_path) == "open http://127.0.0.1:5000"


def test_pipeline_run_id_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-abc")
    assert pipeline_run_id() == "run-abc"
    monkeypatch.delenv(PIPELINE_RUN_ENV)
    assert pipeline_run_id().startswith("adhoc-")  # pytest does not descend from `dvc`
