"""The model zoo: one ``nn.Module`` per name, for every modality trainwise ships with.

Modules take typed arguments only (no I/O, no config files). What each consumes, by the
``input_shape`` :mod:`trainwise.components.training.data` derives from the split's manifest:

=========  ==================  ==========================================
modality   input_shape          tensor a model receives
=========  ==================  ==========================================
image      (C, H, W)           float32 in [0, 1]
sequence   (C, L)  (C = 1)     float32, channels first like images
features   (F,)                float32
text       (T,)                int64 token ids, 0 = padding (needs ``vocab_size``)
=========  ==================  ==========================================

Which model fits which modality: ``mlp`` all; ``cnn`` image and sequence (2-D or 1-D
convolutions, depth sized from the input); ``gru`` and ``transformer`` sequence and text;
``small_cnn`` images (the original demo network).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainwise.components.models.backbone_names import SAVED_BACKBONE_PREFIX as BACKBONE_PREFIX


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
    """Flatten the input and classify it with two hidden layers. Token ids (``vocab_size``
    given) are embedded and averaged first (a bag of words)."""

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, hidden: int = 256,
                 dropout: float = 0.25, vocab_size: int | None = None, embed_dim: int = 64):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0) if vocab_size else None
        n_in = embed_dim if vocab_size else math.prod(input_shape)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(x) if self.embed is not None else x)


class _ResidualBlock(nn.Module):
    def __init__(self, conv, norm, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=False), norm(c_out),
        )
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out
                     else nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNetCNN(nn.Module):
    """A small ResNet (basic residual blocks, batch norm, dropout before the classifier).

    Sized from the data: 2-D convolutions for (C, H, W) images, 1-D for (C, L) sequences; one
    stage per halving while the smallest side stays >= 4 (8x8 digits: 2 stages, 28x28: 3,
    length 40: 4), widths ``width``, 2x, 4x, ... capped at 256; global average pooling.
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, dropout: float = 0.25,
                 width: int = 32, blocks_per_stage: int = 1):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn needs (C, H, W) images or (C, L) sequences, got input_shape {input_shape}")
        two_d = len(input_shape) == 3
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if two_d else (nn.Conv1d, nn.BatchNorm1d)
        side = min(input_shape[1:])
        stages = max(1, min(4, int(math.log2(max(side, 1) / 2))))
        layers = [conv(input_shape[0], width, 3, padding=1, bias=False), norm(width), nn.ReLU(inplace=True)]
        c = width
        for s in range(stages):
            c_out = min(256, width * 2 ** s)
            for b in range(blocks_per_stage):
                layers.append(_ResidualBlock(conv, norm, c, c_out, stride=2 if s > 0 and b == 0 else 1))
                c = c_out
        pool = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
        self.features = nn.Sequential(*layers, pool, nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _token_input(input_shape, vocab_size, dim):
    """Embedding for token ids, a linear projection of the channels for float sequences."""
    if vocab_size:
        return nn.Embedding(vocab_size, dim, padding_idx=0)
    if len(input_shape) != 2:
        raise ValueError(f"sequence models need (C, L) sequences or token ids (T,), got input_shape {input_shape}")
    return nn.Linear(input_shape[0], dim)


def _steps(x: torch.Tensor, tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, L, ...) steps and a padding mask (True = padding) for token ids."""
    if tokens:
        return x, x == 0
    return x.transpose(1, 2), None  # (N, C, L) -> (N, L, C)


def _masked_mean_max(h: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    if pad is None:
        return torch.cat([h.mean(1), h.amax(1)], dim=1)
    keep = (~pad).unsqueeze(-1).to(h.dtype)
    mean = (h * keep).sum(1) / keep.sum(1).clamp_min(1)
    mx = h.masked_fill(pad.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
    mx = torch.where(keep.sum(1) > 0, mx, torch.zeros_like(mx))  # an all-padding row pools to 0
    return torch.cat([mean, mx], dim=1)


class GRUClassifier(nn.Module):
    """Bidirectional GRU over the steps; mean- and max-pooled outputs -> classifier."""

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, dropout: float = 0.25,
                 vocab_size: int | None = None, hidden: int = 128, layers: int = 2, embed_dim: int = 64):
        super().__init__()
        self.tokens = bool(vocab_size)
        self.inp = _token_input(input_shape, vocab_size, embed_dim)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, pad = _steps(x, self.tokens)
        h, _ = self.gru(self.inp(steps))
        return self.head(_masked_mean_max(h, pad))


class TransformerClassifier(nn.Module):
    """Transformer encoder (pre-norm) with learned positions; masked mean/max pooling."""

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, dropout: float = 0.1,
                 vocab_size: int | None = None, d_model: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.tokens = bool(vocab_size)
        self.inp = _token_input(input_shape, vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(1, input_shape[-1], d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * d_model, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, pad = _steps(x, self.tokens)
        h = self.inp(steps) + self.pos[:, : steps.shape[1]]
        if pad is not None and bool(pad.all(1).any()):
            pad = pad.clone()
            pad[:, 0] = False  # a row of padding only would give NaN attention; let it see one slot
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        return self.head(_masked_mean_max(h, pad))


def _small_cnn(*, input_shape, n_classes, dropout, vocab_size):
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn needs (C, H, W) images, got input_shape {input_shape}; try cnn or mlp")
    c, h, w = input_shape
    return SmallCNN(in_channels=c, height=h, width=w, n_classes=n_classes, dropout=dropout)


def _no_tokens(cls):
    def build(*, input_shape, n_classes, dropout, vocab_size):
        if vocab_size:
            raise ValueError(f"{cls.__name__} does not take text; use gru, transformer or mlp")
        return cls(input_shape=input_shape, n_classes=n_classes, dropout=dropout)
    return build


def _with_tokens(cls):
    def build(*, input_shape, n_classes, dropout, vocab_size):
        return cls(input_shape=input_shape, n_classes=n_classes, dropout=dropout, vocab_size=vocab_size)
    return build


MODELS = {
    "small_cnn": _small_cnn,
    "mlp": _with_tokens(MLP),
    "cnn": _no_tokens(ResNetCNN),
    "gru": _with_tokens(GRUClassifier),
    "transformer": _with_tokens(TransformerClassifier),
}


# model.json's `model` for a network built on train.backbone: "backbone:<name>" (trainwise.components.models.backbones);
# BACKBONE_PREFIX, imported above from backbone_names (torch-free: the verdict's display name reads it too)


def build_model(name: str, *, input_shape: tuple[int, ...], n_classes: int, dropout: float = 0.0,
                vocab_size: int | None = None, params: dict | None = None,
                vocab: list[str] | None = None) -> nn.Module:
    """A fresh model by name. ``input_shape`` is one example's shape (see the table above);
    ``vocab_size`` is set for text (token ids) and None otherwise. ``package.module:factory``
    builds a user's own network (trainwise.components.models.custom), which also receives ``params``
    (the train params of the run) and, for text, ``params["vocab"]``: the words the ids stand for."""
    if name.startswith(BACKBONE_PREFIX):  # a saved train.backbone model: weights come from its state dict
        from trainwise.components.models.backbones import build_classifier

        return build_classifier(name[len(BACKBONE_PREFIX):], False, n_classes=n_classes, dropout=dropout)
    if ":" in name:  # bring your own: package.module:factory
        from trainwise.components.models.custom import build_custom

        return build_custom(name, input_shape=tuple(int(d) for d in input_shape), n_classes=n_classes,
                            dropout=dropout, vocab_size=vocab_size, params=params, vocab=vocab)
    try:
        make = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)} or give package.module:factory") \
            from None
    return make(input_shape=tuple(int(d) for d in input_shape), n_classes=n_classes, dropout=dropout,
                vocab_size=vocab_size)
