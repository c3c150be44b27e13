"""Does ASHA save trial-epochs without losing the best model? And does TPE beat random search?

Per seed (3 by default), on the digits split, one worker per trial (the direct trial path), one
trial at a time, ``--trials`` trials of at most ``--epochs`` epochs:

- ``asha``: random search + ASHA (``--grace``, ``--reduction-factor``);
- ``fifo``: the same random configs (same searcher seed; checked: the saved config lists are
  compared) each trained to ``--epochs``;
- ``random_2x``: random search at twice ASHA's trial-epoch budget, i.e. the first
  ``2 x asha_trial_epochs / epochs`` of those configs trained to the end. Trials are
  deterministic for a seed and config, so this is read off the FIFO run instead of re-run;
- ``tpe_asha``: Optuna TPE (``optuna_startup_trials`` random first) + the same ASHA.

Each arm's winner is picked as the tune stage picks (lowest best-epoch val/loss), retrained with
the same loop to its best epoch, and scored on the test split. Reported: trial-epochs, best
val/acc (mean and spread over seeds), the winners' test/acc, and the ratio ASHA / FIFO.
Target: ASHA <= 0.35x FIFO's trial-epochs, mean best val/acc within 0.3 points of FIFO's.

    python -m benchmarks.tune_asha_vs_fifo [--trials 32 --epochs 8 --seeds 0 1 2] [--model mlp]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks._results import write_results
from trainwise.components.ray_start import init_ray
from trainwise.components.training.data import input_shape, load_split, read_split
from trainwise.components.training.driver import Scaling, resolve, run_data
from trainwise.components.training.loop import CHECKPOINT_FILE, DATA_REFS, run_loop
from trainwise.components.training.loop_config import LoopConfig
from trainwise.components.tuning.space import apply_trial_config
from trainwise.components.tuning.sweep import run_sweep, trial_histories
from tests.params import loop_config, sweep_options
from tests.demo_data import write_digits_split

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
         "weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
         "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}


def sweep(base: LoopConfig, storage: Path, *, scheduler: str, search: str, args, seed: int,
          grace: int = 1, rf: float = 2.0) -> dict:
    options = sweep_options(num_samples=args.trials, max_concurrent_trials=1, scheduler=scheduler, search_alg=search,
                            optuna_startup_trials=args.startup, max_epochs=args.epochs, grace_period=grace,
                            reduction_factor=rf, seed=seed, resume=False, budget_usd=None, time_budget_s=None)
    t0 = time.perf_counter()
    out = run_sweep(base, space=SPACE, options=options, scaling=Scaling(num_workers=1), storage_path=str(storage),
                    name=f"bench-{scheduler}-{search}-{seed}-g{grace}-r{rf:g}")
    wall = time.perf_counter() - t0
    hist = trial_histories(out.grid, metric=options.metric, mode=options.mode)
    configs = {os.path.basename(r.path): {k: r.config[k] for k in SPACE} for r in out.grid}
    # the order the searcher proposed them: when each trial's first epoch ended (one at a time)
    order = sorted(hist, key=lambda t: _first_report(out.grid, t))
    return {"hist": hist, "configs": configs, "order": order, "wall_s": wall}


def _first_report(grid, trial: str) -> float:
    for r in grid:
        if os.path.basename(r.path) == trial:
            df = r.metrics_dataframe
            return float(df["timestamp"].min()) if df is not None and len(df) else float("inf")
    return float("inf")


def summary(hist: dict[str, list[dict]], configs: dict, trials: list[str]) -> dict:
    runs = {t: hist[t] for t in trials if hist.get(t)}
    winner = min(runs, key=lambda t: min(e["val/loss"] for e in runs[t]))
    best_epoch = min(runs[winner], key=lambda e: e["val/loss"])["epoch"]
    return {"trial_epochs": sum(len(h) for h in runs.values()), "trials": len(runs),
            "best_val_acc": max(e["val/acc"] for h in runs.values() for e in h),
            "winner": winner, "winner_config": configs[winner], "winner_epoch": int(best_epoch),
            "winner_val_loss": min(e["val/loss"] for e in runs[winner])}


class _Keep:
    """A one-worker session that keeps the checkpoint of one epoch (to score the winner on test)."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, epoch: int):
        self.epoch, self.state = epoch, None

    def prepare_model(self, model):
        return model

    def checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir, history):
        if metrics["epoch"] == self.epoch:
            self.state = torch.load(os.path.join(checkpoint_dir, CHECKPOINT_FILE), weights_only=True)["model"]


