"""Near-duplicates found by content, for grouping rows before the split.

Pixels at 16x16 (``duplicates.image_embedding``) catch re-encodes and small brightness shifts, but
not a crop, a mirror image or a resize with another framing: variants of one photo then land in
train *and* test. Here two rows are near duplicates when

- **images**: their backbone embeddings (``train.backbone``, or EfficientNet-Lite0 features used
  only for grouping) are among each other's ``neighbours`` nearest with cosine >= ``min_cosine``
  (candidates), and their pictures *align*: the centre of one, high-passed 32x32 grey, is found in
  the other at 0.8-1.2x scale, mirrored or not, with normalised cross-correlation >= ``min_alignment``.
  Pooled CNN features alone cannot tell the crops of one photo from a photo of a similar scene
  (cosines overlap: benchmarks/near_duplicates.py); the alignment can, because variants of one photo
  share their pixels up to a crop, a mirror, a resize and a colour shift. With ``min_alignment: null``
  cosine alone decides (then ``min_cosine`` ~0.93). docs/data-quality.md explains the calibration;
- **text**: their normalised texts (case, whitespace, punctuation folded, every number read as
  ``0``) are at most a few words apart: the word-level edit distance is at most ``1 -
  min_text_similarity`` of the longer text's words (0.6: two words in five inserted, deleted or
  replaced). Texts under ``min_words`` words group only when equal once normalised ("very good"
  and "very bad" are one word apart). Candidates come from MinHash + LSH over word sets
  (datasketch); each is then checked exactly (rapidfuzz). Character 5-gram Jaccard, the first
  method, kept half as many edited copies together (benchmarks/near_duplicates.py).

Search is sub-quadratic where it has to be. Up to ``exact_max_rows`` rows, every pair is scored
(blocked matrix products over unit vectors: exact). Beyond, the vectors are projected on their top
principal components (an orthonormal projection never lengthens a distance, so every pair within
the radius stays a candidate) and faiss' inverted-file index returns the candidates, each then
checked against its full vectors (kept as float16: 2.5 KiB a 1,280-d row). The only approximation
is the inverted file's probe count (recall measured against exact search in the benchmark).

Besides the pairs at or above the threshold, the search keeps the pairs a ``margin`` below it: the
closest pairs that were *not* grouped are what a user needs to judge the threshold by eye.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

# Pairs this far below the threshold are kept as "near misses" (shown, never grouped). Beyond
# exact_max_rows the inverted-file search pays for a wide radius (200k x 1,280-d: 161 s at 0.08 below
# 0.93, 14 s at the threshold itself; benchmarks/near_duplicates.py), so it looks only a little below.
COSINE_MARGIN = 0.08
COSINE_MARGIN_LARGE = 0.02
TEXT_MARGIN = 0.16
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[^\w\s]*\d+)*")


@dataclass
class Pairs:
    """Index pairs (i < j) with their similarity, sorted by similarity (highest first)."""

    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    sims: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))

    @classmethod
    def of(cls, pairs, sims) -> "Pairs":
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        sims = np.asarray(sims, np.float32).reshape(-1)
        lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
        pairs = np.stack([lo, hi], axis=1)
        if len(pairs):  # one entry per pair, highest similarity first (ties: by index, deterministic)
            order = np.lexsort((pairs[:, 1], pairs[:, 0], -sims))
            pairs, sims = pairs[order], sims[order]
            _, first = np.unique(pairs, axis=0, return_index=True)
            keep = np.sort(first)
            pairs, sims = pairs[keep], sims[keep]
        return cls(pairs, sims)

    def at_least(self, threshold: float) -> "Pairs":
        ok = self.sims >= threshold
        return Pairs(self.pairs[ok], self.sims[ok])

    def below(self, threshold: float) -> "Pairs":
        ok = self.sims < threshold
        return Pairs(self.pairs[ok], self.sims[ok])

    def __len__(self) -> int:
        return len(self.pairs)


class EmbeddingIndex:
    """Every pair of rows whose embeddings have cosine >= a floor, with bounded memory.

    Rows are added in batches (:meth:`add`); a row whose vector is all zero or not finite cannot
    be compared: it is counted in :attr:`unusable` and never paired (the caller says so).
    """

    def __init__(self, *, exact_max_rows: int = 20_000, components: int = 96, nprobe: int = 12, seed: int = 0,
                 expected_rows: int | None = None):
        """``expected_rows``: when known, the float16 store is allocated once (no copy at the end, which
        briefly held the vectors twice: 512 MB more at 200k rows of 1,280)."""
        self.exact_max_rows, self.components, self.nprobe, self.seed = exact_max_rows, components, nprobe, seed
        self._full: list[np.ndarray] = []
        self._store: np.ndarray | None = None
        self._expected = expected_rows
        self.rows = 0
        self.unusable: list[int] = []

    def add(self, vectors: np.ndarray) -> None:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (rows, dim), got shape {x.shape}")
        norms = np.linalg.norm(x, axis=1)
        bad = ~np.isfinite(norms) | (norms < 1e-12)
        self.unusable += (np.flatnonzero(bad) + self.rows).tolist()
        x = np.where(bad[:, None], 0.0, x / np.where(bad, 1.0, norms)[:, None]).astype(np.float16)
        if self._expected is not None and self._store is None:
            self._store = np.empty((max(self._expected, len(x)), x.shape[1]), np.float16)
        if self._store is not None and self.rows + len(x) <= len(self._store):
            self._store[self.rows:self.rows + len(x)] = x
        else:
            if self._store is not None:  # more rows than announced: fall back to a list of batches
                self._full, self._store, self._expected = [self._store[:self.rows]], None, None
            self._full.append(x)
        self.rows += len(x)

    def search_floor(self, threshold: float) -> float:
        """How far below ``threshold`` to search: near misses cost little in exact search, much in the inverted file."""
        return threshold - (COSINE_MARGIN if self.rows <= self.exact_max_rows else COSINE_MARGIN_LARGE)

    def pairs(self, *, floor: float) -> Pairs:
        """Pairs with cosine >= ``floor`` (exact up to ``exact_max_rows`` rows, inverted file above)."""
        if self.rows < 2:
            return Pairs()
        if self._store is not None:
            full = self._store[:self.rows]
        else:
            full = np.concatenate(self._full) if len(self._full) > 1 else self._full[0]
            self._full = [full]
        usable = np.ones(self.rows, bool)
        usable[self.unusable] = False
        if self.rows <= self.exact_max_rows:
            return _exact_pairs(full, usable, floor=floor)
        return _ivf_pairs(full, usable, floor=floor, components=self.components, nprobe=self.nprobe, seed=self.seed)


    def neighbours(self, *, k: int, floor: float) -> Pairs:
        """Each row's ``k`` nearest rows with cosine >= ``floor`` (a pair is kept when either row has the
        other among its ``k``): the candidates that :func:`alignment_scores` then checks. Exact up to
        ``exact_max_rows`` rows; beyond, the inverted file proposes ``2 k`` a row, checked on the full vectors."""
        if self.rows < 2 or k < 1:
            return Pairs()
        full = self._store[:self.rows] if self._store is not None else \
            (np.concatenate(self._full) if len(self._full) > 1 else self._full[0])
        usable = np.ones(self.rows, bool)
        usable[self.unusable] = False
        if self.rows <= self.exact_max_rows:
            return _exact_neighbours(full, usable, k=k, floor=floor)
        return _ivf_neighbours(full, usable, k=k, floor=floor, components=self.components, nprobe=self.nprobe,
                               seed=self.seed)


def _exact_neighbours(full: np.ndarray, usable: np.ndarray, *, k: int, floor: float, block: int = 1024) -> Pairs:
    x = full.astype(np.float32)
    x[~usable] = 0.0
    k = min(k, len(x) - 1)
    found_p, found_s = [], []
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ x.T
        rows = np.arange(start, start + len(sims))
        sims[rows - start, rows] = -np.inf                      # not a row's own neighbour
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
            np.tile(np.arange(sims.shape[1]), (len(sims), 1))
        s = np.take_along_axis(sims, top, axis=1)
        i, c = np.nonzero(s >= floor)
        found_p.append(np.stack([rows[i], top[i, c]], axis=1))
        found_s.append(s[i, c])
    return Pairs.of(np.concatenate(found_p), np.concatenate(found_s))


def _ivf_neighbours(full: np.ndarray, usable: np.ndarray, *, k: int, floor: float, components: int, nprobe: int,
                    seed: int, block: int = 8192) -> Pairs:
    rows = np.flatnonzero(usable)
    index, proj = _ivf_index(full, rows, components=components, nprobe=nprobe, seed=seed)
    want = min(2 * k + 1, len(rows))
    # a projected distance never exceeds the true one: proposals farther than the floor's radius in the
    # projection are farther in truth too, and skip the exact check (most of them, on varied data)
    radius2 = float(2.0 * (1.0 - floor)) * 1.01 + 1e-4
    found_p, found_s = [], []
    for s in range(0, len(rows), block):
        dist, hits = index.search(proj[s:s + block], want)
        i = np.repeat(np.arange(s, s + len(hits)), want)
        j = hits.reshape(-1).astype(np.int64)
        keep = (j >= 0) & (j != i) & (dist.reshape(-1) <= radius2)
        a, b = rows[i[keep]], rows[j[keep]]
        queries = full[rows[s:s + block]].astype(np.float32)      # each query converted once, not once a proposal
        local = i[keep] - s
        sims = np.concatenate([np.einsum("ij,ij->i", queries[local[c:c + (1 << 13)]],
                                         full[b[c:c + (1 << 13)]].astype(np.float32))
                               for c in range(0, len(a), 1 << 13)] or [np.empty(0, np.float32)])
        # the k best by the full vectors among the proposals (~84 MB a check block at 1,280-d), then the floor
        order = np.lexsort((-sims, a))
        a, b, sims = a[order], b[order], sims[order]
        first = np.r_[0, np.flatnonzero(np.diff(a)) + 1]
        rank = np.arange(len(a)) - np.repeat(first, np.diff(np.r_[first, len(a)]))
        ok = (rank < k) & (sims >= floor)
        found_p.append(np.stack([a[ok], b[ok]], axis=1))
        found_s.append(sims[ok])
    if not found_p:
        return Pairs()
    return Pairs.of(np.concatenate(found_p), np.concatenate(found_s))


def _exact_pairs(full: np.ndarray, usable: np.ndarray, *, floor: float, block: int = 2048) -> Pairs:
    x = full.astype(np.float32)
    x[~usable] = 0.0
    found_p, found_s = [], []
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ x[start:].T        # only j >= i: each pair once
        i, j = np.nonzero(sims >= floor)
        j = j + start
        i = i + start
        keep = i < j
        found_p.append(np.stack([i[keep], j[keep]], axis=1))
        found_s.append(sims[i[keep] - start, j[keep] - start])
    return Pairs.of(np.concatenate(found_p), np.concatenate(found_s))


def _ivf_pairs(full: np.ndarray, usable: np.ndarray, *, floor: float, components: int, nprobe: int,
               seed: int, block: int = 8192) -> Pairs:
    rows = np.flatnonzero(usable)
    index, proj = _ivf_index(full, rows, components=components, nprobe=nprobe, seed=seed, block=block)
    # unit vectors: cosine >= floor  <=>  squared distance <= 2 (1 - floor); float16 rounding margin
    radius2 = float(2.0 * (1.0 - floor)) * 1.01 + 1e-4
    found_p, found_s = [], []
    for s in range(0, len(rows), block):
        lims, _, hits = index.range_search(proj[s:s + block], radius2)
        counts = np.diff(lims).astype(np.int64)
        i = np.repeat(np.arange(s, s + len(counts)), counts)
        j = hits.astype(np.int64)
        keep = i < j
        i, j = i[keep], j[keep]
        for c in range(0, len(i), 1 << 13):   # exact check on the full vectors: ~84 MB a block at 1,280-d
            a, b = rows[i[c:c + (1 << 13)]], rows[j[c:c + (1 << 13)]]
            sims = np.einsum("ij,ij->i", full[a].astype(np.float32), full[b].astype(np.float32))
            ok = sims >= floor
            found_p.append(np.stack([a[ok], b[ok]], axis=1))
            found_s.append(sims[ok])
    if not found_p:
        return Pairs()
    return Pairs.of(np.concatenate(found_p), np.concatenate(found_s))


def _ivf_index(full: np.ndarray, rows: np.ndarray, *, components: int, nprobe: int, seed: int, block: int = 8192):
    """faiss inverted file over the usable rows projected on their top principal components, and the projections."""
    import faiss

    n, dim = full.shape
    rng = np.random.default_rng(seed)
    sample = full[np.sort(rng.choice(rows, size=min(len(rows), 8192), replace=False))].astype(np.float32)
    mean = sample.mean(axis=0)
    k = min(components, dim)
    # Top principal directions of a sample (eigenvectors of its covariance): an orthonormal basis,
    # so projected distances never exceed true ones, whatever the sample.
    centred = sample - mean
    _, vecs = np.linalg.eigh(centred.T @ centred)
    basis = np.ascontiguousarray(vecs[:, ::-1][:, :k], dtype=np.float32)
    del sample, centred
    proj = np.empty((len(rows), k), np.float32)
    for s in range(0, len(rows), block):
        proj[s:s + block] = (full[rows[s:s + block]].astype(np.float32) - mean) @ basis
    # ~4 sqrt(n) lists (faiss' rule of thumb), at most 2048, and >= 39 training points a list (faiss' minimum)
    nlist = int(max(1, min(2048, 4 * np.sqrt(len(rows)), len(rows) // 39)))
    quantizer = faiss.IndexFlatL2(k)
    index = faiss.IndexIVFFlat(quantizer, k, nlist)
    index.cp.seed = seed
    train = proj[np.sort(rng.choice(len(rows), size=min(len(rows), 30 * nlist), replace=False))]
    index.train(train)
    index.add(proj)
    index.nprobe = min(nprobe, nlist)
    return index, proj


# Pixel alignment of two pictures (the check on image candidates). The centre ALIGN_TEMPLATE x
# ALIGN_TEMPLATE of one picture at ALIGN_GRID x ALIGN_GRID is searched in the other, resized to each of
# ALIGN_LEVELS (0.8-1.2x: two crops keeping 75-95% of a photo differ by at most ~1.15x) and mirrored or
# not, at every offset. Both are grey and high-passed (minus a Gaussian blur of 2/32 of the side): the
# coarse layout that distinct photos of one setting share (a centred face on a plain background) is
# removed, what remains is the picture's own detail. The score is the best normalised
# cross-correlation, in [-1, 1]; the higher of the two directions counts.
ALIGN_GRID = 32
ALIGN_TEMPLATE = 20
ALIGN_LEVELS = (26, 27, 29, 30, 32, 34, 35, 37, 38)
ALIGN_THUMB = 64          # what the caller keeps a row: grey, this many pixels a side, uint8 (4 KB; 48 lost ~1 pt)


def align_thumbnail(pixels: np.ndarray) -> np.ndarray:
    """(h, w, c) uint8 picture -> the ALIGN_THUMB x ALIGN_THUMB grey uint8 that :func:`alignment_scores` reads."""
    from PIL import Image

    img = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    return np.asarray(img.convert("L").resize((ALIGN_THUMB, ALIGN_THUMB), Image.Resampling.BOX), np.uint8)


def _level(thumb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    g = np.asarray(Image.fromarray(thumb).resize((size, size), Image.Resampling.BOX), np.float32)
    return g - gaussian_filter(g, sigma=2.0 * size / ALIGN_GRID, mode="nearest")


def _template(thumb: np.ndarray) -> np.ndarray:
    """The centre of the ALIGN_GRID level, zero mean and unit norm (zeros for a flat picture: it matches nothing)."""
    o = (ALIGN_GRID - ALIGN_TEMPLATE) // 2
    t = _level(thumb, ALIGN_GRID)[o:o + ALIGN_TEMPLATE, o:o + ALIGN_TEMPLATE].reshape(-1)
    t = t - t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 0.5 * ALIGN_TEMPLATE else np.zeros_like(t)


def _best_match(thumb: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """For each template (m, T*T), its best normalised cross-correlation anywhere in ``thumb`` over the
    levels and the mirror."""
    from numpy.lib.stride_tricks import sliding_window_view

    t2 = ALIGN_TEMPLATE * ALIGN_TEMPLATE
    best = np.full(len(templates), -1.0, np.float32)
    for size in ALIGN_LEVELS:
        g = _level(thumb, size)
        for view in (g, g[:, ::-1]):
            w = sliding_window_view(np.ascontiguousarray(view), (ALIGN_TEMPLATE, ALIGN_TEMPLATE)).reshape(-1, t2)
            s1 = w.sum(axis=1)
            spread = np.sqrt(np.maximum(np.einsum("ij,ij->i", w, w) - s1 * s1 / t2, 1e-6))
            best = np.maximum(best, ((w @ templates.T) / spread[:, None]).max(axis=0))
    return best


def alignment_scores(pairs: np.ndarray, thumbs: dict[int, np.ndarray]) -> np.ndarray:
    """Each pair's alignment score (see ALIGN_*), from ``thumbs`` (row -> :func:`align_thumbnail`).
    Work is grouped by row: a row's search levels are built once for all its partners."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    scores = np.full(len(pairs), -1.0, np.float32)
    if not len(pairs):
        return scores
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):   # many small products: BLAS threads only contend (14x slower on 2 busy cores)
        return _alignment_scores(pairs, thumbs, scores)


