"""Bring your own model: a network of yours trained by trainwise's stages.

params.yaml:

    train:
      model: examples.byo_model:build

trainwise imports this module and calls ``build(n_classes=..., input_shape=..., params=...)``:
``input_shape`` is one example as the model receives it ((C, H, W) images in [0, 1],
(F,) features, (1, L) sequences, (T,) token ids), ``params`` the run's train params
(dropout, lr, ... including what tune chose). Return any ``torch.nn.Module`` that maps a
batch to logits (N, n_classes). Add the file to dvc.yaml's tune/train/evaluate deps so a
change re-trains (components/models is listed already; examples/ is listed for this file).
"""

from torch import nn


def build(*, n_classes: int, input_shape: tuple, params: dict) -> nn.Module:
    c = input_shape[0] if len(input_shape) == 3 else 1
    if len(input_shape) != 3:
        raise ValueError(f"examples.byo_model:build takes images (C, H, W), got input_shape {input_shape}")
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(params.get("dropout", 0.0)), nn.Linear(32, n_classes),
    )
