"""The whole pipeline through real `dvc repro` in a copy of the repo, with params shrunk.

Asserts what a user checks: metrics files, the MLflow store (one run per stage, one child
run per tune trial, a registered model), the HTML report, a no-op second repro, and
`dvc exp run -S ...` followed by `dvc metrics diff`.
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.project import DEMO_EXTRA_SPACE, DEMO_TRIALS
from tests.project import sh as _sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

STAGES = ["ingest", "clean", "split", "audit", "baseline", "tune", "train", "evaluate", "report"]
TRIALS = DEMO_TRIALS


@pytest.fixture(scope="module")
def project(demo_pipeline):
    """The session's demo `dvc repro` (tests/conftest.py:demo_pipeline; params: tests/project.py:demo_params):
    these tests read it, then change it."""
    return demo_pipeline.root, demo_pipeline.env, ["git"], demo_pipeline.out


def _metrics(root, stage):
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def test_every_stage_ran_and_wrote_its_metrics(project):
    root, _, _, out = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
        assert "cost/usd" in _metrics(root, stage)
    assert _metrics(root, "ingest")["ingest/rows"] == 1797
    clean = _metrics(root, "clean")
    assert clean["clean/rows_in"] == clean["clean/rows"] + clean["clean/set_aside"]
    ev = _metrics(root, "evaluate")
    assert ev["test/acc"] >= 0.9  # 3 epochs; the full demo reaches >= 0.97
    assert _metrics(root, "train")["train/epochs_run"] == 3
    tune = _metrics(root, "tune")
    assert tune["tune/trials"] == TRIALS and tune["tune/trial_starts"] >= TRIALS  # every trial started at least once
    assert tune["tune/repeatable"] == 1  # one-worker trials, no budget cut, not resumed
    assert 0 <= tune["tune/trial_startup_s_median"] <= tune["tune/trial_startup_s_max"] < tune["tune/sweep_wall_s"]
    assert 0 < tune["tune/first_actors_start_s"] < tune["tune/sweep_wall_s"]
    assert "Downloading artifacts" not in out  # MLflow's progress bars stay out of the repro's log
    assert json.loads((root / "models/tune/best_params.json").read_text())["source"] == "tune"
    assert (root / "models/model/model.pt").exists()
    report = (root / "reports/report.html").read_text()
    assert "Verdict:" in report and report.count("data:image/png;base64,") >= 2
    assert "alt='tune pareto'" in report  # the sweep ran trials: their cost/score plot is drawn (issue 14.6)
    assert "== trainwise summary ==" in out and "test accuracy" in out
    sentence = json.loads((root / "models/evaluate/evaluation.json").read_text())["verdict"]["sentence"]
    assert f"Verdict: {sentence}" in report and f"verdict            {sentence}" in out  # issue 8 acceptance
    assert {"verdict/diff", "verdict/ci_low", "verdict/ci_high", "verdict/cost_ratio", "test/ece"} <= set(ev)


def test_mlflow_holds_stage_runs_trial_children_and_registered_model(project):
    root = project[0]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainwise")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("trainwise.stage"), []).append(r)
    for stage in STAGES:
        assert len(by_stage[stage]) == 1, stage
        assert by_stage[stage][0].info.status == "FINISHED"
    assert len({by_stage[s][0].data.tags["trainwise.pipeline_run"] for s in STAGES}) == 1
    tune_run = by_stage["tune"][0]
    children = by_stage["tune.trial"]
    assert len(children) == TRIALS
    assert all(c.data.tags["mlflow.parentRunId"] == tune_run.info.run_id for c in children)
    assert all("lr" in c.data.params for c in children)
    train_run = by_stage["train"][0]
    assert train_run.data.params["train.num_workers"] == "2"
    audit_hash = json.loads((root / "data/audit/manifest.json").read_text())["content_hash"]
    for stage in ("baseline", "tune", "train", "evaluate"):  # the data version each stage consumed: the audited split
        assert by_stage[stage][0].data.tags["input.data/audit.content_hash"] == audit_hash
    history = client.get_metric_history(train_run.info.run_id, "val/loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    versions = client.search_model_versions("name = 'trainwise-digits'")
    assert len(versions) == 1 and versions[0].run_id == train_run.info.run_id
    assert float(versions[0].tags["test/acc"]) == pytest.approx(_metrics(root, "evaluate")["test/acc"], abs=1e-4)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/trainwise-digits/1")  # raw image bytes in, classes out
    from trainwise.components.data.sources import encode_png

    pred = served.predict(pd.DataFrame({"image": [encode_png(np.zeros((8, 8), np.uint8))] * 5}))
    assert len(pred) == 5 and pred["predicted_class"].isin([str(d) for d in range(10)]).all()


def test_mlflow_lineage_cost_and_registry_gate(project):
    root = project[0]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainwise")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {r.data.tags["trainwise.stage"]: r for r in runs
                if r.data.tags["trainwise.stage"] not in ("tune.trial", "pipeline")}
    trials = [r for r in runs if r.data.tags["trainwise.stage"] == "tune.trial"]
    # One parent run for the repro (issue 17): every stage nested under it, the total cost on it.
    (parent,) = [r for r in runs if r.data.tags["trainwise.stage"] == "pipeline"]
    assert {r.data.tags["mlflow.parentRunId"] for r in by_stage.values()} == {parent.info.run_id}
    assert parent.data.metrics["pipeline/cost/usd"] == pytest.approx(sum(r.data.metrics["cost/usd"]
                                                                         for r in by_stage.values()))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # Cost on every run, trials included; the dollars in MLflow are those in the DVC metrics.
    for r in [*by_stage.values(), *trials]:
        assert {"cost/usd", "cost/wall_s", "cost/cpu_hours"} <= set(r.data.metrics), r.data.tags["trainwise.stage"]
    for stage, r in by_stage.items():
        assert r.data.metrics["cost/usd"] == pytest.approx(_metrics(root, stage)["cost/usd"])
        assert "cost/cpu_hours_used" in r.data.metrics and "git.commit" in r.data.tags
    assert _metrics(root, "report")["pipeline/cost/usd"] == pytest.approx(
        sum(_metrics(root, s)["cost/usd"] for s in STAGES if s != "report"))
    # Lineage: the md5 DVC locked for data/audit (what training read), and its three splits as
    # MLflow dataset inputs.
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    audit_md5 = next(o["md5"] for o in lock["stages"]["audit"]["outs"] if o["path"] == "data/audit")
    audit_hash = json.loads((root / "data/audit/manifest.json").read_text())["content_hash"]
    for stage in ("baseline", "tune", "train", "evaluate"):
        r = by_stage[stage]
        assert r.data.tags["input.data/audit.dvc_md5"] == audit_md5, stage
        assert {(d.dataset.name, d.dataset.digest) for d in r.inputs.dataset_inputs} == \
            {(f"audit/{s}", audit_hash[:32]) for s in ("train", "val", "test")}, stage
    # Artifacts: manifests, plots, the report.
    assert "manifest.json" in {a.path for a in client.list_artifacts(by_stage["split"].info.run_id)}
    assert "plots/train_curve.csv" in {a.path for a in client.list_artifacts(by_stage["train"].info.run_id, "plots")}
    assert "report.html" in {a.path for a in client.list_artifacts(by_stage["report"].info.run_id)}
    # The registry gate: alias only if the network beat the best baseline by register.min_gain.
    ev = _metrics(root, "evaluate")
    version = client.search_model_versions("name = 'trainwise-digits'")[0]
    assert version.tags["register.promoted"] == ("true" if ev["register/promoted"] else "false")
    assert by_stage["evaluate"].data.tags["register.reason"] == version.tags["register.reason"]
    # By default the lower end of the verdict's interval decides (issue 14.4), not the point gain.
    assert ev["register/gain_ci_low"] == pytest.approx(ev["verdict/ci_low"] / 100)
    assert (ev["register/gain_ci_low"] > ev["register/min_gain"]) == bool(ev["register/promoted"])
    if ev["register/promoted"]:
        assert client.get_model_version_by_alias("trainwise-digits", "champion").version == version.version
    else:
        assert "champion" not in client.get_registered_model("trainwise-digits").aliases


def test_the_train_stage_trains_with_every_key_tune_chose(project):
    """tune samples the shipped search space plus label_smoothing (a key train used to ignore,
    like optimizer); the train stage, run after it, trains with the winner: the loop's own config
    in its checkpoint has every key, and the run's train.* MLflow params are exactly what the loop
    ran with."""
    root = project[0]
    import mlflow

    params = yaml.safe_load((root / "params.yaml").read_text())
    best = json.loads((root / "models/tune/best_params.json").read_text())
    winner = best["params"]
    assert best["source"] == "tune" and set(winner) == set(params["tune"]["search_space"])
    assert set(DEMO_EXTRA_SPACE) <= set(winner) and 0.05 <= winner["label_smoothing"] <= 0.3
    assert params["train"]["label_smoothing"] != winner["label_smoothing"]
    # what the loop ran with: the config it saved in its checkpoints
    ray_run = json.loads((root / "models/model/model.json").read_text())["ray_run"]
    (ckpt,) = sorted((root / ".trainwise/ray" / ray_run).glob("checkpoint_*/checkpoint.pt"))[-1:]
    ran = torch.load(ckpt, map_location="cpu", weights_only=True)["config"]
    assert {k: ran[k] for k in winner} == winner

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainwise")
    (run,) = client.search_runs([exp.experiment_id], "tags.`trainwise.stage` = 'train'")
    logged = run.data.params
    shared = [k for k in ran if f"train.{k}" in logged]
    assert len(shared) >= 15, shared  # every loop knob is a train.* param
    for k in shared:
        assert logged[f"train.{k}"] == str(ran[k]), (k, logged[f"train.{k}"], ran[k])


def test_second_repro_changes_nothing(project):
    root, env, _, _ = project
    out = _sh(["dvc", "repro"], root, env)
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out


# That a rerun of a finished train stage trains afresh instead of resuming the finished Ray run:
# tests/faults/test_stage_death.py, on a copy of this project after a killed repro.


def _status_with(project, section: str, key: str, value) -> dict:
    """`dvc status` with params.yaml's ``section.key`` set to ``value`` (restored after)."""
    root, env, _, _ = project
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return json.loads(_sh(["dvc", "status", "--json"], root, env))
    finally:
        (root / "params.yaml").write_text(original)


