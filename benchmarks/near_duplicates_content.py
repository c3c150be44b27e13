"""Near-duplicates by content (issue 26): calibrates and checks the split stage's grouping.

Run through ``python -m benchmarks.near_duplicates --parts photos text scale`` (this module holds the
three content parts; near_duplicates.py keeps the pixel-index measurement, ``--parts pixels``).

- **photos**: real public photos (chandrikadeb7/Face-Mask-Detection, the JPEGs benchmarks/photos_data.py
  picks: no augmented copies), ``--variants`` K variants each with a fixed seed: a random crop keeping
  75-95% of the area, a mirror image for half of them, a resize to 50-100%, a small brightness and
  colour shift (+-10%), a JPEG re-encode at quality 70-95; each variant then decoded by clean's decoder
  (``decode_image``) at each of ``--photo-sizes`` (64: clean's size for photos without ``train.backbone``; 224: with
  an EfficientNet backbone). BEFORE: clean's grouping (16x16 grey embedding, ``NearDuplicateIndex``
  radius 0.05, plus exact pixels). AFTER: ``find_groups`` as the split stage calls it (clean's groups +
  EfficientNet-Lite0 embeddings, cosine >= threshold), for a sweep of thresholds.
- **text**: real public sentences (UCI "sentiment labelled sentences", Kotzias et al. KDD 2015: Yelp,
  Amazon, IMDb reviews, 3,000 sentences) with K edited copies each (case, whitespace, punctuation,
  digits, 1-2 words replaced / inserted / deleted); the original is kept, so a group is K+1 rows.
  BEFORE: clean's groups (equal ``duplicates.text_key``). AFTER: ``find_groups`` (MinHash + LSH over
  normalised character 5-grams, exact Jaccard >= threshold), for a sweep of thresholds.
- **scale**: 200,000 synthetic 1,280-d embeddings (non-negative, low-rank + noise, clustered like
  pooled CNN features, 2% planted near copies) fed to ``EmbeddingIndex`` in batches of 8,192 rows
  (as the split stage does), ``pairs(floor=EmbeddingIndex.search_floor(min_cosine))`` (the floor the split stage
  asks for), in its own subprocess (its ru_maxrss is its own); recall against ``_exact_pairs`` on
  every pair among the first 20,000 rows.

Metrics (per photo / text): *together*: all its variants in one group; *merged*: its group also
holds a variant of another photo; *spanning*: its variants land in more than one split when splits are
assigned by group (``assign_splits``, 70/15/15, seed 0). Targets (issue 26): together >= 99%,
merged <= 2%, spanning <= 1%; scale: <= 60 s on 2 cores, <= 1.5 GB, recall >= 0.99.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
PIXEL_RADIUS = 0.05                      # params.yaml clean.near_duplicate_distance
DEFAULT_COSINE = 0.93   # split.near_duplicates with cosine alone (before the alignment check)
FIRST_JACCARD = 0.6     # the first text method (character 5-gram Jaccard), shown beside the current one
COSINE_SWEEP = (0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97)
TEXT_SWEEP = (0.50, 0.55, 0.60, 0.66, 0.70, 0.75, 0.80)   # min_text_similarity
TEXT_MIN_WORDS = 6   # the targets are scored on sentences of this many words or more (shorter: reported apart)
TARGETS = {"together": 0.99, "merged": 0.02, "spanning": 0.01}
MODEL = "efficientnet_lite0"
TEXT_FILES = ("yelp_labelled.txt", "amazon_cells_labelled.txt", "imdb_labelled.txt")


# ---------------------------------------------------------------------------------------------
# shared: metrics of a grouping against the truth


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def _worker(kind: str, *args: str) -> dict:
    """Run ``kind`` of this module in a fresh interpreter: its wall time and peak RSS are its own."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.near_duplicates_content", kind, *args],
                          capture_output=True, text=True, env=_env(), cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"worker {kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _finish(t0: float, r0, extra: dict) -> None:
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 2),
                      "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                      "peak_rss_mb": round(r1.ru_maxrss / 1024, 1), **extra}))


def score(names: list[str], truth: np.ndarray, *, seed: int = 0) -> dict:
    """Shares of true items (``truth``: each row's item) kept together / merged / spanning splits."""
    names_arr = np.asarray(names)
    splits = np.asarray(assign_splits_of(names, seed=seed))
    items = np.unique(truth)
    items_of_group: dict[str, set] = {}
    for g, t in zip(names, truth.tolist()):
        items_of_group.setdefault(g, set()).add(t)
    together = merged = spanning = 0
    for t in items:
        rows = truth == t
        gs = set(names_arr[rows].tolist())
        together += len(gs) == 1
        merged += any(len(items_of_group[g]) > 1 for g in gs)
        spanning += len(set(splits[rows].tolist())) > 1
    _, sizes = np.unique(names_arr, return_counts=True)
    n = len(items)
    return {"together": round(together / n, 4), "merged": round(merged / n, 4), "spanning": round(spanning / n, 4),
            "groups": int(len(sizes)), "largest_group": int(sizes.max())}


def assign_splits_of(names: list[str], *, seed: int) -> list[str]:
    from trainwise.components.data.splitting import assign_splits

    return assign_splits(names, fractions=FRACTIONS, seed=seed)


def _meets(s: dict) -> bool:
    return (s["together"] >= TARGETS["together"] and s["merged"] <= TARGETS["merged"]
            and s["spanning"] <= TARGETS["spanning"])


def _pct(values: np.ndarray, qs=(0, 1, 5, 10, 50)) -> dict:
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in qs} if len(values) else {}


def _params(*, cosine: float = DEFAULT_COSINE, text: float = 0.6, min_words: int = 5, alignment: float | None = None,
            neighbours: int = 8):
    # split.near_duplicates: the fields find_groups reads (max_group/near_misses: params.yaml defaults)
    return SimpleNamespace(min_cosine=cosine, min_text_similarity=text, min_words=min_words, max_group=50,
                           near_misses=20, min_alignment=alignment, neighbours=neighbours)


def _split_defaults():
    """split.near_duplicates as params.yaml ships it (the schema's defaults; a test keeps them equal)."""
    from trainwise.pipelines.config import NearDuplicateParams

    return NearDuplicateParams()


