"""Symmetric label noise injected on purpose, so that label-error detection can be scored.

Deterministic in ``(seed, id)``: which rows flip and to which class depend on the row's id
only. A flipped label is drawn uniformly from the *other* classes.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _u(row_id: str, salt: str, seed: int) -> float:
    digest = hashlib.blake2b(f"noise:{salt}:{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def inject_symmetric_noise(ids, labels, *, eligible, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """Noisy copy of ``labels``: exactly ``round(rate * eligible.sum())`` eligible rows flipped.

    The flipped rows are the eligible ones with the smallest ``hash(seed, id)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    eligible = np.asarray(eligible, dtype=bool)
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if n_classes < 2 or rate == 0:
        return labels.copy()
    cand = np.flatnonzero(eligible)
    n_flip = int(round(rate * len(cand)))
    order = sorted(cand, key=lambda k: _u(ids[k], "pick", seed))[:n_flip]
    noisy = labels.copy()
    for k in order:
        shift = 1 + int(_u(ids[k], "to", seed) * (n_classes - 1))  # 1 .. n_classes-1
        noisy[k] = (labels[k] + shift) % n_classes
    return noisy
