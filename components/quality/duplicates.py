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

The search for near images is sub-quadratic with bounded memory (:class:`NearDuplicateIndex`):
each embedding is projected onto its 6x6 lowest 2-D DCT frequencies (an orthonormal basis, fixed,
nothing fitted), a scikit-learn KD-tree over these 36 numbers returns every pair within
``near_distance`` there, and each candidate is checked against the full embeddings, which wait
in a temporary file. An orthonormal projection never lengthens a distance, so every pair
within ``near_distance`` in 256 dimensions is a candidate in 36: the answer is exactly the
brute force's, not an approximation. Memory: 144 bytes a row for the projections plus the
tree's float64 copy (288 bytes a row); the full 1 KiB embeddings stay on disk. Time: about
N log N plus the candidates, which are few at a small radius (on scikit-learn digits and on
the benchmark's images the 36-number projection yields no candidate that the full check
rejects). Noise-like images (a flat spectrum) are the KD-tree's worst case: there its time
tends towards the brute force's, while memory stays bounded. Measured against the brute force,
faiss (flat and IVF range search) and more or fewer DCT frequencies in
benchmarks/near_duplicates.py and docs/scale.md.

Groups are the connected components of "exact or near duplicate of"; a group is named by its
smallest row id, so the name does not depend on row order.

Clean finds the near pairs once and writes them beside its manifest (``near_pairs.parquet``:
``id``, ``other``, ``distance``); split's leakage check reads them instead of searching again
and counts the pairs whose two rows landed in different splits.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

EMBED_SIZE = 16
# Lowest DCT frequencies kept per axis for the KD-tree (6x6 = 36 numbers): 95% of the energy
# of digits' embeddings; more dims slow the tree (8x8: 1.8x the time on the benchmark's
# 20k images), fewer let more far-apart rows through as candidates at larger radii.
REDUCED_SIZE = 6
NEAR_PAIRS_FILE = "near_pairs.parquet"
NEAR_PAIRS_SCHEMA = pa.schema([("id", pa.string()), ("other", pa.string()), ("distance", pa.float32())])
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


def _dct_basis(size: int = EMBED_SIZE, keep: int = REDUCED_SIZE) -> np.ndarray:
    """(size*size, keep*keep) orthonormal columns: the lowest ``keep`` x ``keep`` 2-D DCT-II frequencies."""
    k = np.arange(size)
    c = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * size))
    c[0] /= np.sqrt(2.0)                       # row f of c: frequency f over the pixels (orthonormal)
    basis = np.einsum("ax,by->xyab", c[:keep], c[:keep])  # pixel (x, y) -> frequency (a, b)
    return basis.reshape(size * size, keep * keep).astype(np.float32)


_BASIS = _dct_basis()


def reduce_embedding(vectors: np.ndarray) -> np.ndarray:
    """(n, 256) unit embeddings -> (n, 36) low-frequency DCT coefficients (distances only shrink)."""
    return np.asarray(vectors, dtype=np.float32).reshape(-1, EMBED_SIZE * EMBED_SIZE) @ _BASIS