def _recommend(sweep: list[dict], key: str) -> dict:
    """The threshold in the middle of the widest run of sweep rows that meet every target (ties: lower)."""
    runs, cur = [], []
    for row in sweep:
        if _meets(row):
            cur.append(row)
        else:
            if cur:
                runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    if not runs:   # the fewest items wrong either way: merged with another, or spanning splits
        best = min(sweep, key=lambda r: (r["merged"] + r["spanning"], -r[key]))
        return {key: best[key], "meets_targets": False,
                "why": "no threshold meets every target; the one with the fewest items wrong either way "
                       "(merged with another + spanning splits)"}
    run = max(runs, key=len)
    mid = run[(len(run) - 1) // 2]
    return {key: mid[key], "meets_targets": True, "range_meeting_targets": [run[0][key], run[-1][key]],
            "why": "the middle of the widest range of thresholds that meet every target"}


# ---------------------------------------------------------------------------------------------
# photos


# The folder holds its own near-duplicates, which would count as false merges: files named "<x> copy <n>"
# (copies of one picture), "augmented_image_<n>" (augmented copies), and RMFD-style "<a>_<b>_<person>_<n>"
# frames of one person (often consecutive video frames). One file per person and none of the copies.
_COPY = re.compile(r"( copy|augmented_image)", re.IGNORECASE)
_PERSON = re.compile(r"^\d+_\d+_([a-z]+)_\d+$")


def load_photos(repo: Path, n: int) -> tuple[list[bytes], list[str], np.ndarray]:
    """``n`` JPEGs (half per class) picked as benchmarks/photos_data.py picks them (augmented copies left out,
    order by a hash of the name), also leaving out the folder's own copies and all but one photo per person
    (``_COPY``, ``_PERSON``) and a second file of one stem: bytes, names, labels."""
    from benchmarks.photos_data import AUGMENTED, CLASSES, JPEG, _list, _read

    files = _list(repo)
    data, names, labels = [], [], []
    for c, cls in enumerate(CLASSES):
        picked = [(p, b) for p, b in files if p.startswith(f"dataset/{cls}/") and Path(p).suffix.lower() in JPEG
                  and not AUGMENTED.search(Path(p).stem) and not _COPY.search(Path(p).stem)]
        picked.sort(key=lambda pb: hashlib.sha256(pb[0].encode()).hexdigest())
        got, seen = 0, set()
        for path, blob in picked:
            if got >= n // 2 + (c < n % 2):
                break
            person = _PERSON.match(Path(path).stem)
            key = person.group(1) if person else Path(path).stem
            if key in seen:
                continue
            raw = _read(repo, path, blob)
            if raw is None:
                continue
            seen.add(key)
            data.append(raw)
            names.append(path)
            labels.append(c)
            got += 1
    if len(data) < n:
        raise SystemExit(f"near_duplicates: {repo} gave {len(data)} of the {n} photos asked for (--photos); "
                         "fetch the whole repository: git clone https://github.com/chandrikadeb7/Face-Mask-Detection")
    return data, names, np.asarray(labels, np.int64)


def make_variant(raw: bytes, rng: np.random.Generator, *, mirror: bool) -> tuple[bytes, dict]:
    """One variant of a photo: crop (75-95% of the area), mirror, resize, colour shift, JPEG re-encode."""
    from PIL import Image, ImageEnhance, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")
    w, h = img.size
    area = rng.uniform(0.75, 0.95)
    aspect = rng.uniform(0.9, 1.1)
    cw, ch = min(w, int(round(w * np.sqrt(area * aspect)))), min(h, int(round(h * np.sqrt(area / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if mirror:
        img = ImageOps.mirror(img)
    scale = rng.uniform(0.5, 1.0)
    img = img.resize((max(8, int(cw * scale)), max(8, int(ch * scale))), Image.Resampling.BICUBIC)
    bright, colour = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)
    img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(bright)).enhance(colour)
    quality = int(rng.integers(70, 96))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue(), {"area": round(cw * ch / (w * h), 3), "mirror": mirror, "scale": round(scale, 3),
                            "brightness": round(bright, 3), "colour": round(colour, 3), "quality": quality}


def build_photo_set(repo: Path, *, photos: int, variants: int, size: int, seed: int):
    """(images uint8 (photos*variants, size, size, 3), photo of each row, label of each row, file names)."""
    from trainwise.components.data.images import decode_image

    data, names, labels = load_photos(repo, photos)
    rng = np.random.default_rng(seed)
    images, photo, label, params = [], [], [], []
    for p, raw in enumerate(data):
        flips = rng.permutation([k % 2 == 1 for k in range(variants)])   # half of them mirrored
        for k in range(variants):
            jpeg, how = make_variant(raw, rng, mirror=bool(flips[k]))
            images.append(decode_image(jpeg, size=(size, size), channels=3))
            photo.append(p)
            label.append(labels[p])
            params.append(how)
    return np.stack(images), np.asarray(photo), np.asarray(label), names, params


def _photos_before(images_path: str, out_path: str) -> None:
    """Worker: clean's grouping (exact pixels + 16x16 grey embeddings within PIXEL_RADIUS)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    from trainwise.components.quality.content_groups import union_find_groups
    from trainwise.components.quality.duplicates import NearDuplicateIndex, image_embedding, key_pairs, key64

    images = np.load(images_path)
    with NearDuplicateIndex(radius=PIXEL_RADIUS) as index:
        index.add(np.stack([image_embedding(im) for im in images]))
        pairs, _ = index.pairs()
    exact = key_pairs(np.fromiter((key64(im.tobytes()) for im in images), np.int64, len(images)))
    component = union_find_groups(len(images), np.concatenate([exact, np.asarray(pairs, np.int64).reshape(-1, 2)]))
    np.save(out_path, component)
    _finish(t0, r0, {"pixel_pairs": int(len(pairs))})


def _photos_after(images_path: str, out_path: str, batch: str) -> None:
    """Worker: EfficientNet-Lite0 features (1 thread: one embed replica at embed.cpus_per_replica 1; on
    a busy machine 2 threads ran 3x slower) and every pair over the lowest threshold swept
    (EmbeddingIndex, exact below 20k rows)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    import torch

    from trainwise.components.models.backbones import build_backbone
    from trainwise.components.quality.content_groups import EmbeddingIndex
    from trainwise.components.data.images import images_to_tensor

    torch.set_num_threads(1)
    images = np.load(images_path)
    model = build_backbone(MODEL, True).eval()
    index, embs = EmbeddingIndex(), []
    t_embed = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(images), int(batch)):
            x = model(images_to_tensor(images[s:s + int(batch)])).float().numpy()
            index.add(x)
            embs.append(x)
    t_embed = time.perf_counter() - t_embed
    t_pairs = time.perf_counter()
    found = index.pairs(floor=min(COSINE_SWEEP) - 0.08)
    t_pairs = time.perf_counter() - t_pairs
    np.save(out_path, np.concatenate(embs))
    _finish(t0, r0, {"embed_s": round(t_embed, 2), "images_per_s": round(len(images) / t_embed, 1),
                     "pairs_s": round(t_pairs, 3), "pairs": len(found)})


def _photo_after_groups(ids, exact, before, emb, labels, threshold, *, alignment=None, neighbours=8,
                        thumbnails=None):
    from trainwise.components.quality.content_groups import find_groups

    return find_groups(ids, modality="image", exact_keys=exact, clean_groups=before, texts=None,
                       vectors=(MODEL, iter([(ids, emb)])), no_vectors_note="", pixel_distance=PIXEL_RADIUS,
                       params=_params(cosine=threshold, alignment=alignment, neighbours=neighbours), labels=labels,
                       thumbnails=thumbnails)


ALIGNMENT_SWEEP = (0.72, 0.74, 0.76, 0.78, 0.80, 0.82, 0.84)


def _aligned(ids, exact, before, emb, label, photo, images) -> dict:
    """The split's default: embedding candidates (min_cosine, neighbours) confirmed by pixel alignment, at
    params.yaml's values and over a sweep of min_alignment; wall and peak RSS of the default run (thumbnails
    from the decoded pictures, as the split stage makes them from data/clean)."""
    from trainwise.components.quality.content_groups import align_thumbnail

    nd = _split_defaults()
    cache: dict[int, np.ndarray] = {}

    def thumbnails(rows):
        for r in rows:
            if r not in cache:
                cache[r] = align_thumbnail(images[r])
        return {r: cache[r] for r in rows}

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    g = _photo_after_groups(ids, exact, before, emb, label, nd.min_cosine, alignment=nd.min_alignment,
                            neighbours=nd.neighbours, thumbnails=thumbnails)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    default = {"min_cosine": nd.min_cosine, "neighbours": nd.neighbours, "min_alignment": nd.min_alignment,
               **score(g.names, photo), "candidate_pairs": g.candidates,
               "grouping_wall_s": round(wall, 2),
               "grouping_cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
               "method": g.method}
    sweep = []
    for a in ALIGNMENT_SWEEP:
        ga = _photo_after_groups(ids, exact, before, emb, label, nd.min_cosine, alignment=a,
                                 neighbours=nd.neighbours, thumbnails=thumbnails)
        sweep.append({"min_alignment": a, **score(ga.names, photo)})
    return {"default": default, "sweep": sweep, "recommended": _recommend(sweep, "min_alignment")}


def run_photos(repo: Path, *, photos: int, variants: int, size: int, seed: int, batch: int = 32) -> dict:
    from trainwise.components.quality.duplicates import key64

    t0 = time.perf_counter()
    images, photo, label, files, how = build_photo_set(repo, photos=photos, variants=variants, size=size, seed=seed)
    build_s = time.perf_counter() - t0
    print(f"  photos: {photos} x {variants} variants built and decoded at {size}x{size} in {build_s:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="trainwise-nd-photos-") as tmp:
        ip = str(Path(tmp) / "images.npy")
        np.save(ip, images)
        before_run = _worker("photos-before", ip, str(Path(tmp) / "before.npy"))
        before = np.load(Path(tmp) / "before.npy")
        print(f"  before (pixels): {before_run['wall_s']} s", flush=True)
        after_run = _worker("photos-after", ip, str(Path(tmp) / "emb.npy"), str(batch))
        emb = np.load(Path(tmp) / "emb.npy")
        print(f"  after ({MODEL}): {after_run['wall_s']} s ({after_run['images_per_s']} images/s)", flush=True)
    ids = [f"p{p:04d}v{k}" for p, k in zip(photo.tolist(), np.tile(np.arange(variants), photos).tolist())]
    exact = np.fromiter((key64(im.tobytes()) for im in images), np.int64, len(images))
    before_names = [f"g{c:06d}" for c in before.tolist()]
    before_score = score(before_names, photo)
    sweep = []
    for t in COSINE_SWEEP:
        g = _photo_after_groups(ids, exact, before.astype(np.int64), emb, label, t)
        sweep.append({"min_cosine": t, **score(g.names, photo)})
    # the cosine distribution: what the threshold has to separate
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    same = photo[:, None] == photo[None, :]
    iu = np.triu_indices(len(photo), 1)
    variant_min = np.array([sims[np.ix_(photo == p, photo == p)][np.triu_indices(variants, 1)].min()
                            for p in range(photos)])
    mirrored = np.asarray([h["mirror"] for h in how])
    pair_rows = np.argwhere(same & np.triu(np.ones_like(same), 1).astype(bool))
    flip_differs = mirrored[pair_rows[:, 0]] != mirrored[pair_rows[:, 1]]
    pair_sims = sims[pair_rows[:, 0], pair_rows[:, 1]]
    other = np.where(same | (label[:, None] != label[None, :]), -1.0, sims)      # different photos, same class
    per_photo_other = np.array([other[photo == p].max() for p in range(photos)])
    cross = other[iu]
    top = np.argsort(-cross)[:8]
    closest = [{"a": files[photo[iu[0][k]]], "b": files[photo[iu[1][k]]], "cosine": round(float(cross[k]), 4)}
               for k in top]
    rec = _recommend(sweep, "min_cosine")
    chosen = next(r for r in sweep if r["min_cosine"] == rec["min_cosine"])
    default = next(r for r in sweep if r["min_cosine"] == DEFAULT_COSINE)
    aligned = _aligned(ids, exact, before.astype(np.int64), emb, label, photo, images)
    return {
        "source": "github.com/chandrikadeb7/Face-Mask-Detection dataset/ (JPEGs; its own copies, augmented "
                  "copies and all but one photo per RMFD person left out), half with_mask, half without_mask",
        "photos": photos, "variants": variants, "rows": int(len(photo)), "image_size": size, "seed": seed,
        "variant_recipe": "crop 75-95% of the area (aspect 0.9-1.1), mirror half, resize 50-100%, brightness and "
                          "colour x0.9-1.1, JPEG quality 70-95; decoded by components/data/images.decode_image",
        "build_s": round(build_s, 1),
        "before": {"method": f"16x16 grey pixels, NearDuplicateIndex radius {PIXEL_RADIUS} (clean)", **before_score,
                   **{k: before_run[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}},
        "after": {**aligned["default"], **{k: after_run[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "embed_s",
                                                                      "images_per_s")}},
        "alignment_sweep": aligned["sweep"], "alignment_recommended": aligned["recommended"],
        "cosine_only": {"method": f"{MODEL} embeddings, cosine alone (find_groups with min_alignment null, + "
                                  "clean's groups)", "best": {**chosen, "pairs_s": after_run["pairs_s"]},
                        "at_previous_default": {"min_cosine": DEFAULT_COSINE, **default}},
        "sweep": sweep, "recommended": rec,
        "variant_pair_min_cosine": _pct(variant_min),
        "variant_pair_all_cosine": _pct(pair_sims),
        "variant_pair_cosine_one_mirrored": _pct(pair_sims[flip_differs]),
        "variant_pair_cosine_same_orientation": _pct(pair_sims[~flip_differs]),
        "same_class_other_photo_max_cosine": {**_pct(per_photo_other, (50, 90, 99, 100)),
                                              "max": round(float(per_photo_other.max()), 4)},
        "closest_different_photos": closest,
    }


# ---------------------------------------------------------------------------------------------
# text

_WORD = re.compile(r"[A-Za-z']+")


def load_texts(repo: Path, n: int) -> tuple[list[str], np.ndarray, list[str]]:
    """``n`` sentences (stable pick by hash; distinct by text_key) from the UCI sentiment labelled sentences."""
    from trainwise.components.quality.duplicates import text_key

    rows = []
    for name in TEXT_FILES:
        path = repo / "sentiment labelled sentences" / name
        if path.exists():
            text = path.read_text(encoding="utf-8", errors="replace")
        else:   # a bare git directory
            proc = subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:sentiment labelled sentences/{name}"],
                                  capture_output=True)
            if proc.returncode:
                raise SystemExit(f"near_duplicates: {repo} has no 'sentiment labelled sentences/{name}' (--text-repo): "
                                 "git clone https://github.com/kvrao/sentiment_analysis (or any copy of the UCI "
                                 "'sentiment labelled sentences' folder)")
            text = proc.stdout.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if "\t" in line:
                s, lab = line.rsplit("\t", 1)
                if s.strip() and lab.strip() in ("0", "1"):
                    rows.append((s.strip(), int(lab), name))
    rows.sort(key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())
    seen, picked = set(), []
    for s, lab, name in rows:
        k = text_key(s)
        if k in seen:
            continue
        seen.add(k)
        picked.append((s, lab, name))
        if len(picked) == n:
            break
    return [p[0] for p in picked], np.asarray([p[1] for p in picked]), [p[2] for p in picked]


def edit_text(text: str, rng: np.random.Generator, vocab: list[str]) -> tuple[str, dict]:
    """One edited copy: 1-2 word edits (replace / insert / delete) and 1-3 surface edits (case,
    whitespace, punctuation, digits)."""
    words = text.split()
    n_word = int(rng.integers(1, 3))
    ops = []
    for _ in range(n_word):
        op = rng.choice(["replace", "insert", "delete"]) if len(words) > 2 else "insert"
        k = int(rng.integers(0, len(words))) if words else 0
        if op == "replace":
            words[k] = str(rng.choice(vocab))
        elif op == "insert":
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(vocab)))
        else:
            del words[k]
        ops.append(str(op))
    out = " ".join(words)
    surface = rng.choice(["case", "whitespace", "punctuation", "digits"], size=int(rng.integers(1, 4)), replace=False)
    for s in surface:
        if s == "case":
            out = [out.lower(), out.upper(), out.title(), out.swapcase()][int(rng.integers(0, 4))]
        elif s == "whitespace":
            out = re.sub(" ", lambda m: " " * int(rng.integers(1, 4)) if rng.random() < 0.3 else " ", out)
            out = ("  " if rng.random() < 0.5 else "") + out + (" \n" if rng.random() < 0.5 else "")
        elif s == "punctuation":
            stripped = re.sub(r"[.!?,;:]+", "", out)
            out = stripped + ["!!", "...", "?!", " :)", "."][int(rng.integers(0, 5))] if rng.random() < 0.6 else \
                re.sub(r"[.!?]+", lambda m: ["!", "!!", "..."][int(rng.integers(0, 3))], out)
        elif s == "digits":
            out = re.sub(r"\d+", lambda m: str(int(rng.integers(0, 100))), out) if re.search(r"\d", out) else \
                out + f" {int(rng.integers(1, 11))}/10"
    return out, {"word_edits": ops, "surface": [str(s) for s in surface]}


def _text_groups(texts: list[str], mode: str) -> list[str]:
    """Group names: ``before`` (clean's equal text_key), ``jaccard`` (the first method: character
    5-gram Jaccard >= FIRST_JACCARD, every pair scored exactly) or a min_text_similarity (find_groups)."""
    from trainwise.components.quality.content_groups import find_groups, union_find_groups
    from trainwise.components.quality.duplicates import key64, key_pairs, text_key

    ids = [f"r{k:05d}" for k in range(len(texts))]
    exact = np.fromiter((key64(t.encode()) for t in texts), np.int64, len(texts))
    clean = np.fromiter((key64(text_key(t).encode()) for t in texts), np.int64, len(texts))
    fixed = np.concatenate([key_pairs(exact), key_pairs(clean)])
    if mode == "before":    # clean's groups (equal text_key) and exact copies
        return [f"g{c:06d}" for c in union_find_groups(len(texts), fixed).tolist()]
    if mode == "jaccard":
        jac = _char_jaccard(texts)
        a, b = np.nonzero(np.triu(jac >= FIRST_JACCARD, 1))
        comp = union_find_groups(len(texts), np.concatenate([fixed, np.stack([a, b], 1)]))
        return [f"g{c:06d}" for c in comp.tolist()]
    params = _params(text=float(mode), min_words=_split_defaults().min_words)
    return find_groups(ids, modality="text", exact_keys=exact, clean_groups=clean, texts=texts, vectors=None,
                       no_vectors_note="", pixel_distance=0.0, params=params).names


def _char_jaccard(texts: list[str]) -> np.ndarray:
    """Every pair's Jaccard of character 5-grams of the normalised text (the first text method)."""
    from scipy.sparse import csr_matrix

    from trainwise.components.quality.content_groups import normalise_text

    sets = []
    for t in texts:
        n = normalise_text(t)
        sets.append({n} if len(n) <= 5 else {n[k:k + 5] for k in range(len(n) - 4)})
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for x in sets:
        indices += [vocab.setdefault(g, len(vocab)) for g in x]
        indptr.append(len(indices))
    m = csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(sets), len(vocab)))
    inter = (m @ m.T).toarray()
    size = np.asarray([len(x) for x in sets], np.float32)
    return inter / (size[:, None] + size[None, :] - inter)


