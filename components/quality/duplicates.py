"""Exact and near duplicates, duplicate groups, and the cross-split leakage check.

Exact duplicates share the hash of their *cleaned* payload (decoded pixels, normalised text,
float32 values), so two encodings of the same picture are exact duplicates.

Near duplicates:
- images: each image becomes a 16x16 grayscale vector, mean-centred and scaled to unit length
  (so brightness and contrast shifts cancel); two images are near duplicates when these
  vectors lie within ``near_distance`` (Euclidean). A 64-bit perceptual hash was measured and
  rejected: on 8x8 digits any Hamming threshold above 0 chains hundreds of *different*
  handwritten digits into one group (threshold 3: a group of 168-305 rows), which would wreck
  a stratified split. At distance 0.05 no two distinct digits match (their nearest-neighbour
  distances start at 0.088), while a re-encoded JPEG (q=75), +-3 pixel noise or a +20
  brightness shift of the same image lies at 0.01-0.04.
- text: the same text once case, punctuation and whitespace are ignored.
- sequences / features: exact duplicates only.

Groups are the connected components of "exact or near duplicate of"; a group is named by its
smallest row id, so the name does not depend on row order.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

EMBED_SIZE = 16
# Reasons rows are set aside as duplicates (the manifest counts rows per reason).
DUPLICATE = "duplicate"
LABEL_CONFLICT = "duplicate_label_conflict"
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def image_embedding(pixels: np.ndarray) -> np.ndarray:
    """(h, w, c) uint8 -> unit-length float32 vector of the 16x16 grayscale, mean removed."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    img = img.convert("L").resize((EMBED_SIZE, EMBED_SIZE), Image.Resampling.BILINEAR)
    v = np.asarray(img, dtype=np.float32).reshape(-1)
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    # A flat image has no shape to compare: it gets the zero vector, so all flat images of
    # any brightness are near duplicates of each other (they are, for a classifier).
    return v / norm if norm > 1e-6 else v


def text_key(text: str) -> str:
    """The text with case, punctuation and runs of whitespace ignored."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", folded).split())


def near_pairs(vectors: np.ndarray, *, radius: float, chunk: int = 2048) -> np.ndarray:
    """Index pairs (i < j) of rows of ``vectors`` within Euclidean ``radius``; shape (P, 2).

    Brute force in chunks (memory O(chunk * N)); O(N^2) time, fine to ~10^5 rows.
    """
    n = len(vectors)
    if n < 2 or radius <= 0:
        return np.empty((0, 2), dtype=np.int64)
    v = np.asarray(vectors, dtype=np.float32)
    sq = (v * v).sum(1)
    found = []
    for start in range(0, n, chunk):
        block = v[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ v.T
        i, j = np.nonzero(d2 <= radius * radius)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found).astype(np.int64)


def key_pairs(keys: Sequence) -> np.ndarray:
    """Index pairs (first, other) of rows that share a key: a star per key, enough to connect."""
    first: dict = {}
    pairs = []
    for i, k in enumerate(keys):
        if k is None:
            continue
        if k in first:
            pairs.append((first[k], i))
        else:
            first[k] = i
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def connected_groups(ids: Sequence[str], pairs: Iterable[tuple[int, int]]) -> list[str]:
    """Each row's group name: the smallest id among the rows it is connected to."""
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    best: dict[int, str] = {}
    for i, row_id in enumerate(ids):
        r = find(i)
        if r not in best or row_id < best[r]:
            best[r] = row_id
    return [best[find(i)] for i in range(len(ids))]


