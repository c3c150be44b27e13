"""A stage given bad params stops with a message naming the key: no traceback, exit code 2."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("params, expected", [
    ("train:\n  epoch: 3\n", "train.epoch: unknown key"),
    ("split:\n  train: 0.9\n", "train + val + test must sum to 1"),
    ("train:\n  lr: -1\n", "train.lr: Input should be greater than 0"),
])
def test_stage_rejects_bad_params_before_doing_work(tmp_path, params, expected):
    (tmp_path / "params.yaml").write_text(params)
    proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.ingest"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_upstream_output_names_the_stage_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///" + str(tmp_path / "m.db") + "\n")
    proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.clean"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "data/ingest/manifest.json: missing; run the stage that writes" in proc.stderr
    assert "Traceback" not in proc.stderr