def _alignment_scores(pairs: np.ndarray, thumbs: dict[int, np.ndarray], scores: np.ndarray) -> np.ndarray:
    templates = {r: _template(thumbs[r]) for r in np.unique(pairs).tolist()}
    partners: dict[int, list[tuple[int, int]]] = {}
    for k, (a, b) in enumerate(pairs.tolist()):
        partners.setdefault(a, []).append((k, b))
        partners.setdefault(b, []).append((k, a))
    for row, found in partners.items():
        got = _best_match(thumbs[row], np.stack([templates[o] for _, o in found]))
        ks = np.fromiter((k for k, _ in found), np.int64, len(found))
        np.maximum.at(scores, ks, got)
    return scores


def normalise_text(text: str) -> str:
    """Case, whitespace, punctuation folded; every number (digits with separators between them:
    ``0906-1701``, ``7/10``, ``3.5``) becomes one ``0``."""
    folded = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(_PUNCT.sub(" ", _NUMBER.sub(" 0 ", folded)).split())


def text_words(text: str) -> list[str]:
    """The normalised text's words (:func:`normalise_text`)."""
    return normalise_text(text).split()


def word_similarity(a: str, b: str) -> float:
    """1 - (word edits from one normalised text to the other) / (words in the longer one).

    Word-level Levenshtein distance (a word inserted, deleted or replaced is one edit): 0.75 is one
    word in four changed. 1.0 for two texts equal after :func:`normalise_text`.
    """
    from rapidfuzz.distance import Levenshtein

    wa, wb = text_words(a), text_words(b)
    longest = max(len(wa), len(wb))
    return 1.0 if longest == 0 else 1.0 - Levenshtein.distance(wa, wb) / longest


