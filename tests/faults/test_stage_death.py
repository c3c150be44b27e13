"""Promise 2: `dvc repro` SIGKILLed mid-train. The stage it started stops itself (no orphan
keeps training), nothing partial is recorded in dvc.lock or left as the model, DVC's lock
of the dead process does not block the next run, and the next `dvc repro` completes."""

import signal
import subprocess
import time

import psutil
import pytest
import yaml

from tests.project import copy_project, sh

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


def test_killed_dvc_repro_leaves_no_partial_output_and_reruns(tmp_path):
    root = tmp_path / "project"
    env = copy_project(root, params={"tune": {"enabled": False}, "train": {"epochs": 40, "patience": 40}})
    log = open(tmp_path / "repro.log", "w")
    dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while not list((root / ".trainwise").rglob("checkpoint_*")):  # train is running its epochs
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
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert "split" in lock["stages"] and "train" not in lock["stages"]
    assert not (root / "models" / "model").exists()
    assert not (root / "metrics" / "train.json").exists()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 2  # finish quickly this time
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro", "train"], root, env, timeout=600)
    assert "is busy" not in out and "Running stage 'train'" in out
    assert "Running stage 'split'" not in out  # finished stages were recorded and are not redone
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert "train" in lock["stages"] and (root / "models" / "model" / "model.pt").exists()
    assert "up to date" in sh(["dvc", "status", "train"], root, env)
