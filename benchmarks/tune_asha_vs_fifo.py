"""Does ASHA save trial-epochs without losing the best model, and what does Tune itself cost?

Same sweep twice in one process (digits, small_cnn, 1 worker per trial, one trial at a time,
the same seeded random configs): ASHA (grace 2 epochs, reduction factor 2: the params.yaml
defaults; --grace / --reduction-factor to change) and FIFO (every
trial runs max_epochs). Reports total trial-epochs and CPU-seconds in epochs, the best
validation accuracy of each, and Tune's overhead: the sweep's wall time against
(a) the trials' own wall times (Tune's scheduling and bookkeeping) and (b) the time the
trials spent in epochs (everything else: above all each trial's Ray Train worker-group start-up).

    python -m benchmarks.tune_asha_vs_fifo [--trials 8 --epochs 8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_results
from tests.demo_data import write_digits_split
from components.runtime import init_ray
from components.training.data import input_shape, read_split
from components.training.driver import Scaling
from components.training.loop import LoopConfig
from components.tuning.sweep import SweepOptions, patient_worker_start, run_sweep, trial_histories

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
         "weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
         "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}
# On 2 cores with 1 CPU per trial worker plus each trial's own 0.01 CPU, two trials need 2.02
# CPUs: only one runs at a time whatever max_concurrent_trials says, so say 1.
CONCURRENT = 1


def one_sweep(split: Path, storage: Path, *, scheduler: str, trials: int, epochs: int, seed: int,
              grace: int = 2, reduction_factor: float = 2.0) -> dict:
    base = LoopConfig(data_dir=str(split), n_classes=10, input_shape=input_shape(split), seed=seed)
    options = SweepOptions(num_samples=trials, max_concurrent_trials=CONCURRENT, scheduler=scheduler,
                           max_epochs=epochs, grace_period=grace, reduction_factor=reduction_factor, seed=seed,
                           resume=False)
    t0 = time.perf_counter()
    sweep = run_sweep(base, space=SPACE, options=options, scaling=Scaling(num_workers=1), storage_path=str(storage),
                      name=f"bench-{scheduler}")
    wall = time.perf_counter() - t0
    hist = trial_histories(sweep.grid)
    trial_wall = sum(h[-1]["time_total_s"] for h in hist.values() if h)
    in_epochs = sum(e["epoch_s"] for h in hist.values() for e in h)
    return {"scheduler": scheduler, "trials": len(hist), "trial_epochs": sum(len(h) for h in hist.values()),
            "epochs_per_trial": sorted(len(h) for h in hist.values()),
            "best_val_acc": max(e["val/acc"] for h in hist.values() for e in h),
            "best_val_loss": min(e["val/loss"] for h in hist.values() for e in h),
            "sweep_wall_s": round(wall, 1), "sum_trial_wall_s": round(trial_wall, 1),
            "cpu_s_in_epochs": round(in_epochs, 1),
            # Ideal wall with CONCURRENT trials at once: sum / CONCURRENT.
            "overhead_vs_trial_wall": round(wall / (trial_wall / CONCURRENT) - 1, 3),
            "overhead_vs_epochs": round(wall / (in_epochs / CONCURRENT) - 1, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grace", type=int, default=2, help="ASHA grace period (params.yaml tune default: 2)")
    ap.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA reduction factor (default: 2)")
    ap.add_argument("--quick", action="store_true", help="4 trials x 4 epochs")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs = 4, 4
    logging.basicConfig(level=logging.WARNING)
    patient_worker_start()
    init_ray(num_cpus=2, train_poll_s=0.25)
    with tempfile.TemporaryDirectory() as tmp:
        split = write_digits_split(Path(tmp) / "data")
        runs = [one_sweep(split, Path(tmp) / "ray", scheduler=s, trials=args.trials, epochs=args.epochs,
                          seed=args.seed, grace=args.grace, reduction_factor=args.reduction_factor)
                for s in ("asha", "fifo")]
        n_val = read_split(str(split), "val").num_rows
    asha, fifo = runs
    print(f"digits, small_cnn, {args.trials} trials x <= {args.epochs} epochs, {CONCURRENT} at a time, seed "
          f"{args.seed}, same random configs; ASHA grace {args.grace}, reduction factor {args.reduction_factor:g}; "
          f"{n_val} val examples (1 example = {100 / n_val:.2f} points)")
    print(f"{'scheduler':<10}{'trial-epochs':>13}{'cpu-s epochs':>13}{'best val/acc':>13}{'sweep s':>9}"
          f"{'sum trial s':>12}{'ovh/trial':>10}{'ovh/epochs':>11}")
    for r in runs:
        print(f"{r['scheduler']:<10}{r['trial_epochs']:>13}{r['cpu_s_in_epochs']:>13.1f}{r['best_val_acc']:>13.4f}"
              f"{r['sweep_wall_s']:>9.1f}{r['sum_trial_wall_s']:>12.1f}{r['overhead_vs_trial_wall']:>10.1%}"
              f"{r['overhead_vs_epochs']:>11.1%}")
    ratio = asha["trial_epochs"] / fifo["trial_epochs"]
    gap = (fifo["best_val_acc"] - asha["best_val_acc"]) * 100
    print(f"ASHA/FIFO trial-epochs: {ratio:.2f}x (target <= 0.5x): {'met' if ratio <= 0.5 else 'NOT met'}; "
          f"best val/acc gap: {gap:+.2f} points (target within 0.5): {'met' if abs(gap) <= 0.5 else 'NOT met'}")
    print(f"ASHA epochs per trial: {asha['epochs_per_trial']}; sweep wall ASHA / FIFO: "
          f"{asha['sweep_wall_s'] / fifo['sweep_wall_s']:.2f}x")
    out = REPO / "benchmarks" / "results" / "tune_asha_vs_fifo.json"
    write_results(out, {"benchmark": "tune_asha_vs_fifo", "trials": args.trials, "epochs": args.epochs,
                               "seed": args.seed, "concurrent": CONCURRENT, "grace_period": args.grace,
                               "reduction_factor": args.reduction_factor, "val_examples": n_val,
                               "asha": asha, "fifo": fifo,
                               "trial_epochs_ratio": round(ratio, 3), "best_val_acc_gap_points": round(gap, 2)})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
