"""Promise 2: `dvc repro` SIGKILLed mid-train. The stage it started stops itself (no orphan
keeps training), nothing partial is recorded in dvc.lock or left as the model, DVC's lock
of the dead process does not block the next run, and the next `dvc repro` completes.

It starts from a copy of the session's finished demo pipeline (tests/conftest.py:demo_pipeline)
with train.* changed, so that `dvc repro train` re-runs train alone. The next repro is of the
finished run's params again; forced, train then trains afresh instead of resuming the finished
Ray run."""

import json
import signal
import subprocess
import time

import psutil
import pytest
import yaml

from tests.project import sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _train_stage_procs(root):
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if "trainwise.pipelines.train" in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(root):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_killed_dvc_repro_leaves_no_partial_output_and_reruns(demo_pipeline, tmp_path):
    root = tmp_path / "project"
    env = demo_pipeline.copy_to(root)
    finished = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    finished_model = json.loads((root / "models/model/model.json").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    finished_train = dict(params["train"])
    params["train"].update(epochs=40, patience=40)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    earlier = set((root / ".trainwise").rglob("checkpoint_*"))  # the demo run's trials and training
    log = open(tmp_path / "repro.log", "w")
    dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while not set((root / ".trainwise").rglob("checkpoint_*")) - earlier:  # train is running its epochs
            assert dvc.poll() is None, (tmp_path / "repro.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "train never started"
            time.sleep(0.5)
        assert _train_stage_procs(root)
        dvc.send_signal(signal.SIGKILL)
        dvc.wait()
    finally:
        if dvc.poll() is None:
            dvc.kill()
        log.close()

    deadline = time.monotonic() + 90
    while _train_stage_procs(root):  # the orphaned stage notices and stops
        assert time.monotonic() < deadline, "the train stage kept running after dvc repro died"
        time.sleep(1)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock == finished  # the killed run recorded nothing: train's entry is still the finished run's
    assert lock["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    # DVC removed the finished run's outputs before it started the stage; the killed run published none
    assert not (root / "models" / "model").exists()
    assert not (root / "metrics" / "train.json").exists()

    # The finished run's params again: the next repro completes (DVC restores train's outputs of
    # those params from its cache)
    params["train"] = finished_train
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro", "train"], root, env, timeout=600)
    assert "is busy" not in out and "had been killed" in out  # DVC let go of the dead process's lock
    assert "Running stage 'split'" not in out  # finished stages were recorded and are not redone
    assert json.loads((root / "models/model/model.json").read_text()) == finished_model
    assert yaml.safe_load((root / "dvc.lock").read_text())["stages"] == finished
    assert "up to date" in sh(["dvc", "status", "train"], root, env)

    # Forced, train runs again: the Ray run of these params and data had finished, so it trains
    # afresh instead of resuming it
    out = sh(["dvc", "repro", "-f", "-s", "train"], root, env, timeout=600)
    assert "already finished with these params and data; training afresh" in out
    assert "epoch  1 " in out  # it trained from the first epoch, not resumed past the last
    model = json.loads((root / "models/model/model.json").read_text())
    assert model["ray_run"].startswith(finished_model["ray_run"] + "-")
    assert model["mlflow_run_id"] != finished_model["mlflow_run_id"]
    assert json.loads((root / "metrics/train.json").read_text())["train/epochs_run"] == 3
    assert (root / "models" / "model" / "model.pt").exists()
    assert "up to date" in sh(["dvc", "status", "train"], root, env)
