"""Submitting stages to a cluster: what travels, atomic copies back, params, clear errors.
(The real two-node run is tests/cluster/test_two_nodes.py.)"""

import os

import pytest
import yaml

from components.cluster import storage
from components.cluster.jobs import WORKING_DIR_EXCLUDES, JobError, _client, job_entrypoint, stage_io
from pipelines.config import ConfigError, parse_params
from pipelines.remote import _job_params, submit
from pipelines.stage import _stage_name
from tests.conftest import REPO


def test_stage_io_comes_from_dvc_yaml_without_code():
    io = stage_io(REPO, "train")
    assert "data/split" in io.inputs and "models/tune/best_params.json" in io.inputs
    assert not [p for p in io.inputs if p.endswith(".py") or p.startswith(("components", "pipelines"))]
    assert "params.yaml" not in io.inputs  # travels with the code
    assert {"models/model", "metrics/train.json"} <= set(io.outputs)
    entry = job_entrypoint(io, base="s3://b/jobs/k", storage_path="s3://b/ray")
    assert entry.startswith("python -m pipelines.remote train --base s3://b/jobs/k --storage-path s3://b/ray")
    assert "--outputs models/model" in entry


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(JobError, match="no stage 'trian'"):
        stage_io(REPO, "trian")


def test_working_dir_excludes_are_anchored():
    # "/data" excludes the pipeline's data folder, not components/data (code the job needs)
    assert "/data" in WORKING_DIR_EXCLUDES and "data" not in WORKING_DIR_EXCLUDES


def test_put_get_roundtrip_and_atomic_replace(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    url = storage.join(str(tmp_path / "shared"), "jobs", "k", "out", "models/model")
    storage.put(src, url)
    dst = tmp_path / "ws" / "models" / "model"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    storage.get(url, dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == ["a.txt", "sub/b.bin"]
    assert (dst / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    # a missing output fails before anything is replaced
    with pytest.raises(FileNotFoundError, match="missing in the shared storage"):
        storage.get(storage.join(str(tmp_path / "shared"), "nope"), dst)
    assert (dst / "a.txt").read_text() == "a"
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_single_file_roundtrip(tmp_path):
    f = tmp_path / "m.json"
    f.write_text("{}")
    url = storage.join(str(tmp_path / "shared"), "metrics/train.json")
    storage.put(f, url)
    storage.get(url, tmp_path / "back" / "train.json")
    assert (tmp_path / "back" / "train.json").read_text() == "{}"


def test_submit_params_are_validated():
    with pytest.raises(ConfigError, match="ray.submit"):
        parse_params({"ray": {"submit": ["ingest"]}})
    assert parse_params({"ray": {"submit": ["tune", "train"]}}).ray.submit == ["tune", "train"]


def test_job_copy_of_params_never_resubmits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ray": {"submit": ["train"], "storage_path": ".x"}}))
    _job_params("/shared/ray")
    ray = yaml.safe_load((tmp_path / "params.yaml").read_text())["ray"]
    assert ray["submit"] == [] and ray["storage_path"] == "/shared/ray" and ray["address"] is None


def test_unreachable_jobs_api_names_the_address_and_the_fix():
    with pytest.raises(JobError, match=r"http://127\.0\.0\.1:9.*ray.jobs_address"):
        _client("http://127.0.0.1:9")


def test_submit_without_shared_storage_says_which_key(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ray": {"jobs_address": "http://127.0.0.1:9"}}))
    with pytest.raises(ConfigError, match="ray.shared_storage"):
        submit("train", root=tmp_path)


def test_stage_name_from_module():
    import pipelines.train as train

    assert _stage_name(train.main) == "train"
    assert _stage_name(os.path.join) is None