def _word_similarity_matrix(texts: list[str]) -> np.ndarray:
    """Every pair's word similarity (1 - word edits / words of the longer text), by brute force."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    from trainwise.components.quality.content_groups import text_words

    words = [text_words(t) for t in texts]
    vocab: dict[str, int] = {}
    # each word as one character: rapidfuzz's string Levenshtein then counts word edits
    coded = ["".join(chr(0x4E00 + vocab.setdefault(w, len(vocab))) for w in ws) for ws in words]
    if len(vocab) > 0x10FFFF - 0x4E00:
        raise SystemExit("near_duplicates: too many distinct words for the brute-force check")
    dist = cdist(coded, coded, scorer=Levenshtein.distance, workers=2, dtype=np.int32)
    lengths = np.asarray([len(w) for w in words])
    longest = np.maximum(np.maximum(lengths[:, None], lengths[None, :]), 1)
    return 1.0 - dist / longest


def _text_worker(path: str, mode: str, out_path: str) -> None:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    texts = json.loads(Path(path).read_text())
    names = _text_groups(texts, mode)
    Path(out_path).write_text(json.dumps(names))
    _finish(t0, r0, {})


def _text_score(names: list[str], item: np.ndarray, keep: np.ndarray) -> dict:
    """score() on all rows, and on the rows whose original sentence has TEXT_MIN_WORDS+ words."""
    long_names = [n for n, k in zip(names, keep) if k]
    return {**score(names, item), "long": score(long_names, item[keep])}


def run_text(repo: Path, *, texts: int, copies: int, seed: int) -> dict:
    from trainwise.components.quality.content_groups import TEXT_MARGIN, text_pairs, text_words

    originals, labels, files = load_texts(repo, texts)
    rng = np.random.default_rng(seed)
    vocab = sorted({w.lower() for t in originals for w in _WORD.findall(t) if len(w) > 2})
    rows, item, edits = [], [], []
    for k, t in enumerate(originals):
        rows.append(t)
        item.append(k)
        edits.append(None)
        for _ in range(copies):
            e, how = edit_text(t, rng, vocab)
            rows.append(e)
            item.append(k)
            edits.append(how)
    item_arr = np.asarray(item)
    words = np.asarray([len(t.split()) for t in originals])
    keep = words[item_arr] >= TEXT_MIN_WORDS
    default = _split_defaults()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="trainwise-nd-text-") as tmp:
        tp = Path(tmp) / "texts.json"
        tp.write_text(json.dumps(rows))
        for mode in ("before", "jaccard", *(str(t) for t in TEXT_SWEEP)):
            run = _worker("text-run", str(tp), mode, str(Path(tmp) / "out.json"))
            runs[mode] = {"names": json.loads((Path(tmp) / "out.json").read_text()), **run}
        print(f"  text: {len(rows)} rows, sweep of {len(TEXT_SWEEP)} thresholds done", flush=True)
    sweep = []
    for t in TEXT_SWEEP:
        r = runs[str(t)]
        sc = _text_score(r["names"], item_arr, keep)
        # _meets / _recommend read the top-level keys: the sentences of TEXT_MIN_WORDS+ words
        sweep.append({"min_text_similarity": t, **sc["long"], "all": {k: sc[k] for k in ("together", "merged",
                                                                                       "spanning")}})
    rec = _recommend(sweep, "min_text_similarity")
    chosen = next(r for r in sweep if r["min_text_similarity"] == rec["min_text_similarity"])
    at_default = next((r for r in sweep if abs(r["min_text_similarity"] - default.min_text_similarity) < 1e-9), None)
    # brute force: every pair's word similarity; the LSH's recall against it (rows of min_words+ words)
    sim = _word_similarity_matrix(rows)
    floor = max(0.05, default.min_text_similarity - TEXT_MARGIN)
    t0 = time.perf_counter()
    found = text_pairs(rows, threshold=default.min_text_similarity, floor=floor, min_words=default.min_words)
    pairs_s = time.perf_counter() - t0
    nw = np.asarray([len(text_words(t)) for t in rows])
    iu = np.triu_indices(len(rows), 1)
    got = {tuple(p) for p in found.pairs.tolist()}

    def recall(at: float) -> dict:
        eligible = (np.minimum(nw[iu[0]], nw[iu[1]]) >= default.min_words) & (sim[iu] >= at - 1e-6)
        truth = set(zip(iu[0][eligible].tolist(), iu[1][eligible].tolist()))
        return {"at": round(at, 4), "pairs_brute_force": len(truth), "pairs_found": len(got & truth),
                "recall": round(len(got & truth) / max(1, len(truth)), 4)}

    same = item_arr[:, None] == item_arr[None, :]
    copy_min = np.array([sim[np.ix_(item_arr == k, item_arr == k)][np.triu_indices(copies + 1, 1)].min()
                         for k in range(len(originals))])
    other = np.where(same, -1.0, sim)
    long_pair = np.minimum(nw[:, None], nw[None, :]) >= default.min_words
    per_text_other = np.array([np.where(long_pair, other, -1.0)[item_arr == k].max() for k in range(len(originals))])
    cross = np.where(long_pair, other, -1.0)[iu]
    top = np.argsort(-cross)[:8]
    closest = [{"a": rows[iu[0][k]], "b": rows[iu[1][k]], "word_similarity": round(float(cross[k]), 4)} for k in top]
    by_len = {}
    rec_arr = np.asarray(runs[str(rec["min_text_similarity"])]["names"])
    jac_arr = np.asarray(runs["jaccard"]["names"])
    for lo, hi in ((1, 5), (6, 9), (10, 19), (20, 1000)):
        ks = np.flatnonzero((words >= lo) & (words <= hi))
        if len(ks):
            ok = sum(len(set(rec_arr[item_arr == k].tolist())) == 1 for k in ks)
            ok_j = sum(len(set(jac_arr[item_arr == k].tolist())) == 1 for k in ks)
            by_len[f"{lo}-{hi} words"] = {"texts": int(len(ks)), "together": round(ok / len(ks), 4),
                                          "together_first_method": round(ok_j / len(ks), 4)}

    def side(mode: str, method: str, **extra) -> dict:
        sc = _text_score(runs[mode]["names"], item_arr, keep)
        return {"method": method, **sc["long"], "all": {k: sc[k] for k in ("together", "merged", "spanning")},
                **extra, **{k: runs[mode][k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}}

    rt = rec["min_text_similarity"]
    return {
        "source": "UCI 'sentiment labelled sentences' (Kotzias et al., KDD 2015: Yelp, Amazon, IMDb review "
                  "sentences), from github.com/kvrao/sentiment_analysis; distinct by text_key, picked by hash",
        "texts": len(originals), "copies": copies, "rows": len(rows), "seed": seed,
        "words_per_text": _pct(words.astype(float), (5, 50, 95)),
        "scored_on": f"sentences of {TEXT_MIN_WORDS}+ words ({int((words >= TEXT_MIN_WORDS).sum())} of "
                     f"{len(originals)}) with their copies; 'all' adds the shorter ones, where 1-2 changed words "
                     "are most of the sentence",
        "long_texts": int((words >= TEXT_MIN_WORDS).sum()),
        "edit_recipe": "each copy: 1-2 word edits (replace with a corpus word / insert one / delete one) and 1-3 "
                       "of: case (lower/upper/title/swapcase), whitespace, punctuation, digits changed or added",
        "before": side("before", "equal text_key (clean: case, punctuation, whitespace folded)"),
        "first_method": side("jaccard", f"character 5-gram Jaccard >= {FIRST_JACCARD} (every pair scored)",
                             min_jaccard=FIRST_JACCARD),
        "after": side(str(rt), f"word similarity >= {rt}, texts of {default.min_words}+ words (MinHash + LSH, "
                               "find_groups)", min_text_similarity=rt, min_words=default.min_words),
        "after_at_default": at_default and {"min_text_similarity": default.min_text_similarity, **at_default},
        "sweep": sweep, "recommended": rec, "together_by_length": by_len,
        "lsh": {"threshold": recall(default.min_text_similarity), "floor": recall(floor),
                "reported_below_floor": int(sum(1 for p in got if sim[p] < floor - 1e-6)),
                "pairs_s": round(pairs_s, 2)},
        "copy_pair_min_similarity": _pct(copy_min),
        "other_text_max_similarity": {**_pct(per_text_other, (50, 90, 99, 100)),
                                      "max": round(float(per_text_other.max()), 4)},
        "closest_different_texts": closest,
    }


# ---------------------------------------------------------------------------------------------
# scale

SCALE_DIM, SCALE_RANK, SCALE_CLUSTERS, SCALE_COPY_EVERY = 1280, 64, 1000, 50


def copy_source(row: int, *, seed: int) -> int | None:
    """The earlier row that ``row`` is a near copy of (every SCALE_COPY_EVERY-th row: 2%, spread over
    the file so that any sample of leading rows holds its share), else None."""
    if row % SCALE_COPY_EVERY != SCALE_COPY_EVERY - 1:
        return None
    return int(np.random.default_rng([seed, row, 2]).integers(0, row))


def synthetic_batch(start: int, stop: int, *, seed: int) -> np.ndarray:
    """Rows ``start:stop`` of the synthetic set: ReLU(low-rank cluster structure + noise), like pooled CNN
    features (non-negative; distinct rows of one cluster reach cosine ~0.85); every 50th row a near copy
    of an earlier row (its latent + small noise, fresh pixel noise: cosine ~0.94-0.97 to it).

    Deterministic per row (seeded by row number), so any batch can be regenerated alone."""
    g = np.random.default_rng(seed)
    basis = g.standard_normal((SCALE_RANK, SCALE_DIM)).astype(np.float32) / np.sqrt(SCALE_RANK)
    centres = g.standard_normal((SCALE_CLUSTERS, SCALE_RANK)).astype(np.float32)
    bias = g.uniform(0.0, 0.6, SCALE_DIM).astype(np.float32)
    latents = np.empty((stop - start, SCALE_RANK), np.float32)
    noise = np.empty((stop - start, SCALE_DIM), np.float32)
    for k, row in enumerate(range(start, stop)):
        src = copy_source(row, seed=seed)
        base = row if src is None else src
        while src is not None:          # a copy of a copy: the original's latent
            base, src = src, copy_source(src, seed=seed)
        r = np.random.default_rng([seed, base])
        latents[k] = centres[r.integers(0, SCALE_CLUSTERS)] * 1.3 + r.standard_normal(SCALE_RANK, np.float32)
        if base != row:   # a near copy: the same picture, re-encoded / cropped a little
            r = np.random.default_rng([seed, row, 1])
            latents[k] += 0.12 * r.standard_normal(SCALE_RANK, np.float32)
        noise[k] = r.standard_normal(SCALE_DIM, np.float32)
    return np.maximum(latents @ basis + bias + 0.35 * noise, 0.0)


def _scale_worker(n: str, seed: str, floor: str, sample: str, out_path: str) -> None:
    n_, seed_, floor_, sample_ = int(n), int(seed), float(floor), int(sample)
    import faiss  # imported by pairs(); loaded before the clock starts  # noqa: F401

    from trainwise.components.quality.content_groups import EmbeddingIndex

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    index, gen_s, add_s = EmbeddingIndex(expected_rows=n_), 0.0, 0.0  # as the split stage builds it
    for s in range(0, n_, 8192):       # batches as the split stage reads the embed file
        t = time.perf_counter()
        x = synthetic_batch(s, min(n_, s + 8192), seed=seed_)
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t
    t = time.perf_counter()
    found = index.pairs(floor=floor_)
    pairs_s = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(out_path, np.concatenate([found.pairs, found.sims[:, None].astype(np.float64)], axis=1))
    print(json.dumps({"wall_s": round(add_s + pairs_s, 2), "add_s": round(add_s, 2), "pairs_s": round(pairs_s, 2),
                      "generate_s": round(gen_s, 1),
                      "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                      "peak_rss_mb": round(r1.ru_maxrss / 1024, 1), "pairs": len(found)}))


def _neighbours_worker(n: str, seed: str, k: str, floor: str, out_path: str) -> None:
    """The split's image candidates at scale: EmbeddingIndex.neighbours (k nearest a row, cosine >= floor)."""
    n_, seed_ = int(n), int(seed)
    import faiss  # noqa: F401  (loaded before the clock starts)

    from trainwise.components.quality.content_groups import EmbeddingIndex

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    index, add_s = EmbeddingIndex(expected_rows=n_), 0.0
    for s in range(0, n_, 8192):
        x = synthetic_batch(s, min(n_, s + 8192), seed=seed_)
        t = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t
    t = time.perf_counter()
    found = index.neighbours(k=int(k), floor=float(floor))
    nb_s = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    planted = {(copy_source(c, seed=seed_), c) for c in range(SCALE_COPY_EVERY - 1, n_, SCALE_COPY_EVERY)}
    got = {tuple(p) for p in found.pairs.tolist()}
    print(json.dumps({"wall_s": round(add_s + nb_s, 2), "neighbours_s": round(nb_s, 2),
                      "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
                      "peak_rss_mb": round(r1.ru_maxrss / 1024, 1), "candidate_pairs": len(found),
                      "candidates_a_row": round(2 * len(found) / n_, 2), "planted_copies": len(planted),
                      "planted_found": round(len(planted & got) / max(1, len(planted)), 4)}))


