"""`trainwise init DIR --data PATH` (components/project/init.py, pipelines/cli.py): a project of the
user's own, its settings chosen from the data, its dvc.yaml and params.yaml derived from the demo's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from trainwise.components.project import init as pinit
from trainwise.pipelines import cli
from trainwise.pipelines.config import ConfigError, load_params
from tests.unit.test_dvc_deps import REPO, STAGES, import_closure, stage_entry


def _images(root: Path, classes=("cats", "dogs"), n=3) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _numeric_csv(path: Path, label="species") -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60), "name": ["x"] * 60,
                  label: rng.integers(0, 3, 60)}).to_csv(path, index=False)
    return path


def _text_csv(path: Path) -> Path:
    pd.DataFrame({"review": [f"this is review number {i}, long enough to be text" for i in range(40)],
                  "stars": [1, 2] * 20}).to_csv(path, index=False)
    return path


def test_image_folder_gets_photo_settings(tmp_path):
    choice = pinit.choose(str(_images(tmp_path / "pets")))
    assert choice.kind == "image_folder"
    assert choice.settings["ingest.source"] == "image_folder" and choice.settings["train.hflip"] is True
    assert any("cats, dogs" in n for n in choice.notes)


def test_text_table_gets_text_settings_and_the_label_guessed_by_its_values(tmp_path):
    choice = pinit.choose(str(_text_csv(tmp_path / "reviews.csv")))
    assert choice.kind == "text_table"
    assert choice.settings["ingest.text_column"] == "review"
    assert choice.settings["ingest.label_column"] == "stars"  # not named like a label: 2 distinct values


def test_numeric_table_gets_features_and_non_numeric_columns_are_named(tmp_path):
    choice = pinit.choose(str(_numeric_csv(tmp_path / "t.csv")))
    assert choice.kind == "features_table"
    assert choice.settings["ingest.label_column"] == "species"
    assert choice.settings["ingest.feature_columns"] == ["a", "b"]  # `name` is text-like but short: left out
    assert any("name" in n and "left out" in n for n in choice.notes)


def test_label_override_and_a_wrong_one_names_the_columns(tmp_path):
    csv = _numeric_csv(tmp_path / "t.csv")
    assert pinit.choose(str(csv), label="a").settings["ingest.label_column"] == "a"
    with pytest.raises(pinit.InitError, match="no such column.*a, b, name, species"):
        pinit.choose(str(csv), label="nope")


def test_a_split_column_is_kept_as_one(tmp_path):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"x": range(30), "split": ["train", "test", "val"] * 10, "label": [0, 1, 2] * 10}).to_csv(csv)
    assert pinit.choose(str(csv)).settings["ingest.split_column"] == "split"


def test_dry_run_writes_nothing(tmp_path, capsys):
    data = _images(tmp_path / "pets")
    assert cli.main(["init", str(tmp_path / "proj"), "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would write: dvc.yaml" in out and "would write: params.yaml" in out and "would run: git init" in out
    assert not (tmp_path / "proj").exists()


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    data = _images(tmp_path / "pets")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "params.yaml").write_text("mine\n")
    assert cli.main(["init", str(proj), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "params.yaml" in err and "never overwrites" in err
    assert (proj / "params.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in proj.iterdir()) == ["params.yaml"]


def test_init_creates_a_git_and_dvc_project_that_loads(tmp_path, capsys):
    data = _images(tmp_path / "pets")
    proj = tmp_path / "proj"
    assert cli.main(["init", str(proj), "--data", str(data)]) == 0
    assert "next: " in capsys.readouterr().out
    assert (proj / ".git").is_dir() and (proj / ".dvc").is_dir()
    for f in pinit.PROJECT_FILES:
        assert (proj / f).is_file(), f
    params = load_params(proj / "params.yaml")
    assert params.ingest.source == "image_folder" and params.ingest.path == str(data)
    assert params.trainwise_version == pinit.installed_version()
    assert "/mlflow.db" in (proj / ".gitignore").read_text()
    assert cli.dvc_stages(proj / "dvc.yaml")["train"].endswith("trainwise.pipelines.train")


def test_generated_params_keep_every_key_and_comment(tmp_path):
    template = (REPO / "params.yaml").read_text()
    text = pinit.project_params(template, {"ingest.source": "table", "ingest.path": "data/x.csv",
                                           "ingest.feature_columns": ["a", "b"]}, version="9.9.9")
    comments = [line.split("#", 1)[1] for line in template.splitlines() if "#" in line]
    for c in comments:
        assert c in text, c
    ours, demo = yaml.safe_load(text), yaml.safe_load(template)
    assert ours.pop("trainwise_version") == "9.9.9"
    assert {k: set(v) if isinstance(v, dict) else v for k, v in ours.items() if isinstance(v, dict)} == \
           {k: set(v) if isinstance(v, dict) else v for k, v in demo.items() if isinstance(v, dict)}
    assert ours["ingest"]["feature_columns"] == ["a", "b"]
    line = next(ln for ln in text.splitlines() if ln.startswith("  source: table"))
    assert line.index("#") == next(ln for ln in template.splitlines() if ln.startswith("  source:")).index("#")


def test_generated_dvc_yaml_deps_are_complete():
    """The dvc-deps check (tests/unit/test_dvc_deps.py) for a generated project: same stages, outs and data
    deps as the demo; every code file a stage imports is ours (components/, pipelines/), which the
    project cannot list, so every stage depends on the `trainwise_version` param instead."""
    demo = yaml.safe_load((REPO / "dvc.yaml").read_text())
    ours = yaml.safe_load(pinit.project_dvc_yaml((REPO / "dvc.yaml").read_text()))
    assert list(ours["stages"]) == list(demo["stages"])
    assert ours.get("plots") == demo.get("plots")
    for name, st in ours["stages"].items():
        d = demo["stages"][name]
        assert st["cmd"] == f"trainwise stage {name}"
        assert pinit.VERSION_PARAM in st["params"] and set(d.get("params") or []) <= set(st["params"])
        assert st.get("outs") == d.get("outs") and st.get("metrics") == d.get("metrics") and st.get("plots") == d.get("plots")
        assert st["deps"] == [x for x in d["deps"] if not pinit._is_code_dep(str(x))]
        closure = import_closure(stage_entry(STAGES[name]["cmd"]))
        assert closure and all(f.split("/")[0] in pinit.CODE_DIRS for f in closure), (name, closure)


def test_a_stage_refuses_another_trainwise_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text('trainwise_version: "0.0.1"\n')
    with pytest.raises(ConfigError, match=r"trainwise_version is 0\.0\.1 but trainwise .* is installed.*install trainwise==0\.0\.1"):
        cli.check_version()
    Path("params.yaml").write_text(f'trainwise_version: "{pinit.installed_version()}"\n')
    cli.check_version()  # the same version: the stage may run
    Path("dvc.yaml").write_text("stages:\n  train:\n    cmd: trainwise stage train\n")
    Path("params.yaml").write_text('trainwise_version: "0.0.1"\n')
    assert cli.main(["stage", "train"]) == 2


def test_a_cluster_job_refuses_another_trainwise_version(tmp_path, monkeypatch, capsys):
    """The job side of a submitted stage runs the cluster's installed trainwise: it must be the project's."""
    from trainwise.pipelines import remote

    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text('trainwise_version: "0.0.1"\n')
    monkeypatch.setattr(remote.subprocess, "Popen", lambda *a, **k: pytest.fail("the stage was started"))
    assert remote.main(["train", "--base", str(tmp_path / "base"), "--storage-path", str(tmp_path / "ray")]) == 2
    assert "on the cluster: params.yaml: trainwise_version is 0.0.1 but trainwise" in capsys.readouterr().err
