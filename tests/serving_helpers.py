"""A small digits model trained in a few seconds without Ray, for the serving / predict tests."""

from __future__ import annotations

from pathlib import Path

import torch

from components.data.contract import read_manifest
from components.data.sources import encode_png
from components.models import build_model
from components.training.data import input_shape, load_split
from components.training.export import save_model


def train_tiny_digits_model(split_dir: Path, out_dir: Path, *, epochs: int = 8) -> tuple[Path, dict]:
    """Plain-torch training of the real network on the digits split; saved like the train stage saves."""
    torch.manual_seed(0)
    classes = read_manifest(split_dir)["classes"]
    shape = input_shape(str(split_dir))
    x, y, _ = load_split(str(split_dir), "train")
    model = build_model("small_cnn", input_shape=shape, n_classes=len(classes), dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    spec = {"model": "small_cnn", "input_shape": list(shape), "classes": classes, "dropout": 0.0}
    return save_model(out_dir, model.state_dict(), spec), spec


def digit_pngs(split_dir: Path, n: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, true class name) of ``n`` test-split digits, encoded back from the cleaned pixels."""
    x, y, _ = load_split(str(split_dir), "test")
    classes = read_manifest(split_dir)["classes"]
    pixels = (x[:n, 0] * 255).round().to(torch.uint8).numpy()
    return [(encode_png(p), classes[int(label)]) for p, label in zip(pixels, y[:n])]
