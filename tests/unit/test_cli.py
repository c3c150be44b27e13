"""`trainwise stage NAME` runs what dvc.yaml runs for NAME: its list of stages is dvc.yaml's (issue 27
item 8: the CLI kept its own list and refused `audit` and `embed`)."""

import importlib.util
import json
import shutil
from pathlib import Path

import yaml

from trainwise.pipelines.cli import dvc_stages, main

REPO = Path(__file__).resolve().parents[2]


def test_the_stage_list_is_dvc_yamls():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = dvc_stages(REPO / "dvc.yaml")
    assert list(stages) == list(spec)  # every stage, in dvc.yaml's order
    assert {"audit", "embed"} <= set(stages)
    for name, module in stages.items():
        assert spec[name]["cmd"] == f"python -m {module}"
        spec_ = importlib.util.find_spec(module)  # `trainwise.pipelines.x` or, installed as one package, `trainwise.pipelines.x`
        assert spec_ is not None and Path(spec_.origin) == REPO / "pipelines" / f"{name}.py"


def test_trainwise_stage_embed_runs_the_stage(tmp_path, monkeypatch, capsys):
    """embed with no backbone and no photos writes its `backbone: null` manifest (no Ray, no MLflow)."""
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "embed"]) == 0
    assert json.loads((tmp_path / "data/embed/manifest.json").read_text())["backbone"] is None


def test_an_unknown_stage_is_refused_with_dvc_yamls_list(tmp_path, monkeypatch, capsys):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["stage", "fit"]) == 2
    err = capsys.readouterr().err
    assert "no stage 'fit' in dvc.yaml" in err and "audit" in err and "embed" in err
    (tmp_path / "dvc.yaml").unlink()
    assert main(["stage", "audit"]) == 2
    assert "run `trainwise stage` from the project root" in capsys.readouterr().err