def text_pairs(texts: list[str], *, threshold: float, floor: float | None = None, min_words: int = 5,
               num_perm: int = 128, seed: int = 0) -> Pairs:
    """Pairs of texts whose :func:`word_similarity` is >= ``floor`` (default ``threshold``), and
    pairs equal once normalised.

    Texts under ``min_words`` words (in either of the two) pair only when their normalised texts
    are equal: "very good" and "very bad" are one word apart and say opposite things. Candidates
    come from MinHash signatures of each text's word set + LSH banding (datasketch), in about linear
    time: ``e`` edits of the longer text's ``n`` words leave a word-set Jaccard of at least
    (n - e) / (n + e) = f / (2 - f) at word similarity f, and the LSH is tuned a little under that
    bound at ``threshold`` (0.43 at 0.6). Pairs between ``floor`` and ``threshold`` (the near misses
    a user judges the threshold by) are those the same candidates hold. Each candidate's word edit
    distance is computed exactly (rapidfuzz) after a length filter (e >= the difference in length),
    so no pair under ``floor`` is reported; recall against every pair: benchmarks/near_duplicates.py.
    """
    from rapidfuzz.distance import Levenshtein

    from trainwise.components.quality.duplicates import key64, key_pairs

    floor = threshold if floor is None else min(floor, threshold)
    words = [text_words(t) for t in texts]
    if len(words) < 2:
        return Pairs()
    # equal normalised texts, of any length: one key a row
    same = key_pairs(np.fromiter((key64(" ".join(w).encode()) for w in words), np.int64, len(words)))
    found_p, found_s = [same], [np.ones(len(same), np.float32)]
    long_rows = np.asarray([k for k, w in enumerate(words) if len(w) >= min_words], np.int64)
    if len(long_rows) >= 2 and floor < 1.0:
        cand = _lsh_candidates([words[k] for k in long_rows.tolist()],
                               jaccard=max(0.05, threshold / (2 - threshold) - 0.05), num_perm=num_perm, seed=seed)
        cand = long_rows[cand]
        n_words = np.fromiter((len(w) for w in words), np.int64, len(words))
        la, lb = n_words[cand[:, 0]], n_words[cand[:, 1]]
        cand = cand[np.minimum(la, lb) >= floor * np.maximum(la, lb)]   # edits >= the difference in length
        for start in range(0, len(cand), 65536):     # a block at a time: no Python list of every candidate
            block = cand[start:start + 65536]
            sims = np.fromiter((1.0 - Levenshtein.distance(words[a], words[b]) / max(len(words[a]), len(words[b]))
                                for a, b in block.tolist()), np.float32, len(block))
            keep = sims >= floor - 1e-6
            found_p.append(block[keep])
            found_s.append(sims[keep])
    return Pairs.of(np.concatenate(found_p), np.concatenate(found_s))


