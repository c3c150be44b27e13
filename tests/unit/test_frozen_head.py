"""backbone_mode frozen: the head trains on the embed stage's vectors, and the saved model takes images."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from trainwise.components.data.contract import DataContractError, DatasetWriter, SetAside
from trainwise.components.embedding.store import write_embeddings
from trainwise.components.embedding.training import embedding_tables, network_error, resolve_backbone
from trainwise.components.models import build_model
from trainwise.components.models.backbones import build_classifier
from trainwise.components.training.data import decode, to_numpy
from tests.inprocess import InProcessSession
from tests.params import loop_config


def _split(tmp_path, n=8):
    images = np.random.default_rng(0).integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    t = pa.table({"id": [f"r{i}" for i in range(n)], "label": [i % 2 for i in range(n)],
                  "image": pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), 16 * 16 * 3),
                  "source": ["s"] * n, "split": ["train"] * (n - 2) + ["val"] * 2})
    with DatasetWriter(tmp_path / "split", classes=["a", "b"], metadata={"image_shape": [16, 16, 3]}) as w:
        w.write(t)
        w.close(rows_in=n, set_aside=SetAside())
    return tmp_path / "split", images


def test_tables_hold_each_rows_own_embedding(tmp_path):
    split, _ = _split(tmp_path)
    emb = np.arange(8 * 4, dtype=np.float32).reshape(8, 4)
    order = [3, 1, 0, 2, 7, 6, 5, 4]  # the embed file's order differs from the split's
    write_embeddings(tmp_path / "embed", ids=[f"r{i}" for i in order], embeddings=emb[order],
                     manifest={"backbone": "efficientnet_lite0"})
    loop = loop_config(data_dir=str(split), n_classes=2, input_shape=(3, 16, 16), backbone="efficientnet_lite0",
                       embed_dir=str(tmp_path / "embed"), modality="image")
    upd = resolve_backbone(loop)
    assert upd["model"] == "backbone:efficientnet_lite0" and upd["embed_dim"] == 4
    tables = embedding_tables(loop)
    x, y = decode(to_numpy(tables["train"], "features"), kind="features", shape=(4,))
    torch.testing.assert_close(x, torch.from_numpy(emb[:6]))
    assert y.tolist() == [0, 1, 0, 1, 0, 1]
    assert tables["val"].num_rows == 2


def test_embeddings_of_another_backbone_are_refused(tmp_path):
    split, _ = _split(tmp_path)
    write_embeddings(tmp_path / "embed", ids=["r0"], embeddings=np.zeros((1, 4)),
                     manifest={"backbone": "resnet18"})
    loop = loop_config(data_dir=str(split), n_classes=2, input_shape=(3, 16, 16), backbone="efficientnet_lite0",
                       embed_dir=str(tmp_path / "embed"), modality="image")
    with pytest.raises(DataContractError, match="re-run the embed stage"):
        resolve_backbone(loop)


def test_frozen_classifier_head_only_learns_and_saved_model_takes_images():
    torch.manual_seed(0)
    m = build_classifier("efficientnet_lite0", True, n_classes=2, frozen=True)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    tuned = build_classifier("efficientnet_lite0", True, n_classes=2, frozen=False)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert "backbone.features.net._conv_stem.weight" in trainable  # finetune trains the backbone ...
    assert not any("_fc" in n for n in trainable)  # ... but not ImageNet's unused classifier (DDP would hang)
    m.train()
    assert not m.backbone.training  # frozen batch norm keeps ImageNet statistics
    images = torch.rand(2, 3, 40, 40)
    m.eval()
    with torch.no_grad():
        via_vectors = m(m.backbone(images))
        via_images = m(images)
    torch.testing.assert_close(via_vectors, via_images)
    # what evaluate / serving do with model.json's "backbone:efficientnet_lite0": rebuild, load the state dict
    again = build_model("backbone:efficientnet_lite0", input_shape=(3, 40, 40), n_classes=2)
    again.load_state_dict(m.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(images), via_images)


def test_network_error_names_the_param(tmp_path):
    assert network_error({"backbone": "efficientnet_lite0", "pretrained": True}) is None
    assert "train.pretrained" in network_error({"backbone": "efficientnet_lite0", "pretrained": "nope.pt"},
                                               root=tmp_path)
    assert "train.model" in network_error({"model": "nosuch.mod:build"})


def test_training_loop_trains_the_head_on_vectors(tmp_path, monkeypatch):
    """run_loop in frozen mode: rows are embeddings (features), the model is backbone + head, only the
    head learns, and early stopping reads the smoothed val/loss. Ray is not needed for one in-process
    rank: the memory loader's "refs" are the tables themselves (ray.get patched to identity)."""
    import ray
    from dataclasses import replace

    from trainwise.components.training import loop as L

    split, _ = _split(tmp_path, n=40)
    labels = np.array([i % 2 for i in range(40)])
    emb = np.random.default_rng(1).normal(size=(40, 1280)).astype(np.float32)
    emb[:, :64] += labels[:, None] * 3.0  # separable on 64 of the 1280 dimensions
    write_embeddings(tmp_path / "embed", ids=[f"r{i}" for i in range(40)], embeddings=emb,
                     manifest={"backbone": "efficientnet_lite0"})
    cfg = loop_config(data_dir=str(split), n_classes=2, input_shape=(3, 16, 16), backbone="efficientnet_lite0",
                      embed_dir=str(tmp_path / "embed"), modality="image", epochs=6, patience=6,
                      patience_smoothing=0.5, batch_size=8, lr=0.01, dropout=0.0)
    cfg = replace(cfg, **resolve_backbone(cfg))
    monkeypatch.setattr(ray, "get", lambda x: x)
    s = InProcessSession()
    reports = s.reports
    L.run_loop({**cfg.to_dict(), L.DATA_REFS: embedding_tables(cfg)}, s)
    assert reports[-1]["train/acc"] == 1.0 and reports[-1]["val/acc"] >= 0.9
    assert "val/loss_smoothed" in reports[-1]
    fresh = build_classifier("efficientnet_lite0", True, n_classes=2, frozen=True)
    torch.testing.assert_close(s.model.backbone.state_dict(), fresh.backbone.state_dict())  # backbone untouched