def _scale_exact(n: str, seed: str, floor: str, sample: str, out_path: str) -> None:
    from trainwise.components.quality.content_groups import _exact_pairs

    x = synthetic_batch(0, int(sample), seed=int(seed))
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    t = time.perf_counter()
    found = _exact_pairs(unit, np.ones(len(x), bool), floor=float(floor))
    np.save(out_path, np.concatenate([found.pairs, found.sims[:, None].astype(np.float64)], axis=1))
    # distribution of distinct rows' cosines in the sample (how hard the data is for the index)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(x), 20000), rng.integers(0, len(x), 20000)
    cos = np.einsum("ij,ij->i", unit[a].astype(np.float32), unit[b].astype(np.float32))
    print(json.dumps({"exact_s": round(time.perf_counter() - t, 2), "pairs": len(found),
                      "random_pair_cosine": _pct(cos[a != b], (50, 99)),
                      "random_pair_cosine_max": round(float(cos[a != b].max()), 4)}))


def _recall(ivf: np.ndarray, ref: np.ndarray, *, sample: int, floor: float) -> tuple[float, int]:
    in_sample = (ivf[:, 0] < sample) & (ivf[:, 1] < sample)
    got = {(int(a), int(b)) for a, b in ivf[in_sample, :2]}
    want = {(int(a), int(b)) for a, b, s in ref if s >= floor}
    return round(len(got & want) / max(1, len(want)), 4), len(want)


