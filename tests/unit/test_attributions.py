"""Captum attributions, generic over the model's input: images, sequences, token ids (text)."""

import numpy as np
import pytest
import torch
from torch import nn

from trainwise.components.evaluation.attributions import attribute, explain_sample, sample_right_and_wrong, top_tokens
from trainwise.components.evaluation.figures import per_position
from trainwise.components.models import build_model


def test_sample_is_half_right_half_wrong_and_fixed_by_seed():
    y = np.zeros(100, int)
    pred = np.zeros(100, int)
    pred[::10] = 1  # 10 wrong rows
    idx = sample_right_and_wrong(y, pred, n=16, seed=0)
    assert len(idx) == 16 and sum(pred[i] != y[i] for i in idx) == 8
    assert idx == sample_right_and_wrong(y, pred, n=16, seed=0)
    assert idx != sample_right_and_wrong(y, pred, n=16, seed=1)
    few = sample_right_and_wrong(y, np.where(np.arange(100) == 3, 1, 0), n=16, seed=0)
    assert len(few) == 16 and few[0] == 3  # only one wrong row: the right ones fill the sample


def test_integrated_gradients_on_an_image_model_satisfies_completeness():
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(1, 8, 8), n_classes=3).eval()
    x = torch.rand(4, 1, 8, 8)
    target = model(x).argmax(1)
    attr = attribute(model, x, target, method="integrated_gradients", steps=64)
    assert attr.shape == (4, 1, 8, 8)
    # Integrated gradients' axiom: attributions sum to f(x) - f(baseline) for the target logit.
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1).numpy()
    assert attr.reshape(4, -1).sum(1) == pytest.approx(gap, rel=0.05, abs=0.02)
    sal = attribute(model, x, target, method="saliency")
    assert sal.shape == x.shape and np.abs(sal).sum() > 0


class TinySeqNet(nn.Module):
    """The class is decided by positions 10..14 only: attributions must point there."""

    def __init__(self):
        super().__init__()
        w = torch.zeros(2, 32)
        w[1, 10:15] = 1.0
        w[0, 10:15] = -1.0
        self.fc = nn.Linear(32, 2)
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.reshape(len(x), -1))


def test_sequence_attribution_points_at_the_informative_positions():
    model = TinySeqNet()
    x = torch.rand(6, 1, 32) + 0.5
    attr = attribute(model, x, [1] * 6, method="integrated_gradients")
    pos = per_position(attr)
    assert pos.shape == (6, 32)
    assert set(np.argsort(-pos, axis=1)[:, :5].ravel()) == set(range(10, 15))
    records, fig = explain_sample(model, x, np.array([1, 1, 1, 0, 0, 0]), torch.softmax(model(x), 1).detach().numpy(),
                                  modality="sequence", classes=["a", "b"], ids=list("abcdef"), n=4, seed=0)
    assert len(records) == 4 and fig is not None
    assert sum(not r["correct"] for r in records) == 2


class TinyTextNet(nn.Module):
    """Mean of token embeddings -> linear; token 3 ("good") pushes toward class 1."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4, padding_idx=0)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.emb.weight.zero_()
            self.emb.weight[3] = torch.tensor([2.0, 0, 0, 0])
            self.emb.weight[4] = torch.tensor([0, 0.1, 0, 0])
            self.emb.weight[5] = torch.tensor([0, 0, 0.1, 0])
            self.fc.weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
            self.fc.bias.zero_()

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_text_attribution_at_the_embedding_layer_finds_the_decisive_token():
    vocab = ["<pad>", "<unk>", "the", "good", "movie", "plot"]
    ids = torch.tensor([[2, 4, 3, 5, 0, 0], [4, 5, 3, 2, 2, 0]])
    attr = attribute(TinyTextNet(), ids, [1, 1])
    assert attr.shape == (2, 6)
    tops = top_tokens(ids.numpy(), attr, vocab=vocab, k=2)
    assert [t[0][0] for t in tops] == ["good", "good"]
    assert all(tok != "<pad>" for row in tops for tok, _ in row)
    records, fig = explain_sample(TinyTextNet(), ids, np.array([1, 0]), np.array([[0.3, 0.7], [0.4, 0.6]]),
                                  modality="text", classes=["neg", "pos"], ids=["r1", "r2"], n=2, seed=0,
                                  vocab=vocab)
    assert fig is None and records[0]["top_tokens"][0]["token"] == "good"


def test_token_inputs_without_an_embedding_layer_say_why():
    with pytest.raises(ValueError, match="nn.Embedding"):
        attribute(nn.Sequential(nn.Flatten()), torch.ones(2, 3, dtype=torch.long), [0, 0])


def test_image_sample_draws_an_overlay_figure(digits_split):
    from trainwise.components.training.data import load_split

    x, y, ids = load_split(digits_split, "test")
    model = build_model("mlp", input_shape=(1, 8, 8), n_classes=10).eval()
    with torch.no_grad():
        proba = torch.softmax(model(x), 1).numpy()
    records, fig = explain_sample(model, x, y.numpy(), proba, modality="image", classes=[str(i) for i in range(10)],
                                  ids=ids, n=6, seed=0, steps=8)
    assert len(records) == 6 and fig is not None and len(fig.axes) >= 12  # image + overlay per example