class NearDuplicateIndex:
    """Every pair of image embeddings within ``radius``, found with bounded memory.

    Rows are added in batches as they are read (:meth:`add`); only their 36-number projections
    stay in memory, the full embeddings go to a temporary file. :meth:`pairs` then runs the
    KD-tree search over the projections and checks each candidate against the full vectors.
    """

    def __init__(self, *, radius: float, query_rows: int = 16384, check_pairs: int = 16384):
        if radius < 0:
            raise ValueError(f"near-duplicate radius must be >= 0, got {radius}")
        self.radius = float(radius)
        self.query_rows, self.check_pairs = query_rows, check_pairs
        self._reduced: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._file = tempfile.TemporaryFile(prefix="trainwise-near-")
        self.rows = 0

    def add(self, vectors: np.ndarray) -> None:
        """Append one embedding (256,) or a batch (m, 256); rows are numbered in order of adding."""
        v = np.asarray(vectors, dtype=np.float32).reshape(-1, EMBED_SIZE * EMBED_SIZE)
        self._pending.append(v)
        self._pending_rows += len(v)   # a running count: summing the pending list each row was O(n^2)
        self.rows += len(v)
        if self._pending_rows >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            v = np.concatenate(self._pending)
            self._pending, self._pending_rows = [], 0
            self._reduced.append(reduce_embedding(v))
            self._file.write(np.ascontiguousarray(v).tobytes())

    def pairs(self, *, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((P, 2) index pairs i < j within the radius, (P,) their distances).

        ``keep``: a boolean mask of added rows (rows set aside meanwhile are left out); the
        pairs then index the kept rows in order (0 .. keep.sum() - 1).
        """
        # scipy's KD-tree, not scikit-learn's: the same search, and importing sklearn.neighbors
        # (scipy.stats with it) was 3-4 s of clean's start-up on 2 busy cores, more than its search
        from scipy.spatial import cKDTree

        self._flush()
        self._file.flush()
        empty = np.empty((0, 2), np.int64), np.empty(0, np.float32)
        reduced = np.concatenate(self._reduced) if self._reduced else np.empty((0, REDUCED_SIZE ** 2), np.float32)
        rows = np.arange(len(reduced)) if keep is None else np.flatnonzero(keep)
        if len(rows) < 2 or self.radius <= 0:
            return empty
        reduced = reduced[rows]
        tree = cKDTree(reduced, leafsize=40)
        # float32 projections may round a true distance of exactly `radius` a hair above it
        r_candidate = self.radius * (1 + 1e-5) + 1e-6
        found_pairs, found_dist = [], []
        full = np.memmap(self._file, dtype=np.float32, mode="r", shape=(self.rows, EMBED_SIZE * EMBED_SIZE))
        try:
            for start in range(0, len(rows), self.query_rows):
                # sorted: pairs come in (i, j) order whatever the tree's layout
                hits = tree.query_ball_point(reduced[start:start + self.query_rows], r=r_candidate, return_sorted=True)
                counts = np.fromiter((len(h) for h in hits), np.int64, len(hits))
                i = np.repeat(np.arange(start, start + len(hits)), counts)
                j = np.fromiter((x for h in hits for x in h), np.int64, int(counts.sum()))
                i, j = i[i < j], j[i < j]
                for s in range(0, len(i), self.check_pairs):   # exact check, a bounded block at a time
                    a, b = i[s:s + self.check_pairs], j[s:s + self.check_pairs]
                    d = np.linalg.norm(full[rows[a]] - full[rows[b]], axis=1)
                    ok = d <= self.radius
                    found_pairs.append(np.stack([a[ok], b[ok]], axis=1))
                    found_dist.append(d[ok].astype(np.float32))
        finally:
            del full
        if not found_pairs:
            return empty
        return np.concatenate(found_pairs).astype(np.int64), np.concatenate(found_dist)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "NearDuplicateIndex":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def near_pairs(vectors: np.ndarray, *, radius: float) -> np.ndarray:
    """Index pairs (i < j) of rows of ``vectors`` within Euclidean ``radius``; shape (P, 2).

    Exactly the pairs a brute-force search finds, via :class:`NearDuplicateIndex`.
    """
    if len(vectors) < 2 or radius <= 0:
        return np.empty((0, 2), dtype=np.int64)
    with NearDuplicateIndex(radius=radius) as index:
        index.add(vectors)
        return index.pairs()[0]


def _id(ids, k) -> str:
    """Row k's id from a list of str or a numpy array of encoded ids (how clean keeps them: 20 bytes a row)."""
    v = ids[k]
    return v.decode() if isinstance(v, bytes) else v


def _rows_key(keys) -> np.ndarray | None:
    """A 1-D sortable view of a numpy key array ((n,) ints/bytes, or (n, w) bytes rows); None for a list."""
    if not isinstance(keys, np.ndarray):
        return None
    if keys.ndim == 2:
        keys = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    return keys


def key_pairs(keys) -> np.ndarray:
    """Index pairs (first, other) of rows that share a key: a star per key, enough to connect.

    ``keys``: a list (None: no key) or a numpy array (ints, or one row of digest bytes per row),
    which is grouped without a Python dict (memory O(rows) in numpy, not in objects).
    """
    arr = _rows_key(keys)
    if arr is not None:
        if len(arr) < 2:
            return np.empty((0, 2), np.int64)
        _, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
        head = first[inverse.ravel()]
        rows = np.flatnonzero(head != np.arange(len(arr)))
        return np.stack([head[rows], rows], axis=1).astype(np.int64)
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


def group_names(ids, pairs) -> dict[int, str]:
    """The group name (smallest id among the rows it is connected to) of every row in a pair;
    a row in no pair is a group of its own, named by its own id. Work and memory follow the
    pairs, not the rows."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return {}
    rows, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(local), np.int8), (local[:, 0], local[:, 1])), shape=(len(rows), len(rows)))
    _, component = connected_components(graph, directed=False)
    best: dict[int, str] = {}
    for c, r in zip(component.tolist(), rows.tolist()):
        row_id = _id(ids, r)
        if c not in best or row_id < best[c]:
            best[c] = row_id
    return {r: best[c] for c, r in zip(component.tolist(), rows.tolist())}


def exact_duplicate_rows(ids, digests: np.ndarray, labels: np.ndarray, *,
                         rows: np.ndarray | None = None) -> dict[int, tuple[str, dict]]:
    """Rows (numbers) to set aside among exact duplicates, with their reason.

    A group whose labels agree keeps its smallest id (deterministic, independent of order); the
    others are ``duplicate`` of it. A group whose labels disagree cannot be trusted: every member
    is set aside as ``duplicate_label_conflict``.

    ``ids``: encoded or str ids; ``digests``: one content digest per row ((n, 16) uint8 or any
    1-D key array); ``rows``: the candidate rows (default: all). Only rows in a group of 2+
    are ever looked at in Python.
    """
    full = _rows_key(digests)
    rows = np.arange(len(full)) if rows is None else np.asarray(rows, np.int64)
    if len(rows) < 2:
        return {}
    # Sort 8-byte prefixes (an int sort, 8 bytes a row), then split each prefix group by the full digest.
    prefix = np.ascontiguousarray(digests).view(np.uint8).reshape(len(full), -1)[:, :8].copy().view(np.int64).ravel() \
        if isinstance(digests, np.ndarray) and digests.ndim == 2 else full
    _, inverse, counts = np.unique(prefix[rows], return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    multi = np.flatnonzero(counts[inverse] > 1)
    dropped: dict[int, tuple[str, dict]] = {}
    if not len(multi):
        return dropped
    order = multi[np.argsort(inverse[multi], kind="stable")]
    same_prefix = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    groups = []
    for candidates in same_prefix:
        by_digest: dict = defaultdict(list)
        for k in candidates.tolist():
            by_digest[full[rows[k]].tobytes() if hasattr(full[rows[k]], "tobytes") else full[rows[k]]].append(k)
        groups += [g for g in by_digest.values() if len(g) > 1]
    for group in groups:
        members = sorted((_id(ids, int(rows[k])), int(rows[k])) for k in group)
        member_labels = {int(labels[r]) for _, r in members}
        if len(member_labels) > 1:
            for row_id, r in members:
                dropped[r] = (LABEL_CONFLICT, {"group": [m for m, _ in members], "label": int(labels[r])})
        else:
            for _, r in members[1:]:
                dropped[r] = (DUPLICATE, {"of": members[0][0]})
    return dropped


def group_summary(groups, labels: Sequence[int], ids: Sequence[str]) -> dict:
    """Near-duplicate groups of 2+ rows, and those whose labels disagree (conflicts).

    ``groups``: every row's group name, or {row: group name} for the rows in a pair
    (:func:`group_names`; the others are groups of one).
    """
    members: dict[str, list[int]] = defaultdict(list)
    for k, g in (groups.items() if isinstance(groups, dict) else enumerate(groups)):
        members[g].append(k)
    multi = {g: sorted(ks) for g, ks in members.items() if len(ks) > 1}
    conflicts = [{"group": g, "ids": [_id(ids, k) for k in ks], "labels": [int(labels[k]) for k in ks]}
                 for g, ks in sorted(multi.items()) if len({int(labels[k]) for k in ks}) > 1]
    return {"groups": len(multi), "rows": sum(len(ks) for ks in multi.values()), "conflicts": conflicts}


def duplicate_pairs(*, hashes: Sequence[str], near_vectors: np.ndarray | None = None,
                    near_keys: Sequence | None = None, near_distance: float = 0.0,
                    near: np.ndarray | None = None) -> np.ndarray:
    """All exact / near duplicate index pairs that connect the rows (enough for grouping).

    ``near``: near pairs found already (e.g. by a :class:`NearDuplicateIndex`); otherwise
    ``near_vectors`` are searched within ``near_distance``.
    """
    parts = [key_pairs(hashes)]
    if near is not None:
        parts.append(np.asarray(near, dtype=np.int64).reshape(-1, 2))
    elif near_vectors is not None and near_distance > 0:
        parts.append(near_pairs(near_vectors, radius=near_distance))
    if near_keys is not None:
        parts.append(key_pairs(near_keys))
    return np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)


def key64(data: bytes) -> int:
    """A 64-bit key of ``data`` (blake2b): 8 bytes a row instead of a 32-character string; a
    collision among a million rows has odds of about 1 in 4e7."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def _codes(keys) -> tuple[np.ndarray, np.ndarray]:
    """(integer codes of ``keys``: equal keys, equal codes; the rows that have a key). Integer
    arrays (e.g. :func:`key64` keys) are codes already; in a list, None means no key."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return keys, np.arange(len(keys))
    seen: dict = {}
    codes = np.fromiter((-1 if k is None else seen.setdefault(k, len(seen)) for k in keys), np.int64, len(keys))
    return codes, np.flatnonzero(codes >= 0)


def key_leaks(keys, split_codes: np.ndarray, *, examples: int = 10) -> tuple[int, list[list[int]]]:
    """Pairs of rows that share a key but not a split (every such pair, not a star), and up
    to ``examples`` crossing groups as row indices. Vectorised: memory O(rows), no pairs listed."""
    codes, rows = _codes(keys)
    if len(rows) < 2:
        return 0, []
    _, key_of, per_key = np.unique(codes[rows], return_inverse=True, return_counts=True)
    width = int(np.max(split_codes)) + 1
    cells, per_cell = np.unique(key_of.astype(np.int64) * width + np.asarray(split_codes)[rows], return_counts=True)
    same = np.zeros(len(per_key), np.int64)
    np.add.at(same, cells // width, per_cell * (per_cell - 1) // 2)
    leaks = per_key * (per_key - 1) // 2 - same
    return int(leaks.sum()), [rows[key_of == k].tolist() for k in np.flatnonzero(leaks)[:examples]]


def keys_in_several_splits(keys, split_codes: np.ndarray) -> int:
    """How many distinct keys (e.g. near-duplicate groups) have rows in more than one split."""
    codes, rows = _codes(keys)
    if not len(rows):
        return 0
    cells = np.unique(np.stack([codes[rows], np.asarray(split_codes, np.int64)[rows]], axis=1), axis=0)
    _, per_key = np.unique(cells[:, 0], return_counts=True)
    return int((per_key > 1).sum())


def _split_codes(splits) -> np.ndarray:
    if isinstance(splits, np.ndarray) and splits.dtype.kind in "iu":
        return splits
    return _codes(list(splits))[0]


def cross_split_leaks(splits: Sequence[str], *, hashes: Sequence, near_vectors: np.ndarray | None = None,
                      near_keys: Sequence | None = None, near_distance: float = 0.0,
                      near: np.ndarray | None = None, examples: int = 10) -> dict:
    """The leakage check: exact and near duplicate pairs whose rows landed in different splits.

    ``splits``: each row's split (names or integer codes). ``hashes``: content hashes (any
    hashable, or int64 keys such as :func:`key64`). Near pairs come from ``near`` (index pairs
    found once, by clean) or else from searching ``near_vectors`` within ``near_distance``;
    ``near_keys`` (text) count every pair sharing a key. Exact pairs are counted over every
    pair sharing a hash (not only a star), so the count is the number of leaking pairs.
    """
    codes = _split_codes(splits)
    exact, exact_ex = key_leaks(hashes, codes, examples=examples)
    near_n, near_ex = 0, []
    if near is None and near_vectors is not None and near_distance > 0:
        near = near_pairs(near_vectors, radius=near_distance)
    if near is not None and len(near):
        near = np.asarray(near, dtype=np.int64).reshape(-1, 2)
        crossing = near[codes[near[:, 0]] != codes[near[:, 1]]]
        near_n, near_ex = len(crossing), crossing[:examples].tolist()
    if near_keys is not None:
        n, ex = key_leaks(near_keys, codes, examples=examples)
        near_n, near_ex = near_n + n, near_ex + ex
    return {"exact_pairs": exact, "near_pairs": near_n, "examples": {"exact": exact_ex, "near": near_ex[:examples]}}


def near_pairs_table(ids: Sequence[str], pairs: np.ndarray, distances: np.ndarray | None = None) -> pa.Table:
    """Index pairs over ``ids`` -> the table clean writes beside its manifest (id < other)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    a = np.array([_id(ids, k) for k in pairs[:, 0].tolist()], dtype=object)
    b = np.array([_id(ids, k) for k in pairs[:, 1].tolist()], dtype=object)
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    dist = np.zeros(len(pairs), np.float32) if distances is None else np.asarray(distances, np.float32)
    return pa.table({"id": pa.array(a.tolist(), pa.string()), "other": pa.array(b.tolist(), pa.string()),
                     "distance": pa.array(dist, pa.float32())}, schema=NEAR_PAIRS_SCHEMA)


