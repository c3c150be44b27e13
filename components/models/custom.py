"""Bring your own model: ``train.model: package.module:factory``.

The factory is imported from the project (or any installed package) and called as
``factory(n_classes=..., input_shape=..., params={...})`` where ``params`` are the train params
the run uses (dropout, lr, ... and whatever the tune stage chose; for text also ``vocab_size`` and
``vocab``, the word of each token id); it returns an ``nn.Module``
that takes what the table in :mod:`trainwise.components.models.networks` says for the data's modality
and returns logits ``(N, n_classes)``. Errors name ``train.model`` and what to fix.
"""

from __future__ import annotations

import importlib
import inspect
import re

from torch import nn

SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class CustomModelError(ValueError):
    """train.model names a factory that cannot be imported or does not build a module."""


def load_factory(spec: str):
    if not SPEC.match(spec):
        raise CustomModelError(f"train.model: {spec!r} is neither a built-in model nor package.module:factory")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CustomModelError(f"train.model: cannot import {module_name!r} ({err}); the module must be importable "
                               "from the project root (e.g. a file under examples/ or your own package, "
                               "listed in dvc.yaml's train deps)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CustomModelError(f"train.model: {module_name} has no callable {attr!r}")
    return factory


def build_custom(spec: str, *, input_shape: tuple[int, ...], n_classes: int, dropout: float = 0.0,
                 vocab_size: int | None = None, params: dict | None = None, vocab: list[str] | None = None) -> nn.Module:
    factory = load_factory(spec)
    # vocab: for text, the words of the ids (id -> word), so a pretrained model with a tokenizer of its
    # own can map them (examples/hf_text_model.py); passed at training and when a saved model is rebuilt
    params = {"dropout": dropout, **(params or {}), **({"vocab_size": vocab_size} if vocab_size else {}),
              **({"vocab": list(vocab)} if vocab else {})}
    kwargs = {"n_classes": n_classes, "input_shape": tuple(input_shape), "params": params}
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        missing = [k for k in ("n_classes", "input_shape") if k not in accepted]
        if missing:
            raise CustomModelError(f"train.model: {spec} must accept keyword arguments n_classes, input_shape "
                                   f"(and optionally params); it lacks {missing}")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise CustomModelError(f"train.model: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model
