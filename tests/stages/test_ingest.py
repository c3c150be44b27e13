"""The ingest stage: every source selected from params.yaml; a run through the real stage
(exit codes, metrics, manifest); image_folder output through the current clean; and DVC
re-running ingest only when its source or its params change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from trainwise.components.data.contract import DatasetWriter, iter_batches, read_table
from trainwise.components.data.sources import ingest
from trainwise.components.quality.cleaning import clean_dataset
from tests.demo_data import clean_options
from trainwise.pipelines.config import parse_params
from trainwise.pipelines.ingest import source_from_params
from tests.conftest import REPO
from tests.unit.test_sources import image_bytes, image_tree, write


def _tables(root: Path) -> None:
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1], "label": ["a", "b", "a", "b"]}).to_csv(
        root / "tab.csv", index=False)
    pd.DataFrame({"review": ["good", "bad", "fine"], "label": [1, 0, 1]}).to_parquet(root / "rev.parquet")


SELECTED = [  # (ingest section of params.yaml, payload, rows, extra manifest key)
    ({"source": "digits"}, "image", 1797, None),
    ({"source": "image_folder", "path": "pets"}, "image", 5, "path"),
    ({"source": "text_folder", "path": "reviews"}, "text", 3, "path"),
    ({"source": "table", "path": "tab.csv"}, "features", 4, "feature_names"),
    ({"source": "table", "path": "rev.parquet", "text_column": "review"}, "text", 3, "text_column"),
    ({"source": "sequences", "n_samples": 50, "sequence_length": 30, "seed": 3}, "sequence", 50, "sequence_length"),
]


@pytest.mark.parametrize("section, payload, rows, key", SELECTED, ids=[s[0]["source"] + ":" + s[0].get("path", "")
                                                                      for s in SELECTED])
def test_every_source_is_selectable_from_params(tmp_path, section, payload, rows, key):
    image_tree(tmp_path / "pets")
    for rel, text in (("pos/a.txt", "good"), ("pos/b.txt", "nice"), ("neg/c.txt", "bad")):
        write(tmp_path / "reviews", rel, text)
    _tables(tmp_path)
    params = parse_params({"ingest": section}).ingest
    m = ingest(source_from_params(params, tmp_path), tmp_path / "out", shard_rows=params.shard_rows,
               shard_bytes=params.shard_mb << 20, progress=False)
    assert (m["payload"], m["rows"]) == (payload, rows)
    if key:
        assert key in m
    if key == "path":
        assert m["path"] == section["path"]  # as written in params.yaml, not an absolute path


def test_unknown_ingest_key_and_source_are_config_errors():
    from trainwise.pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="ingest.sauce: unknown key"):
        parse_params({"ingest": {"sauce": "x"}})
    with pytest.raises(ConfigError, match="ingest.source"):
        parse_params({"ingest": {"source": "images"}})


def _stage(cwd: Path, section: dict) -> subprocess.CompletedProcess:
    params = {"ingest": section, "mlflow": {"tracking_uri": f"sqlite:///{cwd / 'mlflow.db'}"}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "trainwise.pipelines.ingest"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_stage_run_counts_add_up_and_a_bad_path_is_exit_2(tmp_path):
    root = image_tree(tmp_path / "pets")
    write(root, "cats/empty.jpg", b"")
    write(root, "dogs/notes.png", "not an image")
    proc = _stage(tmp_path, {"source": "image_folder", "path": "pets"})
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics/ingest.json").read_text())
    assert metrics["ingest/rows_in"] == 7 and metrics["ingest/rows"] == 5
    assert metrics["ingest/set_aside/empty_file"] == 1 and metrics["ingest/set_aside/not_an_image"] == 1
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal

    proc = _stage(tmp_path, {"source": "image_folder", "path": "nowhere"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ingest.path:" in proc.stderr and "nowhere does not exist" in proc.stderr
    assert json.loads((tmp_path / "data/ingest/manifest.json").read_text())["rows"] == 5  # previous output intact


def test_image_folder_through_the_current_clean(tmp_path):
    """What ingest's header checks let through but cannot decode is clean's to set aside."""
    root = image_tree(tmp_path / "pets")
    png = bytearray(image_bytes("PNG", size=(32, 32), seed=11))
    idat = png.find(b"IDAT")
    png[idat + 10: idat + 40] = b"x" * 30  # compressed pixels destroyed; signature, size and IEND intact
    write(root, "cats/garbled.png", bytes(png))
    params = parse_params({"ingest": {"source": "image_folder", "path": "pets"}}).ingest
    raw = ingest(source_from_params(params, tmp_path), tmp_path / "ingest", shard_rows=100, shard_bytes=1 << 20,
                 progress=False)
    assert raw["rows"] == 6
    with DatasetWriter(tmp_path / "clean", classes=raw["classes"]) as w:
        stats = clean_dataset(iter_batches(tmp_path / "ingest"), w, n_classes=2, modality="image",
                              options=clean_options())
        cleaned = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"])
    assert cleaned["rows_in"] == 6 and cleaned["rows"] == 5 and cleaned["set_aside"] == {"corrupt_payload": 1}
    aside = json.loads((tmp_path / "clean/set_aside.jsonl").read_text())
    assert aside["source"] == "cats/garbled.png"
    kept = set(read_table(tmp_path / "clean").column("source").to_pylist())
    assert kept == {"cats/a.jpg", "cats/b.png", "dogs/c.webp", "dogs/sub/d.gif", "dogs/e.bmp"}


@pytest.mark.slow
def test_dvc_reruns_ingest_only_when_its_source_or_params_change(tmp_path):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and (f.split("/")[0] not in {"data", "models", "metrics", "plots", "reports"}
                                     or f.startswith("data/raw/")) and f != "dvc.lock":
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, tmp_path / f)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["ingest"].update(source="image_folder", path="data/raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    image_tree(tmp_path / "data/raw")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", PYTHONPATH=str(tmp_path),
               GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@localhost")

    def sh(*args: str) -> str:
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    def rows() -> int:
        return json.loads((tmp_path / "data/ingest/manifest.json").read_text())["rows"]

    sh("git", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    assert "Running stage 'ingest'" in sh("dvc", "repro", "ingest") and rows() == 5
    assert "Running stage 'ingest'" not in sh("dvc", "repro", "ingest")          # nothing changed
    params["train"]["epochs"] = 1                                                  # another stage's knob
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'ingest'" not in sh("dvc", "repro", "ingest")
    write(tmp_path / "data/raw", "cats/new.png", image_bytes("PNG", seed=42))      # the source changed
    assert "Running stage 'ingest'" in sh("dvc", "repro", "ingest") and rows() == 6
    metrics = json.loads((tmp_path / "metrics/ingest.json").read_text())
    assert metrics["ingest/reused"] == 5  # the unchanged files came from the ingest cache, unread
    params["ingest"]["max_file_mb"] = 32                                           # an ingest param changed
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'ingest'" in sh("dvc", "repro", "ingest")


def test_a_null_ingest_path_is_a_config_error_not_a_dvc_crash():
    from trainwise.pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="ingest.path: .*dvc.yaml lists it as the ingest stage's dependency"):
        parse_params({"ingest": {"source": "digits", "path": None}})
