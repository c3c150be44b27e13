"""A small digits model trained in a few seconds without Ray, for the serving / predict tests."""

from __future__ import annotations

from pathlib import Path

import torch

from trainwise.components.data.contract import read_manifest
from trainwise.components.data.sources import encode_png
from trainwise.components.models import build_model
from trainwise.components.training.data import input_shape, load_split, modality, read_split
from trainwise.components.training.text import fit_tokenizer
from trainwise.components.training.export import save_model


def train_tiny_digits_model(split_dir: Path, out_dir: Path, *, model_name: str = "mlp",
                            epochs: int = 15) -> tuple[Path, dict]:
    return train_tiny_model(split_dir, out_dir, model_name=model_name, epochs=epochs)


def train_tiny_model(split_dir: Path, out_dir: Path, *, model_name: str = "mlp",
                     epochs: int = 15) -> tuple[Path, dict]:
    """Plain-torch training of a real network on the digits split; saved like the train stage saves.

    One torch thread: on a machine shared with other jobs, more threads made this 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(split_dir, out_dir, model_name=model_name, epochs=epochs)
    finally:
        torch.set_num_threads(threads)


def _train(split_dir: Path, out_dir: Path, *, model_name: str, epochs: int) -> tuple[Path, dict]:
    """Any modality; the spec carries what the train stage records (modality, the train-split
    tokenizer for text, feature names for tables)."""
    torch.manual_seed(0)
    manifest = read_manifest(split_dir)
    kind = modality(str(split_dir))
    tokenizer = None
    if kind == "text":
        texts = read_split(str(split_dir), "train").column("text").to_pylist()
        tokenizer = fit_tokenizer(texts, max_tokens=16, vocab_size=200)
    shape = input_shape(str(split_dir), max_tokens=16)
    x, y, _ = load_split(str(split_dir), "train", tokenizer=tokenizer)
    model = build_model(model_name, input_shape=shape, n_classes=len(manifest["classes"]), dropout=0.0,
                        vocab_size=len(tokenizer["vocab"]) if tokenizer else None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    spec = {"model": model_name, "input_shape": list(shape), "classes": manifest["classes"], "dropout": 0.0,
            "modality": kind}
    if tokenizer:
        spec["tokenizer"] = tokenizer
    if manifest.get("feature_names"):
        spec["feature_names"] = manifest["feature_names"]
    return save_model(out_dir, model.state_dict(), spec), spec


def digit_pngs(split_dir: Path, n: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, true class name) of ``n`` test-split digits, encoded back from the cleaned pixels."""
    x, y, _ = load_split(str(split_dir), "test")
    classes = read_manifest(split_dir)["classes"]
    pixels = (x[:n, 0] * 255).round().to(torch.uint8).numpy()
    return [(encode_png(p), classes[int(label)]) for p, label in zip(pixels, y[:n])]
