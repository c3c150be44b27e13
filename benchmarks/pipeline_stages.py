"""Wall time of the demo `dvc repro`, per stage, from a fresh copy of the repo: before and after.

"Before" is a commit checked out with ``git worktree add`` in a temporary directory (removed
afterwards), by default the one before one-worker trials moved out of TorchTrainer (issue 15);
"after" is the current checkout (its tracked and untracked files, as a fresh clone would hold
them plus work in progress). Each is copied to a scratch project and reproduced from nothing
with the same venv, both at the same time in one run of this script, so that on a shared
machine both see the same load (each starts its own Ray with the machine's CPUs).

For each stage: wall time (its cost meter: process start to outputs written) and the ratio
after / before. For tune: trials, trial-epochs and Tune's overhead (the sweep's wall time
against the time its trials spent in epochs, with as many trials at once as ran; reported by
the stage since issue 15). Targets (2 cores): whole repro <= 90 s, tune <= 25 s for 8 trials,
Tune overhead <= 15%.

    python -m benchmarks.pipeline_stages [--before COMMIT] [--skip-before [--repeats N]] [--quick]

``--repeats N`` (with ``--skip-before``): N repros one after another; the table shows the median
one and the file keeps every run's wall (this machine's speed varies by 2x within an hour).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._project import scratch_project
from benchmarks._results import write_results

REPO = Path(__file__).resolve().parents[1]
# The commit before "training loop: one body for Ray Train ranks and one-worker Tune trials".
BEFORE = "7894280~1"
QUICK = {"tune": {"num_samples": 3, "max_epochs": 2, "grace_period": 1}, "train": {"epochs": 3}}


def scratch_copy(src: Path, params_update: dict | None) -> tuple[Path, dict]:
    return scratch_project(params_update, src=src, prefix="trainwise-stages-")


def repro(src: Path, params_update: dict | None) -> dict:
    root, env = scratch_copy(src, params_update)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"dvc repro failed in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        stages = [s for s in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
                  if (root / "metrics" / f"{s}.json").exists()]
        metrics = {s: json.loads((root / "metrics" / f"{s}.json").read_text()) for s in stages}
        trials = list(csv.DictReader(open(root / "models/tune/trials.csv")))
        tune = metrics.get("tune", {})
        out = {"dvc_repro_wall_s": round(total, 1),
               "stages": {s: round(m["cost/wall_s"], 2) for s, m in metrics.items() if "cost/wall_s" in m},
               "test/acc": metrics.get("evaluate", {}).get("test/acc"),
               "tune_trials": len(trials), "tune_trial_epochs": sum(int(t["epochs"]) for t in trials)}
        if "tune/sweep_wall_s" in tune and tune.get("tune/trial_epochs_s"):
            out["tune_sweep_wall_s"] = round(tune["tune/sweep_wall_s"], 2)
            out["tune_trial_epochs_s"] = round(tune["tune/trial_epochs_s"], 2)
            out["tune_concurrent"] = tune["tune/concurrent_trials"]
            out["tune_overhead"] = round(tune["tune/sweep_wall_s"] * tune["tune/concurrent_trials"]
                                         / tune["tune/trial_epochs_s"] - 1, 3)
        if "tune/trial_startup_s_median" in tune:  # actor ready (new or reused) -> first epoch, less the epoch
            out["tune_trial_startup_s"] = {"median": round(tune["tune/trial_startup_s_median"], 2),
                                           "max": round(tune["tune/trial_startup_s_max"], 2),
                                           "starts": tune["tune/trial_starts"],
                                           "first_actors": round(tune.get("tune/first_actors_start_s", float("nan")), 2)}
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def after_walls(runs: dict) -> str:
    return ", ".join(f"{w:g}" for w in runs["after"]["repeats"]) + " s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help=f"commit to compare with (default {BEFORE})")
    ap.add_argument("--skip-before", action="store_true", help="only the current code")
    ap.add_argument("--quick", action="store_true", help="shrunk params (3 trials, 3 epochs)")
    ap.add_argument("--repeats", type=int, default=1, help="with --skip-before: repros one after another")
    args = ap.parse_args()
    if args.repeats > 1 and not args.skip_before:
        ap.error("--repeats needs --skip-before (before and after run side by side once)")
    params = QUICK if args.quick else None
    from concurrent.futures import ThreadPoolExecutor

    runs, tree = {}, None
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {}
        if not args.skip_before:
            commit = subprocess.run(["git", "rev-parse", args.before], cwd=REPO, capture_output=True, text=True,
                                    check=True).stdout.strip()
            tree = Path(tempfile.mkdtemp(prefix="trainwise-before-")) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), commit], cwd=REPO, check=True)
            runs["before"] = {"commit": commit}
            jobs["before"] = pool.submit(repro, tree, params)
        if args.repeats > 1:
            every = []
            for i in range(args.repeats):
                every.append(repro(REPO, params))
                print(f"repro {i + 1} of {args.repeats}: {every[-1]['dvc_repro_wall_s']} s", flush=True)
            walls = sorted(r["dvc_repro_wall_s"] for r in every)
            median = sorted(every, key=lambda r: r["dvc_repro_wall_s"])[(len(every) - 1) // 2]
            runs["after"] = {**median, "repeats": [r["dvc_repro_wall_s"] for r in every],
                             "repro_wall_min_s": walls[0], "repro_wall_max_s": walls[-1]}
        else:
            jobs["after"] = pool.submit(repro, REPO, params)
        try:
            for name, job in jobs.items():
                runs[name] = {**runs.get(name, {}), **job.result()}
        finally:
            if tree is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
                shutil.rmtree(tree.parent, ignore_errors=True)

    after, before = runs["after"], runs.get("before")
    names = list(after["stages"]) + [s for s in (before or {}).get("stages", {}) if s not in after["stages"]]
    print(f"demo dvc repro{' (--quick)' if args.quick else ''}, fresh copy, {os.cpu_count()} cores, shared machine"
          + (f"; median of {args.repeats} repros, walls {after_walls(runs)}" if args.repeats > 1 else ""))
    print(f"{'stage':<10}{'before s':>10}{'after s':>10}{'after/before':>14}")
    for s in names:
        b, a = (before or {}).get("stages", {}).get(s), after["stages"].get(s)
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        print(f"{s:<10}{b if b is not None else '-':>10}{a if a is not None else '-':>10}{ratio:>14}")
    b_total = before["dvc_repro_wall_s"] if before else None
    total_ratio = f"{after['dvc_repro_wall_s'] / b_total:.2f}x" if b_total else "-"
    print(f"{'dvc repro':<10}{b_total if b_total else '-':>10}{after['dvc_repro_wall_s']:>10}{total_ratio:>14}")
    tune_s = after["stages"].get("tune")
    print(f"whole repro {after['dvc_repro_wall_s']:.0f}s (target <= 90 s): "
          f"{'met' if after['dvc_repro_wall_s'] <= 90 else 'NOT met'}; tune {tune_s:.0f}s for "
          f"{after['tune_trials']} trials, {after['tune_trial_epochs']} trial-epochs (target <= 25 s for 8): "
          f"{'met' if tune_s <= 25 else 'NOT met'}")
    if "tune_overhead" in after:
        print(f"Tune overhead: sweep {after['tune_sweep_wall_s']:.1f}s x {after['tune_concurrent']} at once / "
              f"{after['tune_trial_epochs_s']:.1f}s in epochs - 1 = {after['tune_overhead']:.1%} (target <= 15%): "
              f"{'met' if after['tune_overhead'] <= 0.15 else 'NOT met'}")
    if "tune_trial_startup_s" in after:
        st = after["tune_trial_startup_s"]
        print(f"per-trial start-up (actor ready -> first epoch, less the epoch; {st['starts']} starts): median "
              f"{st['median']:.2f}s, max {st['max']:.2f}s (target < 1 s): {'met' if st['median'] < 1 else 'NOT met'}; "
              f"before that, the first trials' new actors took {st['first_actors']:.1f}s to start (once per sweep)")
    print(f"test/acc before {before['test/acc'] if before else '-'}, after {after['test/acc']}")
    # after only: a separate file, so that the side-by-side ratio and the quiet absolute figure both stay
    stem = "pipeline_stages" + ("_quick" if args.quick else "") + ("_quiet" if not before else "")
    out = REPO / "benchmarks" / "results" / f"{stem}.json"
    write_results(out, {"benchmark": "pipeline_stages", "quick": args.quick, **runs,
                        "repro_ratio": round(after["dvc_repro_wall_s"] / b_total, 3) if b_total else None,
                        "tune_ratio": round(tune_s / before["stages"]["tune"], 3) if before else None,
                        "note": ("before and after ran at the same time on the same cores (same load), each "
                                 "slowing the other: absolute seconds are inflated, the ratio is the claim" if before
                                 else f"after only, {args.repeats} repro(s) one after another, nothing else running; "
                                      "with several, `after` is the median one (by whole-repro wall) and `repeats` "
                                      "lists every wall; the load average at the start is in provenance")})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
