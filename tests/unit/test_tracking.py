"""Secrets masking, DVC lineage lookup, and a stage with tracking turned off."""

import json

import mlflow
import yaml

from trainwise.components.tracking.mlflow_runs import MASK, dvc_locked_hashes, environment_tags, mask_secrets
from trainwise.pipelines.stage import Stage


def test_credential_looking_keys_and_url_passwords_are_masked():
    out = mask_secrets({"api_key": "abc", "train.lr": 0.1, "AWS_SECRET_ACCESS_KEY": "x", "db.Password": "p",
                        "hf_token": "t", "uri": "http://alice:s3cr3t@mlflow.example:5000", "empty_token": None,
                        "checkpoints_to_keep": 2})
    assert out == {"api_key": MASK, "train.lr": 0.1, "AWS_SECRET_ACCESS_KEY": MASK, "db.Password": MASK,
                   "hf_token": MASK, "uri": f"http://{MASK}@mlflow.example:5000", "empty_token": None,
                   "checkpoints_to_keep": 2}
    tags = environment_tags({"TRAINWISE_API_TOKEN": "t0k", "RAY_ADDRESS": "ray://u:pw@head:10001",
                             "HOME": "/root", "MLFLOW_TRACKING_PASSWORD": "pw"})
    assert tags == {"env.MLFLOW_TRACKING_PASSWORD": MASK, "env.RAY_ADDRESS": f"ray://{MASK}@head:10001",
                    "env.TRAINWISE_API_TOKEN": MASK}


def test_ordinary_params_that_mention_tokens_or_keys_are_logged_as_they_are():
    # Issue 14.6: "token" inside `max_tokens` hid a training knob behind ***.
    params = {"train.max_tokens": 64, "train.vocab_size": 20000, "tokenizer.pad_token": "<pad>",
              "train.checkpoints_to_keep": 2, "sort_key": "id", "env.RAY_AUTH_MODE": "token"}
    assert mask_secrets(params) == params
    secrets = {"mlflow.password": "pw", "storage.secret_access_key": "k", "auth_token": "t", "RAY_AUTH_TOKEN": "t",
               "client.clientSecret": "c", "credentials": "c", "token": "t", "azure.sas": "sv=1"}
    assert mask_secrets(secrets) == {k: MASK for k in secrets}


def test_secret_looking_values_are_masked_under_any_key():
    github, aws = "ghp_" + "a1B2" * 9, "AKIA" + "ABCDEFGHIJKLMNOP"
    out = mask_secrets({"note": f"pushed with {github}", "ray.storage_path": "s3://b/p?X-Amz-Signature=abc&x=1",
                        "header": "Bearer abcdefghijkl", "id": aws, "hf": "hf_" + "x" * 34, "lr": "0.001"})
    assert out == {"note": f"pushed with {MASK}", "ray.storage_path": f"s3://b/p?X-Amz-Signature={MASK}&x=1",
                   "header": MASK, "id": MASK, "hf": MASK, "lr": "0.001"}


