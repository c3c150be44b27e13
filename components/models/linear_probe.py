"""The linear probe: L2-regularised logistic regression on standardised features.

One definition for two uses: the baseline stage fits it on the backbone's embeddings (the honest
baseline of a frozen backbone), and a frozen backbone's linear head starts from it
(:func:`init_from_probe`). A linear head on frozen embeddings is the same model class as the
probe, so it must not end below it; from a random start it did (issue 27: 0.9790 vs the probe's
0.9855 on SMS with all-MiniLM-L6-v2, 15 epochs of Adam): sentence embeddings are unit vectors
whose classes differ along low-variance directions, which need large weights that Adam at lr
3e-3 does not reach in a few hundred steps, while the probe's standardisation makes them easy.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn


def make_linear_probe(*, seed: int) -> Pipeline:
    """An unfitted probe (scikit-learn's defaults: C = 1, lbfgs; multinomial for > 2 classes)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


@torch.no_grad()
def init_from_probe(model: nn.Module, x: np.ndarray, y: np.ndarray, *, seed: int) -> Pipeline:
    """Fit the probe on (``x``, ``y``), the train rows only, and make ``model`` (a
    :class:`~trainwise.components.models.backbones.BackboneClassifier`) compute the same function of the
    features: its standardisation is the probe's scaler, its head the probe's logistic regression,
    so softmax(model(x)) equals the probe's predicted probabilities. Returns the fitted probe.
    Classes absent from ``y`` get a weight of 0 and a bias well below the others (the probe never
    predicts them either)."""
    head = model.head
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != head.in_features or len(x) != len(y):
        raise ValueError(f"init_from_probe: features {x.shape} and labels {y.shape} do not fit a head of "
                         f"{head.in_features} inputs")
    probe = make_linear_probe(seed=seed).fit(x, y)
    scaler, lr = probe[0], probe[-1]
    w, b = lr.coef_, lr.intercept_
    if len(lr.classes_) == 2 and w.shape[0] == 1:  # binary: one logit difference, split between the two rows
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    weight = np.zeros((head.out_features, head.in_features))
    bias = np.full(head.out_features, b.min() - 20.0)
    rows = lr.classes_.astype(int)
    weight[rows], bias[rows] = w, b
    head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    model.feature_mean.copy_(torch.as_tensor(scaler.mean_, dtype=model.feature_mean.dtype))
    model.feature_scale.copy_(torch.as_tensor(scaler.scale_, dtype=model.feature_scale.dtype))
    return probe