def write_near_pairs(data_dir: str | os.PathLike, table: pa.Table) -> Path:
    """Write ``near_pairs.parquet`` into a dataset directory atomically (temp, then rename)."""
    import pyarrow.parquet as pq

    from trainwise.components.atomic_io import publish_file

    return publish_file(Path(data_dir) / NEAR_PAIRS_FILE,
                        lambda tmp: pq.write_table(table.cast(NEAR_PAIRS_SCHEMA), tmp))


def read_near_pairs(data_dir: str | os.PathLike) -> pa.Table:
    """The near pairs clean found; a missing file is an error that says how to make it."""
    import pyarrow.parquet as pq

    from trainwise.components.data.contract import DataContractError

    path = Path(data_dir) / NEAR_PAIRS_FILE
    if not path.exists():
        raise DataContractError(f"{path}: missing: clean writes the near-duplicate pairs it found there and split's "
                                "leakage check reads them; re-run clean (`dvc repro clean`)")
    return pq.read_table(path).cast(NEAR_PAIRS_SCHEMA)


def digest_keys(column) -> np.ndarray:
    """int64 content keys from clean's ``digest`` column (16-byte blake2b of each cleaned payload):
    its first 8 bytes, read straight from the Arrow buffer. Equal payloads, equal keys (only
    equality is used), without reading the payload; the odds of a collision are those of
    :func:`key64`."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    if column.type != pa.binary(16):
        raise TypeError(f"a digest column is fixed_size_binary[16], not {column.type}")
    if column.null_count:
        raise ValueError(f"{column.null_count} rows have no digest")
    raw = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * 16:(column.offset + len(column)) * 16]
    return raw.reshape(-1, 16)[:, :8].copy().view("<i8").reshape(-1).astype(np.int64, copy=False)


def signatures(column, modality: str, *, image_shape: list[int] | None = None):
    """(content hashes, near vectors or None, near keys or None) of a *cleaned* payload column.

    The same signatures clean computes, recomputed from the cleaned data (the split stage's
    leakage check uses them).
    """
    from trainwise.components.data.contract import content_hash

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
