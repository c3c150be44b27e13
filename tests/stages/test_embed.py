"""The embed stage as `dvc repro` runs it (`python -m pipelines.embed` in a project directory):
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

from components.data.contract import DatasetWriter, SetAside
from components.embedding.store import read_embeddings
from components.models.backbones import build_backbone, packaged_weights_file, sha256_file

REPO = Path(__file__).resolve().parents[2]


def _project(tmp: Path, train: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train)
    params["mlflow"]["enabled"] = False
    params["ray"]["num_cpus"] = 2
    params["embed"]["batch_size"] = 4
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 24, 24, 3), dtype=np.uint8)
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    table = pa.table({"id": [f"r{i:02d}" for i in range(12)], "label": [i % 2 for i in range(12)],
                      "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 24 * 24 * 3),
                      "source": [f"x/{i}.jpg" for i in range(12)], "split": splits})
    with DatasetWriter(tmp / "data" / "split", classes=["a", "b"], metadata={"image_shape": [24, 24, 3]}) as w:
        w.write(table)
        w.close(rows_in=12, set_aside=SetAside())
    np.save(tmp / "images.npy", images)
    return tmp


def _run(root: Path, timeout: int = 600, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *flags, "-m", "pipelines.embed"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_no_backbone_writes_null_manifest_without_ray(tmp_path):
    root = _project(tmp_path, {"backbone": None})
    proc = _run(root, 120, "-X", "importtime")  # every module the process imported, on stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((root / "data/embed/manifest.json").read_text()) == {"backbone": None, "rows": 0}
    assert read_embeddings(root / "data/embed") is None
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(imported & {"torch", "ray", "mlflow"})
    assert not heavy, f"the no-backbone path imported {heavy}: it runs in every dvc repro and must stay instant"
    assert "pipelines.config" in imported  # the check above would pass vacuously if importtime printed nothing
    assert json.loads((root / "metrics/embed.json").read_text())["embed/rows"] == 0


@pytest.mark.slow
def test_backbone_embeds_every_row_like_the_backbone_itself(tmp_path):
    root = _project(tmp_path, {"backbone": "efficientnet_lite0", "pretrained": True})
    proc = _run(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    assert read_embeddings(root / "data/embed", split="val")[0] == ["r06", "r07", "r08"]


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
