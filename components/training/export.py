"""The trained model on disk: ``model.pt`` (state dict) + ``model.json`` (how to rebuild it).

``model.json`` holds ``model``, ``input_shape``, ``classes``, ``dropout``, ``modality`` and,
for text, the ``tokenizer`` fitted on the train split (vocabulary + ``max_tokens``): what
:func:`trainwise.components.training.data.decode` needs to turn raw rows into the model's input.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from trainwise.components.atomic_io import replace_dir
from trainwise.components.data.contract import DataContractError
from trainwise.components.models import build_model

WEIGHTS, SPEC = "model.pt", "model.json"


def save_model(out_dir: str | os.PathLike, state_dict: dict, spec: dict) -> Path:
    """Write both files to a temp dir and rename it over ``out_dir`` (never half a model)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    torch.save(state_dict, tmp / WEIGHTS)
    (tmp / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    replace_dir(tmp, out_dir)
    return out_dir


def load_model(model_dir: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    model_dir = Path(model_dir)
    try:
        spec = json.loads((model_dir / SPEC).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir / SPEC}: missing; run the train stage first") from None
    except json.JSONDecodeError as err:
        raise DataContractError(f"{model_dir / SPEC}: not valid JSON ({err}); re-run the train stage") from None
    weights = model_dir / WEIGHTS
    try:
        # weights_only: a checkpoint is data, never code; a pickle that tries to run code is refused
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights}: missing; run the train stage first") from None
    except Exception as err:  # truncated / corrupt file, or a pickle weights_only refuses
        raise DataContractError(f"{weights}: not a loadable trainwise checkpoint ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200]}); re-run the train stage to rewrite it") from None
    try:
        return load_model_from_state(state, spec)
    except (RuntimeError, KeyError, TypeError) as err:
        raise DataContractError(f"{weights}: does not fit the model {model_dir / SPEC} describes "
                                f"({str(err).splitlines()[0][:200]}...); the two files come from different "
                                "runs: re-run the train stage") from None


def load_model_from_state(state_dict: dict, spec: dict) -> tuple[torch.nn.Module, dict]:
    tokenizer = spec.get("tokenizer")
    model = build_model(spec["model"], input_shape=tuple(spec["input_shape"]), n_classes=len(spec["classes"]),
                        dropout=spec.get("dropout", 0.0),
                        # a text backbone's tokenizer is its own (no "vocab" here: components/models/text_backbones.py)
                        vocab_size=len(tokenizer["vocab"]) if tokenizer and "vocab" in tokenizer else None,
                        vocab=(tokenizer or {}).get("vocab"))
    model.load_state_dict(state_dict)
    model.eval()
    return model, spec


def model_spec(config: dict, *, classes: list[str], **extra) -> dict:
    """``model.json`` from a checkpoint's resolved loop config (see the module docstring)."""
    spec = {"model": config["model"], "input_shape": list(config["input_shape"]), "classes": list(classes),
            "dropout": config["dropout"], "modality": config["modality"]}
    if config.get("tokenizer"):
        spec["tokenizer"] = config["tokenizer"]
    return {**spec, **extra}
