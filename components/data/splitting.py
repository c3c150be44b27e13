"""Train / val / test assignment derived from each row's id (or its duplicate group's name).

A row's split depends only on ``hash(seed, key)`` and the fractions, never on the other rows:
adding or removing rows does not move an existing row to another split, and the same
params give the same split on any machine. The key is the row's ``group`` column when clean
wrote one (near-duplicate groups are named by their smallest id), so a whole group lands in
one split; otherwise the row's ``id``. (A new row that joins an existing group with a smaller
id renames the group and may move it: the price of never splitting a group.)

Stratification: every class is cut at the same hash thresholds, so each class is split in
the given fractions *in expectation*; exact per-class quotas would move existing rows when
rows are added. The realised per-class counts and the largest deviation from the target
fraction go into the manifest and metrics (``split/max_class_fraction_gap``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import numpy as np
import pyarrow as pa

SPLITS = ("train", "val", "test")


def unit_hash(row_id: str, *, seed: int) -> float:
    """A number in [0, 1) that is uniform over ids and fixed for a given (seed, id)."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(ids: Sequence[str], *, fractions: dict[str, float], seed: int) -> list[str]:
    """Each key's split; pass group names instead of ids to keep groups together."""
    names = [s for s in SPLITS if s in fractions] + [s for s in fractions if s not in SPLITS]
    cuts = np.cumsum([fractions[n] for n in names])
    if not np.isclose(cuts[-1], 1.0):
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    cuts[-1] = 1.0
    u = np.fromiter((unit_hash(i, seed=seed) for i in ids), dtype=np.float64, count=len(ids))
    return [names[k] for k in np.searchsorted(cuts, u, side="right")]


def split_keys(table: pa.Table | pa.RecordBatch) -> list[str]:
    """What a row's split is derived from: its ``group`` if clean wrote one, else its ``id``."""
    names = table.schema.names
    return table.column("group" if "group" in names else "id").to_pylist()


def split_counts(splits: Sequence[str], labels: Sequence[int], classes: list[str]) -> dict:
    """{split: {class_name: count}} for the manifest."""
    c = Counter(zip(splits, labels))
    return {s: {classes[k]: c.get((s, k), 0) for k in range(len(classes))}
            for s in sorted(set(splits), key=lambda s: SPLITS.index(s) if s in SPLITS else 99)}


def class_fraction_gap(per_split: dict, fractions: dict[str, float]) -> float:
    """Largest |share of a class's rows in a split - that split's fraction| over classes with rows."""
    classes = {c for counts in per_split.values() for c in counts}
    gap = 0.0
    for c in classes:
        total = sum(per_split.get(s, {}).get(c, 0) for s in fractions)
        if total:
            gap = max(gap, *(abs(per_split.get(s, {}).get(c, 0) / total - f) for s, f in fractions.items()))
    return gap


def assign_splits_given(keys: Sequence[str], given: Sequence[str | None], *, fractions: dict[str, float],
                        seed: int) -> list[str]:
    """Each row's split when the data came with one (a ``test/`` folder, a split column).

    Rows given ``val`` or ``test`` keep it: a fixed test set is never redrawn. Rows given ``train``
    are cut, by their key as :func:`assign_splits` does, between train and the splits the data did
    not bring (e.g. val drawn from train), with the fractions renormalised. A row with no given
    split follows the given rows of its group (the most held-out one: test over val over train),
    else the hash over all ``fractions``. Rows of one group may then sit in different splits only
    where the data's own split put them there: that is contamination, counted by the split stage.
    """
    rank = {"train": 0, "val": 1, "test": 2}
    brought = {g for g in given if g}
    pool = {s: f for s, f in fractions.items() if s == "train" or s not in brought}
    total = sum(pool.values())
    pool = {s: f / total for s, f in pool.items()}
    from_train = assign_splits(keys, fractions=pool, seed=seed) if len(pool) > 1 else ["train"] * len(keys)
    anywhere = assign_splits(keys, fractions=fractions, seed=seed)
    group_given: dict[str, str] = {}
    for k, g in zip(keys, given):
        if g and rank.get(g, 0) >= rank.get(group_given.get(k, g), 0):
            group_given[k] = g
    out = []
    for k, g, t, a in zip(keys, given, from_train, anywhere):
        if g == "train":
            out.append(t)
        elif g:
            out.append(g)
        elif k in group_given:
            out.append(t if group_given[k] == "train" else group_given[k])
        else:
            out.append(a)
    return out


def contamination(keys: Sequence[str], splits: Sequence[str]) -> dict[str, int]:
    """Rows of each held-out split (val, test) whose group also has a train row: with a split the
    data came with, the test rows that have a near-duplicate in train."""
    in_train = {k for k, s in zip(keys, splits) if s == "train"}
    return {s: sum(1 for k, x in zip(keys, splits) if x == s and k in in_train) for s in ("val", "test")}
