"""evaluate's predict_proba: token ids go shortest first in passes of bounded tokens, and come back
in input order with the same probabilities as one row at a time."""

import numpy as np
import torch
from torch import nn

from trainwise.components.evaluation import metrics
from trainwise.components.evaluation.metrics import predict_proba


class _Widths(nn.Module):
    """Mean of the token embeddings (padding 0 left out); records each pass's shape."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out, self.shapes = nn.Embedding(50, 8), nn.Linear(8, 3), []

    def forward(self, ids):
        self.shapes.append(tuple(ids.shape))
        mask = (ids != 0).unsqueeze(-1).float()
        return self.out((self.emb(ids) * mask).sum(1) / mask.sum(1).clamp(min=1))


def test_token_batches_are_bounded_in_tokens_and_rows_keep_their_order(monkeypatch):
    monkeypatch.setattr(metrics, "TOKENS_PER_BATCH", 64)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, 100)
    lengths[::25] = 32  # a few long rows among short ones
    x = torch.zeros(100, 32, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.from_numpy(rng.integers(1, 50, n))
    model = _Widths()
    got = predict_proba(model, x, batch_size=16)
    with torch.no_grad():
        want = torch.cat([torch.softmax(model(x[i:i + 1]), 1) for i in range(len(x))]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    passes = model.shapes[:len(model.shapes) - len(x)]
    assert sum(n for n, _ in passes) == 100 and max(n for n, _ in passes) <= 16
    # the longest row of each pass times its rows stays within the budget: shortest first
    order = np.argsort(lengths, kind="stable")
    start = 0
    for n, _ in passes:
        assert n * lengths[order[start:start + n]].max() <= 64 or n == 1
        start += n
