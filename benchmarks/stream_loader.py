"""Streaming vs materialised training data: ``train.loader: ray_data`` (streamed from the Parquet
shards) against the same loader materialising the split in the object store first (what it did
before issue 29) and the default ``memory`` loader, on the same images, the same 2-CPU Ray with a
small object store, 2 one-CPU workers, a tiny model (so reading, not computing, is measured).

Each run is a process of its own (its own Ray, its own peak RSS). Reported per run: epoch
throughput (rows/s of the last epoch, after the first's warm-up), wall time, the driver's peak
RSS (sampled every 0.2 s; the kernel's ru_maxrss, before and after the fit, is in the results
file), the largest RSS of any Ray process, the object store's peak use and the bytes spilled.

    python -m benchmarks.stream_loader [--train-rows 11000] [--epochs 2] [--store-mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._results import RESULTS, write_results
from trainwise.components.data.contract import read_table
from tests.stream_data import write_image_chain

REPO = Path(__file__).resolve().parents[1]
RUNS = (("ray_data", False), ("ray_data", True), ("memory", False))


def one_run(split: Path, storage: Path, *, loader: str, materialise: bool, epochs: int, store_mb: int) -> dict:
    args = {"split": str(split), "loader": loader, "materialise": materialise, "workers": 2, "epochs": epochs,
            "storage": str(storage), "name": f"{loader}-{int(materialise)}", "object_store_mb": store_mb}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.stream_data", json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"loader": loader + (" materialised" if materialise else ""), "failed": proc.stderr[-2000:]}
    r = json.loads(lines[-1][len("RESULT "):])
    last = r["history"][-1] if r["history"] else {}
    r["rows_per_s"] = round(last.get("samples_per_s", 0.0), 1)
    r["epoch_s"] = round(last.get("epoch_s", 0.0), 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=11_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--store-mb", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = write_image_chain(Path(tmp) / "data", n_train=args.train_rows, n_val=600, n_test=200)
        train_bytes = read_table(split, columns=["image"], filter_split="train").nbytes
        runs = [one_run(split, Path(tmp) / "ray", loader=lo, materialise=m, epochs=args.epochs,
                        store_mb=args.store_mb) for lo, m in RUNS]
    mb = 1e6
    print(f"train split {train_bytes / mb:.0f} MB decoded, object store {args.store_mb} MB, 2 workers, 2 CPUs")
    print(f"{'loader':<24}{'rows/s':>8}{'epoch s':>9}{'wall s':>8}{'driver RSS MB':>15}{'max Ray RSS MB':>16}"
          f"{'store peak MB':>15}{'spilled MB':>12}")
    for r in runs:
        if "failed" in r:
            print(f"{r['loader']:<24} failed: {r['failed'][-300:]}")
            continue
        print(f"{r['loader']:<24}{r['rows_per_s']:>8.0f}{r['epoch_s']:>9.1f}{r['wall_s']:>8.0f}"
              f"{r['driver_sampled_peak_rss'] / mb:>15.0f}{r['ray_process_peak_rss'] / mb:>16.0f}"
              f"{r['store_peak_used'] / mb:>15.0f}{r['spilled'] / mb:>12.0f}")
    ok = [r for r in runs if "failed" not in r]
    by = {r["loader"]: r for r in ok}
    ratios = {}
    for other in ("ray_data materialised", "memory"):
        if "ray_data" in by and other in by and by[other]["rows_per_s"]:
            ratios[f"streaming_vs_{other.replace(' ', '_')}_rows_per_s"] = round(
                by["ray_data"]["rows_per_s"] / by[other]["rows_per_s"], 3)
    for k, v in ratios.items():
        print(f"{k}: {v}x")
    for r in ok:
        r["epochs_s"] = [round(h["epoch_s"], 1) for h in r.pop("history", [])]
    out = write_results(RESULTS / "stream_loader.json",
                        {"benchmark": "stream_loader", "train_bytes": train_bytes, "store_mb": args.store_mb,
                         "epochs": args.epochs, "runs": runs, "ratios": ratios})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
