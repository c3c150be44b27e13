"""Small networks for the modalities trainwise ships with."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a two-layer head; ~100k parameters on 8x8 inputs."""

    def __init__(self, *, in_channels: int, height: int, width: int, n_classes: int,
                 width_mult: int = 32, dropout: float = 0.25):
        super().__init__()
        c1, c2 = width_mult, 2 * width_mult
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = c2 * (height // 2) * (width // 2)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, 128), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(128, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten the input and classify it with two hidden layers."""

    def __init__(self, *, in_channels: int, height: int, width: int, n_classes: int,
                 hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS = {"small_cnn": SmallCNN, "mlp": MLP}


def build_model(name: str, *, input_shape: tuple[int, int, int], n_classes: int,
                dropout: float = 0.0) -> nn.Module:
    """``input_shape`` is (channels, height, width)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None
    c, h, w = input_shape
    return cls(in_channels=c, height=h, width=w, n_classes=n_classes, dropout=dropout)