def _lsh_candidates(word_lists: list[list[str]], *, jaccard: float, num_perm: int, seed: int,
                    block: int = 4096) -> np.ndarray:
    """Row pairs (i < j) whose word sets collide in some LSH band: MinHash signatures (datasketch)
    cut into ``b`` bands of ``r`` values, ``b`` and ``r`` as datasketch's MinHashLSH picks them for
    ``jaccard``. Banded here with numpy (a sort per band) instead of MinHashLSH's dictionaries,
    which held 1.3 GB at 100k texts; memory is the signatures (1 KB a row) and the candidates."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=jaccard, num_perm=num_perm)
    bands, r = lsh.b, lsh.r
    n = len(word_lists)
    keys = np.empty((n, bands), np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    for start in range(0, n, block):
        chunk = word_lists[start:start + block]
        sig = np.stack([m.hashvalues for m in MinHash.bulk([[w.encode() for w in set(ws)] for ws in chunk],
                                                           num_perm=num_perm, seed=seed)]).astype(np.uint64)
        band = sig[:, :bands * r].reshape(len(chunk), bands, r)
        h = np.zeros((len(chunk), bands), np.uint64)
        with np.errstate(over="ignore"):
            for j in range(r):
                h = (h * mult) ^ band[:, :, j]
        keys[start:start + len(chunk)] = h
    codes = []
    for j in range(bands):
        order = np.argsort(keys[:, j], kind="stable")
        sorted_keys = keys[order, j]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for size in np.unique(sizes[sizes > 1]).tolist():   # buckets of one size at a time, vectorised
            members = np.sort(order[starts[sizes == size][:, None] + np.arange(size)], axis=1)
            a, b = np.triu_indices(size, 1)
            codes.append((members[:, a] * n + members[:, b]).ravel())
        if sum(len(c) for c in codes) > 4_000_000:   # dedupe as it goes: a pair collides in several bands
            codes = [_sorted_unique(np.concatenate(codes))]
    codes = _sorted_unique(np.concatenate(codes)) if codes else np.empty(0, np.int64)
    return np.stack([codes // n, codes % n], axis=1)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique took 35 s on 40M int64 here)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def union_find_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Each row's component number (0..n-1 labels, not contiguous) under ``pairs``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def splitting_threshold(n: int, pairs: Pairs, *, max_group: int) -> float | None:
    """The lowest threshold at which no group exceeds ``max_group`` rows, or None if none does now.

    Kruskal over the pairs, most similar first: the first pair that would join two groups into one
    larger than ``max_group`` has similarity s; a threshold just above s forms only the groups built
    before it, all within the cap.
    """
    parent = {}
    size = {}

    def find(a):
        root = a
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(a, a) != root:
            parent[a], a = root, parent[a]
        return root

    for (a, b), s in zip(pairs.pairs.tolist(), pairs.sims.tolist()):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        sa, sb = size.get(ra, 1), size.get(rb, 1)
        if sa + sb > max_group:
            return float(s)
        parent[rb] = ra
        size[ra] = sa + sb
    return None


@dataclass
class Grouping:
    """Every row's near-duplicate group and what the search saw (for the manifest, log and report)."""

    names: list[str]                 # each row's group name: the smallest id in its group
    component: np.ndarray            # each row's group number
    pairs: Pairs                     # content pairs at or above the threshold (row numbers)
    near_misses: Pairs               # the closest pairs under it whose rows are in different groups
    checks: list[str]                # what was checked, in words
    kind: str | None                 # "cosine" | "alignment" | "word similarity" | None (no content search)
    model: str | None
    threshold: float | None
    max_group: int
    split_at: float | None           # a threshold above this keeps every group within max_group
    unusable: int = 0                # rows whose vector was NaN / zero (grouped by exact content only)
    notes: list[str] = field(default_factory=list)
    candidates: int = 0              # content pairs examined (images with alignment: the pairs aligned)

    @property
    def method(self) -> str:
        return "; ".join(self.checks)

    def sizes(self) -> np.ndarray:
        return np.bincount(self.component) if len(self.component) else np.zeros(0, np.int64)

    def over_cap(self) -> list[tuple[str, int]]:
        sizes = self.sizes()
        first = {}
        for k, c in enumerate(self.component.tolist()):
            if sizes[c] > self.max_group and c not in first:
                first[c] = self.names[k]
        return sorted(((name, int(sizes[c])) for c, name in first.items()), key=lambda t: -t[1])

    def metrics(self) -> dict:
        sizes = self.sizes()
        multi = sizes[sizes > 1]
        return {"split/groups/multi_row": int(len(multi)), "split/groups/rows_in_groups": int(multi.sum()),
                "split/groups/largest": int(sizes.max()) if len(sizes) else 0,
                "split/groups/over_max_group": len(self.over_cap()),
                "split/groups/content_pairs": len(self.pairs),
                "split/groups/unusable_vectors": self.unusable, "split/groups/candidate_pairs": self.candidates}

    def summary(self, ids: list[str], splits: list[str], *, sample_groups: int = 8, members: int = 8) -> dict:
        """The manifest's ``near_duplicate_groups``: method, counts, the pairs nearest the threshold
        and a sample of the groups the content search formed (weakest links first)."""
        m = self.metrics()
        sample, seen = [], set()
        for (a, b), s in sorted(zip(self.pairs.pairs.tolist(), self.pairs.sims.tolist()), key=lambda t: t[1]):
            c = int(self.component[a])
            if c in seen:
                continue
            seen.add(c)
            rows = np.flatnonzero(self.component == c)[:members].tolist()
            sample.append({"group": self.names[a], "rows": int((self.component == c).sum()), "weakest": round(s, 4),
                           "ids": [ids[r] for r in rows], "splits": sorted({splits[r] for r in rows})})
            if len(sample) >= sample_groups:
                break
        return {"method": self.method, "kind": self.kind, "model": self.model, "threshold": self.threshold,
                "max_group": self.max_group, "groups": m["split/groups/multi_row"],
                "rows_in_groups": m["split/groups/rows_in_groups"], "largest_group": m["split/groups/largest"],
                "over_max_group": [{"group": g, "rows": n} for g, n in self.over_cap()],
                "split_threshold": self.split_at, "unusable_vectors": self.unusable, "notes": self.notes,
                "near_misses": [{"id": ids[a], "other": ids[b], "similarity": round(float(s), 4),
                                 "splits": [splits[a], splits[b]]}
                                for (a, b), s in zip(self.near_misses.pairs.tolist(), self.near_misses.sims.tolist())],
                "sample": sample}

    def describe(self) -> list[str]:
        """The lines the split stage prints."""
        m = self.metrics()
        lines = [f"near-duplicates checked: {self.method}",
                 f"groups: {m['split/groups/multi_row']} of 2+ rows holding {m['split/groups/rows_in_groups']} rows; "
                 f"largest {m['split/groups/largest']} rows"]
        if len(self.near_misses):
            s = float(self.near_misses.sims[0])
            lines.append(f"closest pair not grouped: {self.kind} {s:.3f} (threshold {self.threshold}); "
                         f"{len(self.near_misses)} such pairs in the manifest to judge the threshold by eye")
        for name, n in self.over_cap()[:3]:
            param = {"cosine": "min_cosine", "word similarity": "min_text_similarity", "alignment": "min_alignment"}.get(self.kind, "")
            how = (f"split.near_duplicates.{param} above {self.split_at:.4f} would keep every group within "
                   f"{self.max_group}"
                   if self.split_at is not None else "it is held together by exact or pixel duplicates")
            lines.append(f"WARNING: group {name} has {n} rows (> split.near_duplicates.max_group {self.max_group}); "
                         f"kept in one split; {how}")
        lines += self.notes
        return lines