def test_dvc_hash_comes_from_dvc_lock_only_while_it_matches_the_data(tmp_path):
    data = tmp_path / "data" / "split"
    data.mkdir(parents=True)
    (data / "a.parquet").write_bytes(b"12345")
    (data / "manifest.json").write_text("{}")
    lock = {"schema": "2.0", "stages": {"split": {"cmd": "x", "outs": [
        {"path": "data/split", "hash": "md5", "md5": "0123abcd.dir", "size": 7, "nfiles": 2}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_locked_hashes(tmp_path / "dvc.lock", ["data/split"]) == {"data/split": "0123abcd.dir"}
    (data / "a.parquet").write_bytes(b"changed!")  # data rewritten since dvc locked it: no stale hash
    assert dvc_locked_hashes(tmp_path / "dvc.lock", ["data/split"]) == {}
    assert dvc_locked_hashes(tmp_path / "missing.lock", ["data/split"]) == {}


def _project(tmp_path, **mlflow_params):
    params = {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", **mlflow_params}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_no_secret_from_the_environment_reaches_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINWISE_API_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("RAY_ADDRESS", "ray://bob:hunter2@head:10001")
    with Stage("ingest", root=_project(tmp_path)) as stage:
        stage.finish({"ingest/rows": 1})
    run = mlflow.MlflowClient().get_run(stage.run_id)
    assert run.data.tags["env.TRAINWISE_API_TOKEN"] == MASK
    assert run.data.tags["env.RAY_ADDRESS"] == f"ray://{MASK}@head:10001"
    everything = json.dumps([run.data.tags, run.data.params])
    assert "s3cr3t-value" not in everything and "hunter2" not in everything
    assert run.data.params["ingest.source"] == "digits"  # the stage's own section, flattened
    assert run.data.params["cost.cpu_hour_usd"] == "0.048"  # and the rates its dollars come from
    assert {"cost/usd", "cost/wall_s", "cost/cpu_hours", "cost/cpu_hours_used"} <= set(run.data.metrics)


def test_a_train_run_logs_max_tokens_and_masks_a_password(tmp_path):
    with Stage("train", root=_project(tmp_path)) as stage:
        stage.tracker.log_params({"mlflow.password": "hunter2"})
        stage.finish({})
    params = mlflow.MlflowClient().get_run(stage.run_id).data.params
    assert params["train.max_tokens"] == "64" and params["train.vocab_size"] == "20000"
    assert params["mlflow.password"] == MASK


def test_tracking_off_writes_dvc_metrics_and_touches_no_store(tmp_path):
    root = _project(tmp_path, enabled=False)
    with Stage("ingest", root=root) as stage:
        assert not stage.tracker.active and stage.run_id.startswith("local-")
        stage.tracker.set_tags({"a": "b"})                      # no-ops, not errors
        assert stage.tracker.call("something", lambda: 1 / 0) is None
        out = stage.finish({"ingest/rows": 3})
    assert json.loads((root / "metrics" / "ingest.json").read_text())["ingest/rows"] == 3
    assert out["cost/usd"] > 0
    assert not (root / "m.db").exists() and not (root / "mlruns").exists()


def test_outage_mid_stage_is_spooled_and_sent_when_the_store_answers_again(tmp_path, monkeypatch, capfd):
    """Fault injection on a real SQLite store: the first write fails like a dead server would."""
    import trainwise.components.tracking.tracker as tracker

    real_apply, failures = tracker._apply, iter([ConnectionError("Connection refused")])

    def flaky_apply(client, run_id, op):
        err = next(failures, None)
        if err is not None:
            raise err
        return real_apply(client, run_id, op)

    root = _project(tmp_path)
    with Stage("ingest", root=root) as stage:
        monkeypatch.setattr(tracker, "_apply", flaky_apply)
        stage.tracker.log_history([{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": 0.25}])
        assert not stage.tracker.online and stage.tracker.spool_path.exists()
        stage.finish({"ingest/rows": 7})
    # Back by the end of the stage: the spool was sent there and then, and removed.
    assert not stage.tracker.spool_path.exists()
    client = mlflow.MlflowClient()
    run = client.get_run(stage.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["ingest/rows"] == 7
    assert [m.value for m in sorted(client.get_metric_history(stage.run_id, "train/loss"), key=lambda m: m.step)] \
        == [0.5, 0.25]
    assert "were replayed to run" in capfd.readouterr().err


def test_a_request_mlflow_rejects_is_reported_not_fatal(tmp_path):
    with Stage("ingest", root=_project(tmp_path)) as stage:
        stage.tracker.log_params({"x": "1"})
        stage.tracker.log_params({"x": "2"})  # MLflow refuses to change a logged param
        assert len(stage.tracker.rejected) == 1 and stage.tracker.online
        stage.finish({"ingest/rows": 1})
    assert mlflow.MlflowClient().get_run(stage.run_id).data.params["x"] == "1"


def test_replay_skips_what_the_store_rejects_and_keeps_nothing_for_another_uri(tmp_path):
    from trainwise.components.tracking.mlflow_runs import setup_mlflow
    from trainwise.components.tracking.tracker import replay_spool

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    setup_mlflow(tracking_uri=uri, experiment="t", root=tmp_path)
    with mlflow.start_run() as run:
        pass
    spool = tmp_path / "spool"
    spool.mkdir()
    ops = [{"uri": uri, "run_id": "no-such-run", "op": "log_batch", "metrics": [["a", 1.0, 0, 0]], "params": {},
            "tags": {}},
           {"uri": uri, "run_id": run.info.run_id, "op": "log_batch", "metrics": [["a", 2.0, 0, 0]], "params": {},
            "tags": {}}]
    (spool / "x.jsonl").write_text("".join(json.dumps(o) + "\n" for o in ops))
    (spool / "other.jsonl").write_text(json.dumps({**ops[1], "uri": "http://elsewhere"}) + "\n")
    assert replay_spool(spool, tracking_uri=uri) == [("no-such-run", 1)]
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.metrics["a"] == 2.0
    assert not (spool / "x.jsonl").exists() and (spool / "other.jsonl").exists()  # kept for its own store