def test_acc(base: LoopConfig, refs: dict, config: dict, epoch: int, split: Path) -> float:
    from trainwise.components.models import build_model

    loop = replace(apply_trial_config(base, config), epochs=epoch)
    keep = _Keep(epoch)
    run_loop({**loop.to_dict(), DATA_REFS: refs}, keep)
    model = build_model(loop.model, input_shape=loop.input_shape, n_classes=loop.n_classes, dropout=loop.dropout)
    model.load_state_dict(keep.state)
    model.eval()
    x, y, _ = load_split(str(split), "test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="mlp", help="mlp keeps 3 x 3 sweeps of 32 trials to minutes on 2 cores")
    ap.add_argument("--asha", nargs="+", default=["1:3", "2:2"],
                    help="ASHA settings grace:reduction_factor; the first is `asha` (random 2x and TPE use it), "
                         "the others are extra arms asha_g<grace>_r<rf>")
    ap.add_argument("--startup", type=int, default=8, help="TPE: random trials before it models")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run as this many processes at once (own Ray each)")
    ap.add_argument("--partial", help=argparse.SUPPRESS)  # a --jobs child: write its seeds' rows here
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = [(int(g), float(r)) for g, r in (a.split(":") for a in args.asha)]
    grace, rf = settings[0]
    extra = {f"asha_g{g}_r{r:g}": (g, r) for g, r in settings[1:]}
    per_seed, arms = [], ("asha", *extra, "fifo", "random_2x", "tpe_asha")
    if args.jobs > 1 and not args.partial:
        per_seed, n_val = _in_processes(args)
    else:
        per_seed, n_val = _run_seeds(args, grace, rf, extra, arms)
        if args.partial:
            Path(args.partial).write_text(json.dumps({"per_seed": per_seed, "n_val": n_val}, default=float))
            return
    _report(args, per_seed, n_val, arms, grace, rf, extra)


def _in_processes(args) -> tuple[list[dict], int]:
    """Each seed in its own process (and Ray): on a shared machine they get a fair share of it."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for seed in args.seeds:
            cmd = [sys.executable, "-m", "benchmarks.tune_asha_vs_fifo", "--seeds", str(seed), "--trials",
                   str(args.trials), "--epochs", str(args.epochs), "--model", args.model, "--startup", str(args.startup),
                   "--asha", *args.asha, "--partial", f"{tmp}/{seed}.json"]
            procs.append(subprocess.Popen(cmd, cwd=REPO))
        if any(p.wait() for p in procs):
            raise SystemExit("a seed's process failed")
        parts = [json.loads(Path(f"{tmp}/{seed}.json").read_text()) for seed in args.seeds]
    return [r for p in parts for r in p["per_seed"]], parts[0]["n_val"]


def _run_seeds(args, grace, rf, extra, arms) -> tuple[list[dict], int]:
    init_ray(num_cpus=2, train_poll_s=0.25)
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        split = write_digits_split(Path(tmp) / "data")
        n_val = read_split(str(split), "val").num_rows
        for seed in args.seeds:
            base = replace(loop_config(data_dir=str(split), input_shape=input_shape(split), model=args.model, seed=seed,
                                       epochs=args.epochs), patience=None)
            asha = sweep(base, Path(tmp) / "ray", scheduler="asha", search="random", args=args, seed=seed,
                         grace=grace, rf=rf)
            more = {a: sweep(base, Path(tmp) / "ray", scheduler="asha", search="random", args=args, seed=seed,
                             grace=g, rf=r) for a, (g, r) in extra.items()}
            fifo = sweep(base, Path(tmp) / "ray", scheduler="fifo", search="random", args=args, seed=seed)
            tpe = sweep(base, Path(tmp) / "ray", scheduler="asha", search="optuna", args=args, seed=seed,
                        grace=grace, rf=rf)
            key = lambda c: tuple(round(c[k], 12) for k in sorted(SPACE))  # noqa: E731
            same = sorted(map(key, asha["configs"].values())) == sorted(map(key, fifo["configs"].values()))
            row = {"seed": seed, "same_configs_asha_fifo": same,
                   "configs": [fifo["configs"][t] for t in fifo["order"]],
                   "asha": summary(asha["hist"], asha["configs"], list(asha["hist"])),
                   "fifo": summary(fifo["hist"], fifo["configs"], list(fifo["hist"])),
                   "tpe_asha": summary(tpe["hist"], tpe["configs"], list(tpe["hist"])),
                   **{a: summary(m["hist"], m["configs"], list(m["hist"])) for a, m in more.items()},
                   "wall_s": {"asha": round(asha["wall_s"], 1), "fifo": round(fifo["wall_s"], 1),
                              "tpe_asha": round(tpe["wall_s"], 1)}}
            n2x = min(len(fifo["order"]), max(1, 2 * row["asha"]["trial_epochs"] // args.epochs))
            row["random_2x"] = summary(fifo["hist"], fifo["configs"], fifo["order"][:n2x])
            resolved = resolve(replace(base, cpus_per_worker=1))
            _, refs = run_data(resolved)
            for arm in arms:
                w = row[arm]
                w["winner_test_acc"] = test_acc(resolved, refs, w["winner_config"], w["winner_epoch"], split)
            per_seed.append(row)
            print(f"seed {seed}: " + ", ".join(f"{a} {row[a]['trial_epochs']} ep / val {row[a]['best_val_acc']:.4f} "
                                               f"/ test {row[a]['winner_test_acc']:.4f}" for a in arms)
                  + f"; same configs ASHA/FIFO: {same}", flush=True)
    return per_seed, n_val


def _report(args, per_seed, n_val, arms, grace, rf, extra) -> None:
    def stat(arm, k):
        v = np.array([r[arm][k] for r in per_seed], dtype=float)
        return float(v.mean()), float(v.std())

    table = {a: {k: stat(a, k) for k in ("trial_epochs", "best_val_acc", "winner_test_acc")} for a in arms}
    fifo_ep = table["fifo"]["trial_epochs"][0]
    print(f"\ndigits, {args.model}, {args.trials} trials x <= {args.epochs} epochs, 1 at a time, seeds {args.seeds}; "
          f"asha: grace {grace}, reduction factor {rf:g}; {n_val} val examples "
          f"(1 example = {100 / n_val:.2f} points); shared 2-core machine")
    print(f"{'arm':<11}{'trial-epochs':>14}{'x FIFO':>8}{'best val/acc':>20}{'winner test/acc':>20}")
    for a in arms:
        t = table[a]
        print(f"{a:<11}{t['trial_epochs'][0]:>14.1f}{t['trial_epochs'][0] / fifo_ep:>8.2f}"
              f"{t['best_val_acc'][0]:>12.4f} ±{t['best_val_acc'][1]:.4f}"
              f"{t['winner_test_acc'][0]:>12.4f} ±{t['winner_test_acc'][1]:.4f}")
    ratio = table["asha"]["trial_epochs"][0] / fifo_ep
    gap = (table["fifo"]["best_val_acc"][0] - table["asha"]["best_val_acc"][0]) * 100
    tpe_gap = (table["tpe_asha"]["best_val_acc"][0] - table["asha"]["best_val_acc"][0]) * 100
    print(f"ASHA/FIFO trial-epochs {ratio:.2f}x (target <= 0.35x): {'met' if ratio <= 0.35 else 'NOT met'}; "
          f"mean best val/acc FIFO - ASHA {gap:+.2f} points (target within 0.3): {'met' if abs(gap) <= 0.3 else 'NOT met'}")
    print(f"TPE+ASHA - random+ASHA mean best val/acc: {tpe_gap:+.2f} points; "
          f"same sampled configs in ASHA and FIFO for every seed: {all(r['same_configs_asha_fifo'] for r in per_seed)}")
    out = REPO / "benchmarks" / "results" / "tune_asha_vs_fifo.json"
    write_results(out, {"benchmark": "tune_asha_vs_fifo", "model": args.model, "trials": args.trials,
                        "epochs": args.epochs, "seeds": args.seeds, "concurrent": 1, "grace_period": grace,
                        "reduction_factor": rf, "extra_asha_arms": {a: list(v) for a, v in extra.items()},
                        "optuna_startup_trials": args.startup,
                        "val_examples": n_val, "summary": table, "per_seed": per_seed,
                        "trial_epochs_ratio": round(ratio, 3), "best_val_acc_gap_points": round(gap, 2),
                        "tpe_minus_random_asha_points": round(tpe_gap, 2),
                        "note": "2 shared cores with other jobs running: wall times are inflated; trial-epochs "
                                "and accuracies do not depend on load"})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
