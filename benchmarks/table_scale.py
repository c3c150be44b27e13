"""Does ingest -> clean -> split stream? Wall time and peak RSS of each stage on a generated table
at 100k and 1M rows.

The table (Parquet, generated here): 16 float features and a label of 10 classes whose centres
differ; 1% of the rows repeat an earlier row's values (exact duplicates, which clean sets aside)
and 0.1% have no label (which ingest sets aside). Each stage runs as DVC runs it
(``python -m pipelines.<stage>``, MLflow on a local SQLite store) in a scratch copy of the
repository, in its own process; its peak RSS is the kernel's high-water mark (VmHWM) at exit.

Targets (issue 16): every stage's peak RSS <= 2 GB at 1M rows, and peak RSS at 1M <= 1.5x peak
RSS at 100k. Label issues are not part of clean any more (the audit stage after split does them),
so this is the whole of clean. The baseline in the same run is the smaller size: the ratio is
the claim (memory does not grow with the rows).

    python -m benchmarks.table_scale [--sizes 100000 1000000]
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
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._project import scratch_project
from benchmarks._results import write_results

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "clean", "split")
FEATURES, CLASSES = 16, 10
RSS_LIMIT_MB, RATIO_LIMIT = 2048, 1.5

# Runs the stage as `python -m pipelines.<stage>` would and writes its peak RSS (VmHWM) at exit.
PEAK_WRAPPER = """
import atexit, runpy, sys
out, stage = sys.argv[1], sys.argv[2]
def peak():
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(out, "w").write(str(hwm * 1024))
atexit.register(peak)
sys.argv = [f"pipelines/{stage}.py"]
runpy.run_module(f"trainwise.pipelines.{stage}", run_name="__main__", alter_sys=True)
"""


def make_table(path: Path, n: int, *, seed: int = 0, chunk: int = 100_000) -> dict:
    """Write the benchmark's table; returns how many duplicates and unlabelled rows it holds."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (CLASSES, FEATURES)).astype(np.float32)
    schema = pa.schema([("label", pa.string()), *[(f"f{i}", pa.float32()) for i in range(FEATURES)]])
    dups = unlabelled = 0
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            y = rng.integers(0, CLASSES, m)
            x = centres[y] + rng.normal(0, 1, (m, FEATURES)).astype(np.float32)
            copy = np.flatnonzero(rng.random(m) < 0.01)
            copy = copy[copy > 0]
            src = rng.integers(0, copy, len(copy)) if len(copy) else copy   # an earlier row of this chunk
            x[copy], y[copy] = x[src], y[src]
            rows = np.ascontiguousarray(np.column_stack([x, y.astype(np.float32)]))
            dups += m - len(np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))))
            labels = np.array([f"class_{k}" for k in range(CLASSES)], dtype=object)[y]
            missing = rng.random(m) < 0.001
            missing[copy] = missing[src] = False    # every planted duplicate stays one
            labels[missing] = None
            unlabelled += int(missing.sum())
            w.write_table(pa.table({"label": pa.array(labels.tolist(), pa.string()),
                                    **{f"f{i}": pa.array(x[:, i]) for i in range(FEATURES)}}, schema=schema))
    return {"rows": n, "planted_duplicates": dups, "unlabelled": unlabelled}


def run_stage(root: Path, env: dict, stage: str) -> dict:
    peak_file = root.parent / f"{root.name}-peak-{stage}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak_file), stage], cwd=root, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(int(peak_file.read_text()) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="trainwise-table-bench-") as tmp:
        for n in sorted(args.sizes):
            table = Path(tmp) / f"table_{n}.parquet"
            made = make_table(table, n)
            root, env = scratch_project({"ingest": {"source": "table", "path": str(table), "label_column": "label",
                                                    "cache_dir": None},
                                         "mlflow": {"tracking_uri": f"sqlite:///{Path(tmp) / f'mlflow_{n}.db'}"}})
            try:
                stages = {s: run_stage(root, env, s) for s in STAGES}
                ingest = json.loads((root / "metrics/ingest.json").read_text())
                clean = json.loads((root / "metrics/clean.json").read_text())
                split = json.loads((root / "metrics/split.json").read_text())
                assert clean["clean/set_aside/duplicate"] == made["planted_duplicates"], (clean, made)
                assert split["split/leakage/ok"] == 1
                results.append({**made, "table_mb": round(table.stat().st_size / 2**20, 1), "stages": stages,
                                "clean_rows": clean["clean/rows"], "ingest_metrics_rows": ingest.get("ingest/rows"),
                                "split_rows": {s: split[f"split/{s}_rows"] for s in ("train", "val", "test")}})
            finally:
                shutil.rmtree(root, ignore_errors=True)
            print(f"  {n} rows: " + ", ".join(f"{s} {v['wall_s']} s / {v['peak_rss_mb']} MB" for s, v in stages.items()),
                  flush=True)

    small, big = results[0], results[-1]
    print(f"\ningest -> clean -> split of a generated table ({FEATURES} float features, {CLASSES} classes, 1% exact "
          f"duplicates, 0.1% unlabelled); each stage its own process, peak RSS = VmHWM; {os.cpu_count()} CPUs, "
          f"1-min load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"{'rows':>9}{'MB':>7}" + "".join(f"{s + ' s':>10}{s + ' MB':>12}" for s in STAGES))
    for r in results:
        print(f"{r['rows']:>9}{r['table_mb']:>7}" + "".join(
            f"{r['stages'][s]['wall_s']:>10}{r['stages'][s]['peak_rss_mb']:>12}" for s in STAGES))
    ratios = {s: round(big["stages"][s]["peak_rss_mb"] / small["stages"][s]["peak_rss_mb"], 3) for s in STAGES}
    peak = max(big["stages"][s]["peak_rss_mb"] for s in STAGES)
    ok = peak <= RSS_LIMIT_MB and all(v <= RATIO_LIMIT for v in ratios.values())
    print(f"peak RSS {big['rows']} vs {small['rows']} rows: " + ", ".join(f"{s} {v:.2f}x" for s, v in ratios.items())
          + f" (target <= {RATIO_LIMIT}x); largest peak {peak:.0f} MB (target <= {RSS_LIMIT_MB} MB): "
          + ("OK" if ok else "MISSED"))
    write_results(REPO / "benchmarks" / "results" / "table_scale.json",
                  {"features": FEATURES, "classes": CLASSES, "results": results, "rss_ratio": ratios,
                   "largest_peak_rss_mb": peak, "targets": {"peak_rss_mb": RSS_LIMIT_MB, "ratio": RATIO_LIMIT},
                   "ok": ok, "shared_machine": True})


if __name__ == "__main__":
    main()
