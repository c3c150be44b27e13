"""Disk held by data/ + DVC's cache after `dvc repro split` of a photo folder, per cache.type.

DVC's default (`reflink,copy`) copies every output into `.dvc/cache` wherever the filesystem has
no reflinks (ext4, most Linux disks): the outputs are on disk twice. The project's committed
`.dvc/config` links them instead (docs/scale.md, "DVC's cache: links, not copies"). This runs the
same photo folder through ingest -> clean -> embed -> split once per cache type, in fresh copies of
the project, then forces a re-run (`dvc repro -f split`, which re-runs every stage and writes the
same bytes again: with `copy` anywhere in the list DVC keeps such outputs as copies), and counts
the bytes of data/ and .dvc/cache with each hard-linked file once (as `du` does).

    python -m benchmarks.dvc_cache [--per-class 100]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._project import scratch_project
from benchmarks._results import RESULTS, write_results
from tests.photo_variants import sample_photo, variant

COMMITTED = "committed"  # the project's .dvc/config as it is
# label -> cache.type set in the copy (None: unset, DVC's default)
MODES = {"dvc_default": None, "reflink_first": "reflink,hardlink,symlink,copy", COMMITTED: COMMITTED}


def make_photos(out: Path, per_class: int, *, seed: int = 0) -> None:
    """Two classes of JPEGs, each a random crop / flip / size / brightness of one of scikit-learn's
    sample photos (no download): distinct files, real photo content and JPEG sizes."""
    rng = np.random.default_rng(seed)
    for name in ("china.jpg", "flower.jpg"):
        img, folder = sample_photo(name), out / name.split(".")[0]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            variant(img, area=float(rng.uniform(0.3, 0.9)), flip=bool(rng.integers(2)),
                    quality=int(rng.integers(80, 95)), brightness=float(rng.uniform(0.8, 1.2)),
                    width=int(rng.integers(480, 640)), dx=float(rng.uniform()), dy=float(rng.uniform())
                    ).save(folder / f"{i:04d}.jpg", quality=90)


def disk_bytes(*dirs: Path) -> int:
    """Bytes of the files under ``dirs``, a hard-linked file counted once; symlinks count nothing."""
    seen, total = set(), 0
    for d in dirs:
        for p in d.rglob("*"):
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def footprint(root: Path, input_bytes: int) -> dict:
    data = disk_bytes(root / "data")
    total = disk_bytes(root / "data", root / ".dvc" / "cache")
    return {"data_mb": round(data / 2**20, 2), "cache_extra_mb": round((total - data) / 2**20, 2),
            "total_mb": round(total / 2**20, 2), "x_input": round(total / input_bytes, 2)}


def run_mode(cache_type: str | None, photos: Path, input_bytes: int) -> dict:
    root, env = scratch_project({"ingest": {"source": "image_folder", "path": str(photos)}},
                                prefix="trainwise-bench-dvc-cache-")
    try:
        if cache_type is None:
            subprocess.run(["dvc", "config", "--unset", "cache.type"], cwd=root, env=env, capture_output=True)
        elif cache_type != COMMITTED:
            subprocess.run(["dvc", "config", "cache.type", cache_type], cwd=root, env=env, check=True)
        used = subprocess.run(["dvc", "config", "cache.type"], cwd=root, env=env, capture_output=True,
                              text=True).stdout.strip() or "(unset: reflink,copy)"
        row = {"cache_type": used}
        for key, args in (("repro", ["dvc", "repro", "split"]), ("forced_rerun", ["dvc", "repro", "-f", "split"])):
            t0 = time.perf_counter()
            proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{' '.join(args)} failed ({used}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            row[key] = {**footprint(root, input_bytes), "wall_s": round(time.perf_counter() - t0, 1)}
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100, help="photos per class (2 classes)")
    args = ap.parse_args()
    photos = Path(tempfile.mkdtemp(prefix="trainwise-bench-photos-"))
    try:
        make_photos(photos, args.per_class)
        input_bytes = disk_bytes(photos)
        rows = {}
        for label, cache_type in MODES.items():
            rows[label] = run_mode(cache_type, photos, input_bytes)
            r = rows[label]
            print(f"{label:14s} {r['cache_type']:30s} after repro: data {r['repro']['data_mb']:7.2f} MB + cache "
                  f"{r['repro']['cache_extra_mb']:7.2f} MB = {r['repro']['x_input']:.2f}x input;  after "
                  f"repro -f: {r['forced_rerun']['x_input']:.2f}x", flush=True)
    finally:
        shutil.rmtree(photos, ignore_errors=True)
    default, ours = rows["dvc_default"], rows[COMMITTED]
    result = {"photos": 2 * args.per_class, "input_mb": round(input_bytes / 2**20, 2), "modes": rows,
              "saving": round(default["repro"]["total_mb"] / ours["repro"]["total_mb"], 2),
              "saving_after_rerun": round(default["forced_rerun"]["total_mb"] / ours["forced_rerun"]["total_mb"], 2)}
    print(f"committed cache.type holds {result['saving']}x less than DVC's default after dvc repro "
          f"({result['saving_after_rerun']}x after a forced re-run)")
    write_results(RESULTS / "dvc_cache.json", result)


if __name__ == "__main__":
    main()