def test_a_train_knob_changes_train_and_what_follows_not_tune_or_before(project):
    status = _status_with(project, "train", "epochs", 2)
    # only what reads train.epochs is out of date (what follows it re-runs after it)
    assert "train" in status and not {"ingest", "clean", "split", "audit", "baseline", "tune"} & set(status), status


def test_a_label_audit_knob_changes_the_audit_and_what_follows_not_clean_or_split(project):
    root, env, _, _ = project
    label_issues = {**yaml.safe_load((root / "params.yaml").read_text())["clean"]["label_issues"], "policy": "flag"}
    status = _status_with(project, "clean", "label_issues", label_issues)
    assert "audit" in status and not {"ingest", "clean", "split"} & set(status), status


def test_more_workers_than_the_machine_has_is_an_error_not_a_hang(project):
    root, env, _, _ = project
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train"]["num_workers"] = 64
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.train"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        (root / "params.yaml").write_text(original)
    assert proc.returncode == 2
    assert "train.num_workers=64" in proc.stderr and "asks for 64 x {CPU: 1}" in proc.stderr  # counted per node
    assert "Traceback" not in proc.stderr


# Last: `dvc exp run` leaves its -S change in the workspace's params.yaml.
def test_tune_turned_off_by_exp_run_trains_with_train_params_and_shows_in_metrics_diff(project):
    root, env, git, _ = project
    _sh([*git, "add", "-A"], root, env)
    _sh([*git, "commit", "-qm", "first run"], root, env)
    out = _sh(["dvc", "exp", "run", "-S", "tune.enabled=false"], root, env)
    for stage in ("ingest", "clean", "split", "audit", "baseline"):  # only what reads tune.enabled re-ran
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'tune'" in out and "Running stage 'train'" in out
    best = json.loads((root / "models/tune/best_params.json").read_text())
    assert best == {"source": "train", "params": {}}  # nothing tuned: train trains with train.* as given
    assert (root / "models/tune/trials.csv").read_text().count("\n") == 1  # header only
    assert _metrics(root, "tune")["tune/trials"] == 0
    report = (root / "reports/report.html").read_text()
    assert "<h2>Tuning trials</h2><p class='missing'>" in report  # the section says so instead of breaking
    diff = json.loads(_sh(["dvc", "metrics", "diff", "--json"], root, env))
    change = diff["metrics/tune.json"]["tune/trials"]
    assert (change["old"], change["new"]) == (TRIALS, 0)