def run_scale(*, rows: int, seed: int, threshold: float, sample: int) -> dict:
    """EmbeddingIndex at the floor the split stage searches (a little under the threshold, for the near
    misses: ``EmbeddingIndex.search_floor``) and, to show what that margin costs, at the threshold itself."""
    from trainwise.components.quality.content_groups import EmbeddingIndex

    probe = EmbeddingIndex()
    probe.rows = rows
    floor = round(probe.search_floor(threshold), 4)
    load0 = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="trainwise-nd-scale-") as tmp:
        exact = _worker("scale-exact", str(rows), str(seed), str(floor), str(sample), str(Path(tmp) / "exact.npy"))
        ref = np.load(Path(tmp) / "exact.npy")
        for f in (floor, threshold):
            run = _worker("scale-run", str(rows), str(seed), str(f), str(sample), str(Path(tmp) / "ivf.npy"))
            ivf = np.load(Path(tmp) / "ivf.npy")
            run["recall_in_sample"], run["exact_pairs_in_sample"] = _recall(ivf, ref, sample=sample, floor=f)
            run["recall_in_sample_at_threshold"], run["exact_pairs_in_sample_at_threshold"] = \
                _recall(ivf, ref, sample=sample, floor=threshold)
            planted = {(copy_source(c, seed=seed), c) for c in range(SCALE_COPY_EVERY - 1, rows, SCALE_COPY_EVERY)}
            at = {(int(a), int(b)) for a, b, s in ivf if s >= threshold}
            run["planted_copies"] = len(planted)
            run["planted_found_at_threshold"] = round(len(planted & at) / len(planted), 4)
            runs[f] = run
            print(f"  scale: {rows} rows, floor {f}: {run['wall_s']} s ({run['cpu_s']} s CPU), {run['peak_rss_mb']} MB",
                  flush=True)
    load1 = os.getloadavg()
    new, tight = runs[floor], runs[threshold]

    def ok(r, by):
        return r[by] <= (60 if by == "wall_s" else 120) and r["peak_rss_mb"] <= 1536 and r["recall_in_sample"] >= 0.99

    return {
        "rows": rows, "dim": SCALE_DIM, "seed": seed, "threshold": threshold, "search_floor": floor,
        "structure": f"ReLU(rank-{SCALE_RANK} latent from {SCALE_CLUSTERS} clusters + noise), every "
                     f"{SCALE_COPY_EVERY}th row a near copy of an earlier row (same latent + small noise)",
        "index": "EmbeddingIndex defaults (exact_max_rows 20000, components 96, nprobe 12), batches of 8192",
        **{k: new[k] for k in ("wall_s", "add_s", "pairs_s", "cpu_s", "peak_rss_mb", "pairs", "generate_s",
                               "recall_in_sample", "exact_pairs_in_sample", "recall_in_sample_at_threshold",
                               "exact_pairs_in_sample_at_threshold", "planted_copies", "planted_found_at_threshold")},
        "at_threshold_floor": {k: tight[k] for k in ("wall_s", "pairs_s", "cpu_s", "peak_rss_mb", "pairs",
                                                     "recall_in_sample", "exact_pairs_in_sample")},
        "sample_rows": sample, "planted_copies_in_sample": len(range(SCALE_COPY_EVERY - 1, sample, SCALE_COPY_EVERY)),
        "exact_s_on_sample": exact["exact_s"], "random_pair_cosine": exact["random_pair_cosine"],
        "random_pair_cosine_max": exact["random_pair_cosine_max"],
        "load_average_before": [round(v, 1) for v in load0], "load_average_after": [round(v, 1) for v in load1],
        "cpus": os.cpu_count(),
        "target": {"wall_s": 60, "rss_mb": 1536, "recall": 0.99, "ok": ok(new, "wall_s"),
                   "ok_by_cpu_time": ok(new, "cpu_s"), "ok_at_threshold_floor": ok(tight, "wall_s"),
                   "ok_at_threshold_floor_by_cpu_time": ok(tight, "cpu_s")},
    }