def find_exact_duplicates(records: list[tuple[str, str, int]]) -> dict[str, tuple[str, dict]]:
    """Rows to set aside among exact duplicates, from ``(id, content hash, label)`` records.

    A group whose labels agree keeps its smallest id (deterministic, independent of order);
    the others are ``duplicate`` of it. A group whose labels disagree cannot be trusted:
    every member is set aside as ``duplicate_label_conflict``.
    """
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for row_id, digest, label in records:
        groups[digest].append((row_id, label))
    dropped: dict[str, tuple[str, dict]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        if len({label for _, label in members}) > 1:
            for row_id, label in members:
                dropped[row_id] = (LABEL_CONFLICT, {"group": [m for m, _ in members], "label": label})
        else:
            keeper = members[0][0]
            for row_id, _ in members[1:]:
                dropped[row_id] = (DUPLICATE, {"of": keeper})
    return dropped


def group_summary(groups: Sequence[str], labels: Sequence[int], ids: Sequence[str]) -> dict:
    """Near-duplicate groups of 2+ rows, and those whose labels disagree (conflicts)."""
    members: dict[str, list[int]] = defaultdict(list)
    for k, g in enumerate(groups):
        members[g].append(k)
    multi = {g: ks for g, ks in members.items() if len(ks) > 1}
    conflicts = [{"group": g, "ids": [ids[k] for k in ks], "labels": [int(labels[k]) for k in ks]}
                 for g, ks in sorted(multi.items()) if len({labels[k] for k in ks}) > 1]
    return {"groups": len(multi), "rows": sum(len(ks) for ks in multi.values()), "conflicts": conflicts}


def duplicate_pairs(*, hashes: Sequence[str], near_vectors: np.ndarray | None = None,
                    near_keys: Sequence | None = None, near_distance: float = 0.0) -> np.ndarray:
    """All exact / near duplicate index pairs that connect the rows (enough for grouping)."""
    parts = [key_pairs(hashes)]
    if near_vectors is not None and near_distance > 0:
        parts.append(near_pairs(near_vectors, radius=near_distance))
    if near_keys is not None:
        parts.append(key_pairs(near_keys))
    return np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)


def cross_split_leaks(splits: Sequence[str], *, hashes: Sequence[str], near_vectors: np.ndarray | None = None,
                      near_keys: Sequence | None = None, near_distance: float = 0.0,
                      examples: int = 10) -> dict:
    """The leakage check: exact and near duplicate pairs whose rows landed in different splits.

    Exact pairs are counted over every pair sharing a hash (not only a star), so the count is
    the number of leaking pairs.
    """
    splits = np.asarray(splits)

    def count_key_leaks(keys) -> tuple[int, list]:
        by_key: dict = defaultdict(list)
        for i, k in enumerate(keys):
            if k is not None:
                by_key[k].append(i)
        n, ex = 0, []
        for ks in by_key.values():
            if len(ks) < 2:
                continue
            per = defaultdict(int)
            for k in ks:
                per[splits[k]] += 1
            total = len(ks)
            same = sum(c * (c - 1) // 2 for c in per.values())
            leaks = total * (total - 1) // 2 - same
            if leaks:
                n += leaks
                ex.append([int(k) for k in ks])
        return n, ex[:examples]

    exact, exact_ex = count_key_leaks(hashes)
    near, near_ex = 0, []
    if near_vectors is not None and near_distance > 0:
        pairs = near_pairs(near_vectors, radius=near_distance)
        crossing = pairs[splits[pairs[:, 0]] != splits[pairs[:, 1]]] if len(pairs) else pairs
        near, near_ex = len(crossing), crossing[:examples].tolist()
    if near_keys is not None:
        n, ex = count_key_leaks(near_keys)
        near, near_ex = near + n, near_ex + ex
    return {"exact_pairs": exact, "near_pairs": near, "examples": {"exact": exact_ex, "near": near_ex[:examples]}}



def signatures(column, modality: str, *, image_shape: list[int] | None = None):
    """(content hashes, near vectors or None, near keys or None) of a *cleaned* payload column.

    The same signatures clean computes, recomputed from the cleaned data (the split stage's
    leakage check uses them).
    """
    from components.data.contract import content_hash

    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    if modality == "text":
        texts = column.to_pylist()
        return [content_hash(t.encode()) for t in texts], None, [text_key(t) for t in texts]
    flat = column.flatten().to_numpy(zero_copy_only=False)
    rows = flat.reshape(len(column), -1)
    if modality == "image":
        rows = rows.astype(np.uint8)
        hashes = [content_hash(r.tobytes()) for r in rows]
        return hashes, np.stack([image_embedding(r.reshape(image_shape)) for r in rows]) if len(rows) else None, None
    rows = rows.astype(np.float32)
    return [content_hash(r.tobytes()) for r in rows], None, None
