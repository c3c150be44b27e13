"""Wall time of the demo `dvc repro`, per stage, from a fresh copy of the repo.

For each stage: wall time (from its cost meter: process start to outputs written), its share of
the run, and for `train` / `tune` how much of the wall time was spent in training epochs, i.e.
the ratio of stage wall time to compute: the price of starting Ray, workers and MLflow.

    python -m benchmarks.pipeline_stages            # the demo params (as a user runs it)
    python -m benchmarks.pipeline_stages --quick    # shrunk params, ~2 min
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import time

import psutil
import yaml

from benchmarks._project import REPO, scratch_project
from benchmarks._results import write_results

QUICK = {"tune": {"num_samples": 3, "max_epochs": 2, "grace_period": 1}, "train": {"epochs": 3}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shrunk params (3 trials, 3 epochs)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = ap.parse_args()

    root, env = scratch_project(QUICK if args.quick else None)
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    # Every stage of dvc.yaml, in its order, that reported its wall time (embed without a backbone
    # writes its manifest in well under a second and may report none).
    stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    metrics = {s: json.loads((root / "metrics" / f"{s}.json").read_text()) for s in stages
               if (root / "metrics" / f"{s}.json").exists()}
    STAGES = [s for s in stages if "cost/wall_s" in metrics.get(s, {})]
    train_epochs_s = sum(float(r["epoch_s"]) for r in _history(root))
    trials = list(csv.DictReader(open(root / "models/tune/trials.csv")))
    rows = []
    for s in STAGES:
        wall = metrics[s]["cost/wall_s"]
        rows.append({"stage": s, "wall_s": round(wall, 2), "share": round(wall / total, 3),
                     "usd": metrics[s]["cost/usd"]})
    result = {
        "benchmark": "pipeline_stages", "quick": args.quick, "dvc_repro_wall_s": round(total, 1),
        "stage_sum_s": round(sum(r["wall_s"] for r in rows), 1),
        "dvc_overhead_s": round(total - sum(r["wall_s"] for r in rows), 1),
        "test/acc": metrics["evaluate"]["test/acc"],
        "train_epochs_s": train_epochs_s,
        "train_wall_over_epochs": round(metrics["train"]["cost/wall_s"] / train_epochs_s, 1) if train_epochs_s else None,
        "tune_trials": len(trials), "tune_trial_epochs": sum(int(t["epochs"]) for t in trials),
        "tune_wall_per_trial_epoch_s": round(metrics["tune"]["cost/wall_s"] / max(1, sum(int(t["epochs"]) for t in trials)), 2),
        "stages": rows,
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
    }
    print(f"demo dvc repro{' (--quick)' if args.quick else ''}: {total:.1f}s wall, test/acc {result['test/acc']:.4f}")
    print(f"{'stage':<10}{'wall s':>9}{'share':>8}{'usd':>12}")
    for r in rows:
        print(f"{r['stage']:<10}{r['wall_s']:>9.1f}{r['share']:>8.1%}{r['usd']:>12.6f}")
    print(f"{'(rest)':<10}{result['dvc_overhead_s']:>9.1f}{result['dvc_overhead_s'] / total:>8.1%}"
          "   dvc itself + each stage's interpreter start and imports")
    if train_epochs_s:
        print(f"train: {metrics['train']['cost/wall_s']:.1f}s stage wall / {train_epochs_s:.1f}s in epochs = "
              f"{result['train_wall_over_epochs']}x (Ray start-up, worker group, MLflow model logging)")
    print(f"tune: {result['tune_trials']} trials, {result['tune_trial_epochs']} trial-epochs, "
          f"{result['tune_wall_per_trial_epoch_s']}s of stage wall per trial-epoch")
    out = REPO / "benchmarks" / "results" / ("pipeline_stages_quick.json" if args.quick else "pipeline_stages.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, result)
    print(f"-> {out.relative_to(REPO)}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def _history(root):
    with open(root / "plots" / "train_curve.csv") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    main()