# ---------------------------------------------------------------------------------------------
# printing


def print_photos(r: dict) -> None:
    print(f"\nPHOTOS: {r['photos']} real photos x {r['variants']} variants = {r['rows']} rows at "
          f"{r['image_size']}x{r['image_size']} (seed {r['seed']}); targets: together >= 99%, merged <= 2%, spanning <= 1%")
    b, a, c = r["before"], r["after"], r["cosine_only"]
    print(f"  {'':<58}{'together':>10}{'merged':>9}{'spanning':>10}{'largest':>9}")
    for name, x in (("before: " + b["method"][:50], b),
                    (f"cosine alone, min_cosine {c['at_previous_default']['min_cosine']}", c["at_previous_default"]),
                    (f"after: cosine >= {a['min_cosine']} ({a['neighbours']} nearest) + alignment >= "
                     f"{a['min_alignment']}", a)):
        print(f"  {name:<58}{x['together']:>10.1%}{x['merged']:>9.1%}{x['spanning']:>10.1%}{x['largest_group']:>9}")
    print(f"  before: {b['wall_s']} s wall, {b['peak_rss_mb']:.0f} MB; after: embed {a['embed_s']} s "
          f"({a['images_per_s']} images/s, peak {a['peak_rss_mb']:.0f} MB), grouping (candidates, thumbnails, "
          f"alignment of {a.get('candidate_pairs', '?')} pairs) {a['grouping_wall_s']} s wall, {a['grouping_cpu_s']} CPU-s")
    print("  min_alignment sweep (at the default min_cosine and neighbours):")
    _sweep(r["alignment_sweep"], "min_alignment")
    print(f"  recommended min_alignment: {r['alignment_recommended']['min_alignment']} "
          f"({r['alignment_recommended']['why']})")
    print(f"  cosine alone, sweep ({MODEL}, find_groups with clean's pixel groups):")
    _sweep(r["sweep"], "min_cosine")
    v, o = r["variant_pair_min_cosine"], r["same_class_other_photo_max_cosine"]
    print(f"  lowest cosine among a photo's variant pairs, over photos: min {v['p0']}  p1 {v['p1']}  p5 {v['p5']}  "
          f"p10 {v['p10']}  median {v['p50']}")
    m, u = r["variant_pair_cosine_one_mirrored"], r["variant_pair_cosine_same_orientation"]
    print(f"  variant pairs, one of them mirrored: p1 {m['p1']}  p5 {m['p5']}  median {m['p50']};  both the same way: "
          f"p1 {u['p1']}  p5 {u['p5']}  median {u['p50']}")
    print(f"  highest cosine to another photo of the same class, over photos: median {o['p50']}  p90 {o['p90']}  "
          f"p99 {o['p99']}  max {o['max']}")
    print("  closest different photos (same class):")
    for c in r["closest_different_photos"][:5]:
        print(f"    {c['cosine']:.4f}  {c['a']}  ~  {c['b']}")
    print(f"  recommended min_cosine: {r['recommended']['min_cosine']} ({r['recommended']['why']})")


