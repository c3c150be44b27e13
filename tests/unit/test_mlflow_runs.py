import mlflow

from trainwise.components.tracking.mlflow_runs import PIPELINE_RUN_ENV, flatten, log_history, pipeline_run_id, setup_mlflow, ui_command


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


def test_links_open_the_runs_view_not_the_genai_view(tmp_path):
    from trainwise.components.tracking.mlflow_runs import ui_url, where_to_look

    # MLflow 3.17's UI picks GenAI vs Model training from this query parameter (else the browser's last choice).
    assert ui_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    hint = where_to_look(f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}", tmp_path, experiment="trainwise",
                         model="m", experiment_id="1")
    assert hint.startswith("mlflow ui --backend-store-uri sqlite:///mlflow.db, then open "
                           "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")
    assert where_to_look("http://h:5000", tmp_path, experiment="e", model="m", experiment_id="2").startswith(
        "open http://h:5000/#/experiments/2?workflowType=machine_learning")


def test_pipeline_run_id_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-abc")
    assert pipeline_run_id() == "run-abc"
    monkeypatch.delenv(PIPELINE_RUN_ENV)
    assert pipeline_run_id().startswith("adhoc-")  # pytest does not descend from `dvc`


def _project(tmp_path):
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
                                                                     "experiment": "nest"}}))
    return tmp_path


def test_stages_of_one_pipeline_run_nest_under_one_parent_with_the_total_cost(tmp_path, monkeypatch):
    import pytest

    from trainwise.components.tracking.mlflow_runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
    from trainwise.pipelines.stage import Stage

    root = _project(tmp_path)
    monkeypatch.setenv(PIPELINE_RUN_ENV, "run-1")
    with Stage("ingest", root=root) as a:
        a.finish({})
    with Stage("split", root=root) as b:
        b.finish({})
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("nest")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert a.parent_run_id == b.parent_run_id
    parent = client.get_run(a.parent_run_id)
    assert parent.data.tags["trainwise.stage"] == "pipeline" and parent.data.tags["trainwise.pipeline_run"] == "run-1"
    assert {"git.commit", "params.hash"} <= set(parent.data.tags) and parent.info.status == "FINISHED"
    stages = [client.get_run(s.run_id) for s in (a, b)]
    assert all(r.data.tags["mlflow.parentRunId"] == a.parent_run_id for r in stages)
    assert parent.data.metrics["pipeline/cost/usd"] == pytest.approx(sum(r.data.metrics["cost/usd"] for r in stages))
    assert parent.data.metrics["pipeline/stages"] == 2

    # A failing stage of the same pipeline run marks the parent FAILED; a new id starts a new parent.
    with pytest.raises(RuntimeError):
        with Stage("train", root=root) as c:
            raise RuntimeError("boom")
    assert c.parent_run_id == a.parent_run_id and client.get_run(a.parent_run_id).info.status == "FAILED"
    monkeypatch.delenv(PIPELINE_RUN_ENV)  # a stage run by hand (`trainwise stage X`): its own parent
    with Stage("ingest", root=root) as d:
        d.finish({})
    with Stage("ingest", root=root) as e:
        e.finish({})
    assert len({a.parent_run_id, d.parent_run_id, e.parent_run_id}) == 3  # never an older run's parent
    client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    with Stage("ingest", root=root) as f:  # a kind chosen in the UI is kept
        f.finish({})
    assert client.get_experiment(exp.experiment_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"
