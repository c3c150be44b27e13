"""A word-level tokenizer fitted on the train split only, saved with the model (``model.json``).

Fitting on train only keeps validation and test words out of the vocabulary, as they would be
for unseen data: a word first seen at inference maps to ``<unk>``. The tokenizer is a plain
dict (JSON; loads under ``torch.load(weights_only=True)`` inside a checkpoint too).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import numpy as np

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def fit_tokenizer(texts: Iterable[str], *, max_tokens: int, vocab_size: int, min_count: int = 1) -> dict:
    """Vocabulary of the ``vocab_size - 2`` most frequent words (ties broken alphabetically,
    so the same texts always give the same ids); ids 0/1 are padding and unknown."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (padding, unknown and one word), got {vocab_size}")
    counts = Counter(w for t in texts for w in words(t))
    kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return {"kind": "words", "max_tokens": int(max_tokens), "vocab": ["<pad>", "<unk>", *kept[: vocab_size - 2]]}


def vocabulary(tokenizer: dict | None) -> list[str] | None:
    """Tokens by id (to name them in attributions): the fitted vocabulary, or a text backbone's own."""
    if tokenizer and tokenizer.get("kind") == "backbone":
        from trainwise.components.models.text_backbones import vocabulary as backbone_vocabulary

        return backbone_vocabulary(tokenizer)
    return (tokenizer or {}).get("vocab")


def encode(texts: Iterable[str], tokenizer: dict) -> np.ndarray:
    """int64 (N, max_tokens): ids truncated to ``max_tokens``, padded with 0.

    A text backbone's model.json holds ``{"kind": "backbone", ...}`` instead of a vocabulary:
    its ids come from that model's own tokenizer (components/models/text_backbones.py)."""
    if tokenizer.get("kind") == "backbone":
        from trainwise.components.models.text_backbones import tokenize

        return tokenize(list(texts), tokenizer)
    index = {w: i for i, w in enumerate(tokenizer["vocab"])}
    T = tokenizer["max_tokens"]
    texts = list(texts)
    out = np.zeros((len(texts), T), dtype=np.int64)
    for row, t in enumerate(texts):
        ids = [index.get(w, UNK) for w in words(t)[:T]]
        out[row, : len(ids)] = ids
    return out