def print_text(r: dict) -> None:
    print(f"\nTEXT: {r['texts']} real sentences + {r['copies']} edited copies each = {r['rows']} rows "
          f"(words per sentence: median {r['words_per_text']['p50']:.0f}, p5 {r['words_per_text']['p5']:.0f}, "
          f"p95 {r['words_per_text']['p95']:.0f}); scored on {r['scored_on']}")
    print(f"  {'':<58}{'together':>10}{'merged':>9}{'spanning':>10}{'largest':>9}{'wall s':>8}   all sentences")
    for key in ("before", "first_method", "after"):
        s, a = r[key], r[key]["all"]
        print(f"  {s['method'][:57]:<58}{s['together']:>10.1%}{s['merged']:>9.1%}{s['spanning']:>10.1%}"
              f"{s['largest_group']:>9}{s['wall_s']:>8.1f}   {a['together']:.1%} / {a['merged']:.1%} / {a['spanning']:.1%}")
    print("  word-similarity sweep (find_groups, min_words as params.yaml):")
    _sweep(r["sweep"], "min_text_similarity")
    v, o, q = r["copy_pair_min_similarity"], r["other_text_max_similarity"], r["lsh"]
    print(f"  lowest word similarity among a sentence's copies: p1 {v['p1']}  p5 {v['p5']}  p10 {v['p10']}  "
          f"median {v['p50']}")
    print(f"  highest to another sentence (both {r['after']['min_words']}+ words): median {o['p50']}  p90 {o['p90']}  "
          f"p99 {o['p99']}  max {o['max']}")
    for key, what in (("threshold", "grouped"), ("floor", "near misses too")):
        x = q[key]
        print(f"  LSH candidates vs every pair by brute force, similarity >= {x['at']} ({what}): {x['pairs_found']} of "
              f"{x['pairs_brute_force']} (recall {x['recall']})")
    print(f"  {q['reported_below_floor']} pairs reported below the floor; text_pairs took {q['pairs_s']} s")
    print("  together by length (recommended threshold; first method): " +
          ", ".join(f"{k}: {v['together']:.1%} ({v['together_first_method']:.1%}) of {v['texts']}"
                    for k, v in r["together_by_length"].items()))
    print("  closest different sentences:")
    for c in r["closest_different_texts"][:5]:
        print(f"    {c['word_similarity']:.4f}  {c['a'].strip()[:60]!r}  ~  {c['b'].strip()[:60]!r}")
    print(f"  recommended min_text_similarity: {r['recommended']['min_text_similarity']} ({r['recommended']['why']})")


