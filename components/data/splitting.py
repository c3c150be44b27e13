"""Train / val / test assignment derived from each row's id.

A row's split depends only on ``hash(seed, id)`` and the fractions, never on the other rows:
adding or removing rows does not move an existing row to another split, and the same
params give the same split on any machine. Every class is cut at the same thresholds, so the
split is stratified in expectation; the realised per-class counts go into the manifest.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def unit_hash(row_id: str, *, seed: int) -> float:
    """A number in [0, 1) that is uniform over ids and fixed for a given (seed, id)."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(ids: Sequence[str], *, fractions: dict[str, float], seed: int) -> list[str]:
    names = [s for s in SPLITS if s in fractions] + [s for s in fractions if s not in SPLITS]
    cuts = np.cumsum([fractions[n] for n in names])
    if not np.isclose(cuts[-1], 1.0):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    cuts[-1] = 1.0
    u = np.fromiter((unit_hash(i, seed=seed) for i in ids), dtype=np.float64, count=len(ids))
    return [names[k] for k in np.searchsorted(cuts, u, side="right")]


def split_counts(splits: Sequence[str], labels: Sequence[int], classes: list[str]) -> dict:
    """{split: {class_name: count}} for the manifest."""
    c = Counter(zip(splits, labels))
    return {s: {classes[k]: c.get((s, k), 0) for k in range(len(classes))}
            for s in sorted(set(splits), key=lambda s: SPLITS.index(s) if s in SPLITS else 99)}
