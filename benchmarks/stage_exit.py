"""What a stage process costs beyond its own work, with and without the fast exit.

A stage runs as its own Python process (`dvc repro` runs ``python -m pipelines.<stage>``). Its
wall time is imports + the stage's metered work + the exit. A normal Python exit frees every
object of every imported module one by one after the atexit handlers: with torch, MLflow and
Ray loaded that took seconds. ``run_stage`` now ends the process with
``trainwise.components.stage_exit.exit_now`` (threads joined, atexit handlers run, streams flushed, then
``os._exit``); ``TRAINWISE_FAST_EXIT=0`` is the normal exit, the baseline here. Same scratch
project, same stages, runs interleaved (fast, normal, fast, normal, ...) so both see the same
load. Per stage: median process wall, median metered wall, and the difference (imports + exit).

    python -m benchmarks.stage_exit [--repeats 3] [--stages split baseline evaluate]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks._project import scratch_project
from benchmarks._results import RESULTS, write_results

MODES = {"fast": "1", "normal": "0"}


def timed_stage(root, env, stage: str, mode: str) -> dict:
    run_env = {**env, "TRAINWISE_FAST_EXIT": MODES[mode]}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"trainwise.pipelines.{stage}"], cwd=root, env=run_env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{stage} ({mode}) failed with exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    metered = json.loads((root / "metrics" / f"{stage}.json").read_text())["cost/wall_s"]
    return {"process_s": wall, "metered_s": metered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=["split", "baseline", "evaluate"])
    args = ap.parse_args()

    root, env = scratch_project(prefix="trainwise-exit-")
    try:
        # outputs every measured stage reads: the whole demo once (its own exits are not measured)
        subprocess.run(["dvc", "repro"], cwd=root, env=env, check=True, capture_output=True)
        runs: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in MODES} for s in args.stages}
        for i in range(args.repeats):
            for stage in args.stages:
                for mode in (MODES if i % 2 == 0 else reversed(list(MODES))):
                    runs[stage][mode].append(timed_stage(root, env, stage, mode))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = {}
    for stage, by_mode in runs.items():
        row = {}
        for mode, rs in by_mode.items():
            proc = statistics.median(r["process_s"] for r in rs)
            metered = statistics.median(r["metered_s"] for r in rs)
            row[mode] = {"process_s": round(proc, 2), "metered_s": round(metered, 2),
                         "outside_work_s": round(statistics.median(r["process_s"] - r["metered_s"] for r in rs), 2)}
        row["saved_s"] = round(row["normal"]["outside_work_s"] - row["fast"]["outside_work_s"], 2)
        row["process_ratio"] = round(row["fast"]["process_s"] / row["normal"]["process_s"], 2)
        rows[stage] = row
    saved = round(sum(r["saved_s"] for r in rows.values()), 2)
    result = {"repeats": args.repeats, "stages": rows, "saved_s_total": saved,
              "saved_s_per_stage": round(saved / len(rows), 2)}
    print(f"{'stage':10} {'mode':7} {'process s':>10} {'metered s':>10} {'outside s':>10}")
    for stage, row in rows.items():
        for mode in MODES:
            r = row[mode]
            print(f"{stage:10} {mode:7} {r['process_s']:10.2f} {r['metered_s']:10.2f} {r['outside_work_s']:10.2f}")
        print(f"{stage:10} fast exit saves {row['saved_s']:.2f} s per process "
              f"(process wall {row['process_ratio']:.2f}x the normal exit's)")
    print(f"per stage process: {result['saved_s_per_stage']:.2f} s saved on average over {len(rows)} stages "
          f"({args.repeats} interleaved runs each, load {os.getloadavg()[0]:.1f})")
    write_results(RESULTS / "stage_exit.json", result)


if __name__ == "__main__":
    main()
