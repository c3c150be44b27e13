"""Disk footprint of a photo folder through the pipeline: the payload written once vs once per stage.

A photo folder of N JPEGs (real photos: crops, mirror images, colour shifts and JPEG re-encodes of
the photos scikit-learn ships, at 320-480 px, two classes; fixed seed) goes through
`dvc repro audit` (ingest -> clean at 224x224x3 -> embed -> split -> audit) in a scratch copy of
this repository at two commits, side by side in one run:

- before: ``--before`` (default: the commit before split and audit became extensions), where
  split and audit rewrite every row's decoded pixels;
- decoded once (``--decoded-once``, optional): a commit where clean wrote the decoded pixels once and
  split and audit were extensions (7dc1cc9);
- after: the working tree, where clean keeps the files' bytes where ingest wrote them (data/clean
  extends data/ingest) and readers decode them.

Reported per commit: bytes of data/ and of .dvc/cache (``du``: hard links counted once), their
sum as a multiple of the JPEGs, and each stage's wall time (``cost/wall_s``). ``embed.grouping`` is
off and there is no backbone, so the numbers are about the data contract, not the network.

    python -m benchmarks.photo_scale [--sizes 2000] [--before 3077c6b] [--decoded-once 7dc1cc9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._results import RESULTS, write_results

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "clean", "embed", "split", "audit")


def make_photos(out: Path, n: int, *, seed: int = 0) -> int:
    """``n`` JPEGs in two class folders; returns their total bytes."""
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    total = 0
    for k in range(n):
        cls, name = (("temple", "china.jpg"), ("flower", "flower.jpg"))[k % 2]
        img = Image.fromarray(load_sample_image(name))
        w, h = img.size
        side = float(np.sqrt(rng.uniform(0.3, 0.9)))
        cw, ch = int(w * side), int(h * side)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        width = int(rng.integers(320, 481))
        img = img.resize((width, int(width * ch / cw)))
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
        path = out / cls / f"{k:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=int(rng.integers(70, 95)))
        total += path.stat().st_size
    return total


def _du(*paths: Path) -> int:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "-c", *existing], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def _project(commit: str | None, root: Path, photos: Path) -> dict:
    """A scratch project at ``commit`` (None: the working tree) reading ``photos``; returns its env."""
    if commit:
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    else:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.split()
        for f in files:
            if (REPO / f).is_file() and f.split("/")[0] not in {"data", "models", "metrics", "plots", "reports"} \
                    and f != "dvc.lock":
                (root / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, root / f)
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"].update(source="image_folder", path=str(photos))
    params["clean"].update(image_size=[224, 224], channels=3)
    params["clean"]["label_issues"].update(enabled=True)
    params["train"]["backbone"] = None
    params.setdefault("embed", {})["grouping"] = "none"
    params["mlflow"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", PYTHONPATH=str(root),
               GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@localhost",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@localhost")
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)
    if not (root / ".dvc").exists():
        subprocess.run(["dvc", "init", "-q"], cwd=root, env=env, check=True)
    return env


def measure(commit: str | None, photos: Path, jpeg_bytes: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="trainwise-photo-scale-"))
    try:
        env = _project(commit, root, photos)
        t0 = time.perf_counter()
        proc = subprocess.run(["dvc", "repro", "audit"], cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"dvc repro audit failed at {commit or 'HEAD'}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        data, cache = _du(root / "data"), _du(root / ".dvc" / "cache")
        both = _du(root / "data", root / ".dvc" / "cache")
        stage_wall = {}
        for s in STAGES:
            f = root / "metrics" / f"{s}.json"
            if f.exists():
                stage_wall[s] = round(json.loads(f.read_text()).get("cost/wall_s", 0.0), 2)
        per_dir = {d.name: _du(d) for d in sorted((root / "data").iterdir()) if d.is_dir() and d.name != "raw"}
        return {"commit": commit or "working tree", "repro_wall_s": round(wall, 1), "data_bytes": data,
                "cache_bytes": cache, "data_plus_cache_bytes": both, "x_jpegs": round(both / jpeg_bytes, 2),
                "per_dir_bytes": per_dir, "stage_wall_s": stage_wall}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000])
    ap.add_argument("--before", default="3077c6b", help="the commit to compare with (before the payload was "
                                                       "written once)")
    ap.add_argument("--decoded-once", default=None, help="also measure this commit (clean's pixels written once)")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        photos = Path(tempfile.mkdtemp(prefix="trainwise-photos-"))
        try:
            jpeg_bytes = make_photos(photos, n)
            before = measure(args.before, photos, jpeg_bytes)
            once = measure(args.decoded_once, photos, jpeg_bytes) if args.decoded_once else None
            after = measure(None, photos, jpeg_bytes)
        finally:
            shutil.rmtree(photos, ignore_errors=True)
        rows.append({"photos": n, "jpeg_bytes": jpeg_bytes, "before": before, "after": after,
                     "footprint_ratio": round(after["data_plus_cache_bytes"] / before["data_plus_cache_bytes"], 3),
                     **({"decoded_once": once, "footprint_ratio_vs_decoded_once":
                         round(after["data_plus_cache_bytes"] / once["data_plus_cache_bytes"], 3)} if once else {})})
    mb = 1 / 2**20
    print(f"{'photos':>7} {'JPEGs MB':>9} | {'before data+cache MB':>21} {'x JPEGs':>8} | "
          f"{'after data+cache MB':>20} {'x JPEGs':>8} | after/before")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['photos']:>7} {r['jpeg_bytes'] * mb:>9.1f} | {b['data_plus_cache_bytes'] * mb:>21.1f} "
              f"{b['x_jpegs']:>8.2f} | {a['data_plus_cache_bytes'] * mb:>20.1f} {a['x_jpegs']:>8.2f} | "
              f"{r['footprint_ratio']:.3f}x")
        if "decoded_once" in r:
            o = r["decoded_once"]
            print(f"    decoded once ({o['commit']}): data+cache {o['data_plus_cache_bytes'] * mb:.1f} MB, "
                  f"{o['x_jpegs']:.2f}x the JPEGs; after / decoded once {r['footprint_ratio_vs_decoded_once']:.3f}x")
        for name in ("before", "decoded_once", "after"):
            if name not in r:
                continue
            print(f"    {name:6} per folder MB: " + ", ".join(f"{k} {v * mb:.1f}" for k, v in r[name]["per_dir_bytes"].items())
                  + " | stage wall s: " + ", ".join(f"{k} {v}" for k, v in r[name]["stage_wall_s"].items()))
    write_results(RESULTS / "photo_scale.json", {"rows": rows, "before_commit": args.before,
                                                 "decoded_once_commit": args.decoded_once})


if __name__ == "__main__":
    main()