def _side_by_side(r: dict, key: str) -> None:
    b, a, d = r["before"], r["after"], r["after_at_default"]
    print(f"  {'':<44}{'together':>10}{'merged':>9}{'spanning':>10}{'largest':>9}{'wall s':>9}{'peak RSS MB':>13}")
    for name, s, wall, rss in (("before: " + b["method"][:36], b, b["wall_s"], b["peak_rss_mb"]),
                               (f"after, today's default {key} {d[key]}", d, a["wall_s"], a["peak_rss_mb"]),
                               (f"after, recommended {key} {a[key]}", a, a["wall_s"], a["peak_rss_mb"])):
        print(f"  {name:<44}{s['together']:>10.1%}{s['merged']:>9.1%}{s['spanning']:>10.1%}{s['largest_group']:>9}"
              f"{wall:>9.1f}{rss:>13.0f}")


def _sweep(rows: list[dict], key: str) -> None:
    long = "together_10_words_plus" in rows[0]
    print(f"    {key:>11}{'together':>10}{'merged':>9}{'spanning':>10}{'groups':>8}{'largest':>9}"
          f"{'together, 10+ words' if long else '':>{21 if long else 0}}  meets targets")
    for s in rows:
        extra = f"{s['together_10_words_plus']:>21.1%}" if long else ""
        print(f"    {s[key]:>11.2f}{s['together']:>10.1%}{s['merged']:>9.1%}{s['spanning']:>10.1%}{s['groups']:>8}"
              f"{s['largest_group']:>9}{extra}  {'yes' if _meets(s) else 'no'}")


def print_scale(r: dict) -> None:
    t, q = r["target"], r["at_threshold_floor"]
    print(f"\nSCALE: {r['rows']} x {r['dim']} synthetic embeddings ({r['structure']}); {r['index']}; "
          f"load average {r['load_average_before']} -> {r['load_average_after']} on {r['cpus']} CPUs (shared machine)")
    print(f"  {'search floor':<34}{'wall s':>8}{'pairs s':>9}{'CPU s':>8}{'peak RSS MB':>13}{'pairs':>9}"
          f"{'recall':>8}{'of exact':>10}")
    for name, x in ((f"{r['search_floor']} (split: min_cosine - margin)", r),
                    (f"{r['threshold']} (min_cosine itself)", q)):
        print(f"  {name:<34}{x['wall_s']:>8.1f}{x['pairs_s']:>9.1f}{x['cpu_s']:>8.1f}{x['peak_rss_mb']:>13.0f}"
              f"{x['pairs']:>9}{x['recall_in_sample']:>8.4f}{x['exact_pairs_in_sample']:>10}")
    print(f"  recall is against exact search over the first {r['sample_rows']} rows ({r['planted_copies_in_sample']} "
          f"planted copies among them); planted copies found >= {r['threshold']}: {r['planted_found_at_threshold']:.4f}; "
          f"random pairs' cosine: median {r['random_pair_cosine']['p50']}, p99 {r['random_pair_cosine']['p99']}, "
          f"max {r['random_pair_cosine_max']}")
    print(f"  target (<= 60 s, <= 1.5 GB, recall >= 0.99) at the split's floor: {'OK' if t['ok'] else 'MISSED'} by wall "
          f"time, {'OK' if t['ok_by_cpu_time'] else 'MISSED'} by CPU time (<= 120 CPU-s on 2 cores); at the threshold: "
          f"{'OK' if t['ok_at_threshold_floor'] else 'MISSED'} by wall, "
          f"{'OK' if t['ok_at_threshold_floor_by_cpu_time'] else 'MISSED'} by CPU")


def text_scale_rows(repo: Path, n: int, *, copies: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` rows for the text scale part: sentences of 4-25 words drawn from the UCI sentences' word
    frequencies (Zipf-like: common words shared across rows, as in real text) with ``copies`` edited
    copies each (edit_text)."""
    from collections import Counter

    originals, _, _ = load_texts(repo, 3000)
    cnt = Counter(w.lower() for t in originals for w in t.split())
    words = sorted(cnt)
    freq = np.asarray([cnt[w] for w in words], float)
    rng = np.random.default_rng([seed, 7])
    base = [" ".join(rng.choice(words, size=int(rng.integers(4, 26)), p=freq / freq.sum()))
            for _ in range(n // (copies + 1))]
    vocab = sorted({w for t in base for w in t.split() if len(w) > 2})
    rows, item = [], []
    for k, t in enumerate(base):
        rows.append(t)
        item.append(k)
        for _ in range(copies):
            rows.append(edit_text(t, rng, vocab)[0])
            item.append(k)
    return rows, np.asarray(item)


def _text_scale_worker(repo: str, n: str, seed: str) -> None:
    """text_pairs at the split's default threshold and floor on ``n`` rows, timed alone."""
    from trainwise.components.quality.content_groups import TEXT_MARGIN, text_pairs

    rows, item = text_scale_rows(Path(repo), int(n), seed=int(seed))
    nd = _split_defaults()
    # the process's high-water mark before the search (imports, the rows): what text_pairs adds is the rest
    before_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    found = text_pairs(rows, threshold=nd.min_text_similarity, floor=max(0.05, nd.min_text_similarity - TEXT_MARGIN),
                       min_words=nd.min_words)
    grouped = found.pairs[found.sims >= nd.min_text_similarity]
    _finish(t0, r0, {"rows": len(rows), "peak_rss_before_search_mb": before_mb, "pairs": len(found), "grouped_pairs": int(len(grouped)),
                     "grouped_pairs_within_one_sentence": round(float((item[grouped[:, 0]] == item[grouped[:, 1]]).mean())
                                                               if len(grouped) else 1.0, 4)})


WORKERS = {"neighbours-run": _neighbours_worker, "photos-before": _photos_before, "photos-after": _photos_after, "text-run": _text_worker,
           "scale-run": _scale_worker, "scale-exact": _scale_exact,
           "text-scale": _text_scale_worker}

if __name__ == "__main__":
    WORKERS[sys.argv[1]](*sys.argv[2:])
