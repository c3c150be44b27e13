"""split's wall time vs the photos' size: the same data/clean split by two commits, side by side.

A photo folder of N JPEGs (``photo_scale.make_photos``: crops, mirrors, colour shifts and re-encodes
of scikit-learn's sample photos) goes through ingest -> clean (224x224x3) -> embed (no backbone:
the split's own compute stays small, so what is measured is its reading) once, with the working
tree's code, in a scratch project. Then the split stage runs on that same data/clean twice, each in
its own process with its reads and its compute timed (``stage_speed.TIMED_STAGE``):

- before: ``--before`` (default: the commit before split read clean's ``digest`` column), whose
  first pass reads every row's pixels to hash them for the exact-copy check;
- after: the working tree, which reads ``id``, ``label``, ``group`` and ``digest`` (16 bytes a row).

Reported per size and side: split's wall time, CPU seconds, the time spent producing batches and
writing (``io_s``, per 10k rows: the target is <= 5 s), its compute and the rest (start-up).

    python -m benchmarks.split_speed [--sizes 1500 10000] [--before f9211c5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks._project import REPO, scratch_project
from benchmarks._results import RESULTS, write_results
from benchmarks.photo_scale import make_photos
from benchmarks.stage_speed import TARGET_OVERHEAD_PER_10K, _set_params, stage

UPSTREAM = ("ingest", "clean", "embed")


def _tree_at(commit: str, where: Path) -> Path:
    """The repository's files at ``commit`` in ``where`` (a git repo of its own, for scratch_project)."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    for args in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(args, cwd=where, check=True, capture_output=True)
    return where


def _split(root: Path, env: dict, rows: int) -> dict:
    st = stage(root, env, "split")
    compute = sum(st["compute_s"].values())
    io_s = st["read_s"] + st["write_s"]
    return {"wall_s": st["wall_s"], "cpu_s": st["cpu_s"], "read_s": st["read_s"], "write_s": st["write_s"],
            "compute_s": round(compute, 2), "io_s": round(io_s, 2), "fixed_s": round(st["wall_s"] - compute - io_s, 2),
            "io_s_per_10k": round(io_s * 10_000 / max(rows, 1), 2), "peak_rss_mb": st["peak_rss_mb"],
            "exact_pairs": st["metrics"].get("split/leakage/exact_pairs"),
            "rows_in_groups": st["metrics"].get("split/groups/rows_in_groups")}


def measure(n: int, before_tree: Path, tmp: Path) -> dict:
    photos = tmp / f"photos-{n}"
    jpeg_bytes = make_photos(photos, n)
    params = dict(ingest={"source": "image_folder", "path": str(photos)}, clean={"image_size": [224, 224], "channels": 3},
                  train={"backbone": None}, embed={"grouping": "none"}, mlflow={"enabled": False})
    after_root, after_env = scratch_project(prefix="trainwise-split-after-")
    before_root, before_env = scratch_project(src=before_tree, prefix="trainwise-split-before-")
    try:
        for root in (after_root, before_root):
            _set_params(root, **params)
        up = {s: stage(after_root, after_env, s) for s in UPSTREAM}
        rows = up["clean"]["metrics"]["clean/rows"]
        shutil.copytree(after_root / "data", before_root / "data", dirs_exist_ok=True)   # the same data/clean
        before = _split(before_root, before_env, rows)
        after = _split(after_root, after_env, rows)
        return {"photos": n, "jpeg_bytes": jpeg_bytes, "rows": rows,
                "clean_bytes": sum(f.stat().st_size for f in (after_root / "data" / "clean").iterdir()),
                "upstream_wall_s": {s: up[s]["wall_s"] for s in UPSTREAM}, "before": before, "after": after,
                "same_leakage": before["exact_pairs"] == after["exact_pairs"],
                "split_wall_ratio": round(after["wall_s"] / before["wall_s"], 3)}
    finally:
        for root in (after_root, before_root):
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(photos, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1500, 10000])
    ap.add_argument("--before", default="f9211c5", help="the commit to compare with (split hashing the pixels)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="trainwise-split-speed-") as tmp:
        before_tree = _tree_at(args.before, Path(tmp) / "before-tree")
        for n in args.sizes:
            rows.append(measure(n, before_tree, Path(tmp)))
            r = rows[-1]
            print(f"{n} photos ({r['rows']} rows, data/clean {r['clean_bytes'] / 2**20:.0f} MB): split before "
                  f"{r['before']['wall_s']} s, after {r['after']['wall_s']} s", flush=True)
    print(f"\n{'rows':>6} | {'split wall s':>20} | {'read+write s per 10k':>22} | {'CPU s':>15} | exact pairs")
    print(f"{'':>6} | {'before':>9} {'after':>10} | {'before':>10} {'after':>11} | {'before':>7} {'after':>7} |")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['rows']:>6} | {b['wall_s']:>9} {a['wall_s']:>10} | {b['io_s_per_10k']:>10} {a['io_s_per_10k']:>11} | "
              f"{b['cpu_s']:>7} {a['cpu_s']:>7} | {b['exact_pairs']} / {a['exact_pairs']}")
        print(f"{'':>6}   after: compute {a['compute_s']} s, start-up and the rest {a['fixed_s']} s, "
              f"peak RSS {a['peak_rss_mb']} MB (before {b['peak_rss_mb']} MB)")
    write_results(RESULTS / "split_speed.json", {"rows": rows, "before_commit": args.before,
                                                 "target_io_s_per_10k": TARGET_OVERHEAD_PER_10K})


if __name__ == "__main__":
    main()
