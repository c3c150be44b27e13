"""What each Tune setting for many short trials is worth, measured side by side in one run.

The same sweep (digits, ``--model``, ``--trials`` trials x ``--epochs`` epochs, FIFO, 2 at a
time, seeded random search, one worker per trial) with trainwise's settings and with one of
them changed at a time:

- ``chosen``: direct trial path, actors reused, pending trials = trials at once, no result buffering;
- ``no_reuse``: a new trial actor (process + ``import torch``) per trial;
- ``pending_1``: Tune's "auto" for a custom searcher: one pending trial at a time;
- ``buffer_4``: Tune buffers up to 4 results per trial before processing them;
- ``torchtrainer``: every trial through a TorchTrainer (controller, placement group, worker
  group), the path before issue 15.

Reported: sweep wall, time in epochs, Tune overhead (wall x trials at once / time in epochs - 1)
and the ratio of each wall to ``chosen``'s.

    python -m benchmarks.tune_knobs [--trials 8 --epochs 2 --model mlp] [--skip-torchtrainer]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks._results import write_results
from trainwise.components.ray_start import init_ray
from trainwise.components.training.data import input_shape
from trainwise.components.training.driver import Scaling
from trainwise.components.tuning.sweep import patient_worker_start, run_sweep, trial_histories
from tests.params import loop_config, sweep_options
from tests.demo_data import write_digits_split

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
         "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}
ENV = ("TUNE_MAX_PENDING_TRIALS_PG", "TUNE_RESULT_BUFFER_LENGTH")


def one(base, storage: Path, name: str, args, *, env: dict, reuse: bool = True, path: str = "auto") -> dict:
    for k in ENV:
        os.environ.pop(k, None)
    os.environ.update(env)
    options = sweep_options(num_samples=args.trials, max_concurrent_trials=2, scheduler="fifo",
                            max_epochs=args.epochs, seed=0, resume=False, trial_path=path, budget_usd=None, time_budget_s=None)
    from ray import tune

    original = tune.TuneConfig.__init__

    def no_reuse(self, *a, **kw):  # the knob under test: reuse_actors off, all else the same
        kw["reuse_actors"] = False
        original(self, *a, **kw)

    if not reuse:
        tune.TuneConfig.__init__ = no_reuse
    try:
        t0 = time.perf_counter()
        out = run_sweep(base, space=SPACE, options=options, scaling=Scaling(num_workers=1), storage_path=str(storage),
                        name=name)
        wall = time.perf_counter() - t0
    finally:
        tune.TuneConfig.__init__ = original
    hist = trial_histories(out.grid, metric=options.metric, mode=options.mode)
    in_epochs = sum(e["epoch_s"] for h in hist.values() for e in h)
    return {"wall_s": round(wall, 1), "in_epochs_s": round(in_epochs, 2), "trial_epochs": sum(map(len, hist.values())),
            "overhead": round(wall * 2 / in_epochs - 1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--skip-torchtrainer", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    patient_worker_start()
    init_ray(num_cpus=2, train_poll_s=0.25)
    chosen_env = {"TUNE_MAX_PENDING_TRIALS_PG": "2", "TUNE_RESULT_BUFFER_LENGTH": "1"}
    variants = {"chosen": dict(env=chosen_env),
                "no_reuse": dict(env=chosen_env, reuse=False),
                "pending_1": dict(env={**chosen_env, "TUNE_MAX_PENDING_TRIALS_PG": "1"}),
                "buffer_4": dict(env={**chosen_env, "TUNE_RESULT_BUFFER_LENGTH": "4"})}
    if not args.skip_torchtrainer:
        variants["torchtrainer"] = dict(env=chosen_env, path="train")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        split = write_digits_split(Path(tmp) / "data")
        base = loop_config(data_dir=str(split), input_shape=input_shape(split), model=args.model)
        one(base, Path(tmp) / "ray", "warm-up", args, env=chosen_env)  # first-use costs (imports, object store)
        for name, kw in variants.items():
            rows[name] = one(base, Path(tmp) / "ray", name, args, **kw)
            print(name, rows[name], flush=True)
    for k in ENV:
        os.environ.pop(k, None)
    chosen = rows["chosen"]["wall_s"]
    print(f"\ndigits, {args.model}, {args.trials} trials x {args.epochs} epochs, FIFO, 2 at a time, 2 shared cores")
    print(f"{'variant':<14}{'sweep s':>9}{'x chosen':>10}{'in epochs s':>13}{'overhead':>10}")
    for name, r in rows.items():
        r["wall_vs_chosen"] = round(r["wall_s"] / chosen, 2)
        print(f"{name:<14}{r['wall_s']:>9.1f}{r['wall_vs_chosen']:>10.2f}{r['in_epochs_s']:>13.1f}{r['overhead']:>10.0%}")
    out = REPO / "benchmarks" / "results" / "tune_knobs.json"
    write_results(out, {"benchmark": "tune_knobs", "trials": args.trials, "epochs": args.epochs, "model": args.model,
                        "variants": rows, "note": "2 shared cores with other jobs running: compare the ratios"})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