def find_groups(ids: list[str], *, modality: str, exact_keys: np.ndarray, clean_groups: np.ndarray,
                texts: list[str] | None, vectors, no_vectors_note: str, pixel_distance: float, params,
                labels: np.ndarray | None = None, thumbnails=None) -> Grouping:
    """Group rows by exact content, clean's groups and near-duplicates by content.

    ``vectors``: None or (model name, iterator of (ids, float32 array) batches) for images;
    ``texts``: the rows' texts for text; ``params``: ``split.near_duplicates`` (min_cosine,
    min_alignment, neighbours, min_text_similarity, min_words, max_group, near_misses); ``thumbnails``: for images,
    a function from row numbers to {row: :func:`align_thumbnail`} (the pictures the candidates are
    aligned on); without it, or with ``min_alignment`` None, cosine alone decides.
    """
    from trainwise.components.data.contract import DataContractError
    from trainwise.components.quality.duplicates import key_pairs

    n = len(ids)
    checks = ["exact copies (content hash)"]
    notes: list[str] = []
    content, kind, model, threshold, unusable = Pairs(), None, None, None, 0
    if modality == "image" and vectors is not None:
        model, batches = vectors
        position = {i: k for k, i in enumerate(ids)}
        order: list[int] = []
        index = EmbeddingIndex(expected_rows=n)
        for batch_ids, x in batches:
            try:
                order += [position[i] for i in batch_ids]
            except KeyError as err:
                raise DataContractError(f"the embeddings hold row {err.args[0]} that the cleaned data does not: embed "
                                        "ran on other data; re-run it (`dvc repro embed`)") from None
            index.add(x)
        if len(order) != n or len(set(order)) != n:
            raise DataContractError(f"the embeddings cover {len(set(order))} of the {n} cleaned rows: embed ran on "
                                    "other data; re-run it (`dvc repro embed`)")
        back = np.asarray(order, np.int64)
        unusable = len(index.unusable)
        min_alignment = getattr(params, "min_alignment", None)
        if min_alignment is not None and thumbnails is not None:
            k, floor = int(params.neighbours), float(params.min_cosine)
            found = index.neighbours(k=k, floor=floor)
            cand = back[found.pairs] if len(found) else np.empty((0, 2), np.int64)
            thumbs = thumbnails(np.unique(cand).tolist()) if len(cand) else {}
            missing = sorted({int(r) for r in np.unique(cand).tolist() if r not in thumbs})
            ok = ~np.isin(cand, missing).any(axis=1) if missing else np.ones(len(cand), bool)
            scores = np.full(len(cand), -1.0, np.float32)
            scores[ok] = alignment_scores(cand[ok], thumbs)
            content = Pairs.of(cand, scores)
            kind, threshold = "alignment", float(min_alignment)
            checks.append(f"near-duplicates by {model} embeddings (cosine >= {floor:g}, {k} nearest a row) whose "
                          f"pictures align (the centre of one found in the other at 0.8 to 1.2 times its scale, mirrored or not: "
                          f"correlation of high-passed grey >= {threshold:g})")
            if missing:
                notes.append(f"{len(missing)} rows had no picture to align (e.g. {ids[missing[0]]}): their "
                             "embedding candidates were not grouped")
        else:
            kind, threshold = "cosine", float(params.min_cosine)
            found = index.pairs(floor=max(0.0, index.search_floor(threshold)))
            content = Pairs.of(back[found.pairs], found.sims) if len(found) else Pairs()
            checks.append(f"near-duplicates by {model} embeddings (cosine >= {threshold:g})")
        if unusable:
            notes.append(f"{unusable} rows have no usable embedding (NaN or all zero): they are grouped by exact "
                         "content and pixels only")
    elif modality == "text" and texts is not None:
        kind, model, threshold = "word similarity", "word edits", float(params.min_text_similarity)
        min_words = int(params.min_words)
        content = text_pairs(texts, threshold=threshold, floor=max(0.05, threshold - TEXT_MARGIN), min_words=min_words)
        checks.append(f"near-duplicates by normalised words (case, spacing, punctuation, numbers folded): texts of "
                      f"{min_words}+ words with word similarity >= {threshold:g} (at most "
                      f"{1 - threshold:.0%} of the longer text's words inserted, deleted or replaced; MinHash + LSH "
                      f"candidates); shorter texts only when equal")
    if modality == "image" and pixel_distance > 0:
        checks.append(f"by pixels (16x16 grey, distance <= {pixel_distance:g})")
    if modality == "image" and vectors is None:
        notes.append("no content features for images" + (f" ({no_vectors_note})" if no_vectors_note else "") +
                     ": crops and mirror images of one photo are not found; set train.backbone or embed.grouping")
    grouped = content.at_least(threshold) if threshold is not None else Pairs()
    fixed = np.concatenate([key_pairs(np.asarray(exact_keys)), key_pairs(np.asarray(clean_groups))])
    component = union_find_groups(n, np.concatenate([fixed, grouped.pairs]))
    best: dict[int, str] = {}
    for k, c in enumerate(component.tolist()):
        if c not in best or ids[k] < best[c]:
            best[c] = ids[k]
    names = [best[c] for c in component.tolist()]
    misses = content.below(threshold) if threshold is not None else Pairs()
    if len(misses):
        cross = component[misses.pairs[:, 0]] != component[misses.pairs[:, 1]]
        misses = Pairs(misses.pairs[cross][:params.near_misses], misses.sims[cross][:params.near_misses])
    sizes = np.bincount(component) if n else np.zeros(0, np.int64)
    split_at = None
    if len(sizes) and sizes.max() > params.max_group and len(grouped):
        split_at = splitting_threshold(n, Pairs(np.concatenate([fixed, grouped.pairs]),
                                                np.concatenate([np.full(len(fixed), np.inf, np.float32),
                                                                grouped.sims])), max_group=params.max_group)
        # identical content (similarity 1) cannot be split by any threshold
        split_at = None if split_at is None or not np.isfinite(split_at) or split_at >= 0.9999 else split_at
    if labels is not None and len(grouped):
        mixed = len({int(c) for c in component[grouped.pairs[:, 0]][labels[grouped.pairs[:, 0]] !=
                                                                    labels[grouped.pairs[:, 1]]].tolist()})
        if mixed:
            notes.append(f"{mixed} content groups mix classes (the same picture under two labels, or a threshold "
                         "too low: see the near misses)")
    return Grouping(names=names, component=component, pairs=grouped, near_misses=misses, checks=checks, kind=kind,
                    model=model, threshold=threshold, max_group=params.max_group, split_at=split_at,
                    unusable=unusable, notes=notes, candidates=len(content))
