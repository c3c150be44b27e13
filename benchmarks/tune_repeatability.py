"""Does the same sweep give the same result twice, and what does making it so cost?

The demo's sweep (digits, ``--model``, ``--trials`` trials of at most ``--epochs`` epochs, ASHA
grace 2 / reduction 2, 2 trials at a time, seeded search, one worker per trial) run
``--repeats`` times with each scheduler, interleaved:

- ``ray_asha``: Ray's ``ASHAScheduler``, what trainwise used before: a trial is judged at a
  rung against whatever the other trials have recorded there so far;
- ``ordered_asha``: :class:`trainwise.components.tuning.ordered_asha.OrderedASHA` (now ``tune.scheduler:
  asha``): the same rule, judged against the trials created before it (a trial ahead of an
  earlier one waits paused).

``--search optuna`` runs TPE instead of random search (ordered proposals with ordered_asha, as the
sweep does; Tune's own order with ray_asha). Reported per scheduler: how many different outcomes
(which trials ran how many epochs, and the winner) the repeats gave, the sweep wall (mean) and
its ratio, and trial-epochs.

    python -m benchmarks.tune_repeatability [--repeats 4 --trials 8 --epochs 8 --model small_cnn]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from benchmarks._results import write_results
from trainwise.components.ray_start import init_ray
from trainwise.components.training.data import input_shape
from trainwise.components.training.driver import Scaling
from trainwise.components.tuning import sweep as sweep_module
from trainwise.components.tuning.sweep import patient_worker_start, run_sweep, trial_histories
from tests.params import loop_config, sweep_options
from tests.demo_data import write_digits_split

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"type": "loguniform", "low": 0.0003, "high": 0.03},          # params.yaml's tune.search_space
         "weight_decay": {"type": "loguniform", "low": 0.000001, "high": 0.01},
         "dropout": {"type": "uniform", "low": 0.0, "high": 0.5}}


def _ray_asha(options, *, key, monitor, direct):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=options.max_epochs, grace_period=options.grace_period,
                         reduction_factor=options.reduction_factor)


class _Unordered:
    """Tune's own order for the searcher too (ray_asha arm): BudgetedSearch without ``ordered``."""

    def __init__(self, real):
        self.real = real

    def __call__(self, *a, **kw):
        kw["ordered"] = False
        return self.real(*a, **kw)


def one(base, storage: Path, name: str, args, scheduler: str) -> dict:
    options = sweep_options(num_samples=args.trials, max_concurrent_trials=2, scheduler="asha", search_alg=args.search,
                            optuna_startup_trials=4, max_epochs=args.epochs, grace_period=2, reduction_factor=2,
                            seed=0, resume=False, budget_usd=None, time_budget_s=None)
    from trainwise.components.tuning import budget

    patches = []
    if scheduler == "ray_asha":
        patches = [mock.patch.object(sweep_module, "_scheduler", _ray_asha),
                   mock.patch("trainwise.components.tuning.budget.BudgetedSearch", _Unordered(budget.BudgetedSearch))]
    for p in patches:
        p.start()
    try:
        t0 = time.perf_counter()
        out = run_sweep(base, space=SPACE, options=options, scaling=Scaling(num_workers=1), storage_path=str(storage),
                        name=name)
        wall = time.perf_counter() - t0
    finally:
        for p in patches:
            p.stop()
    hist = trial_histories(out.grid, metric=options.metric, mode=options.mode)
    trials = sorted(((round(r.config["lr"], 10), round(r.config["dropout"], 10)), len(hist[Path(r.path).name]),
                     round(min(h["objective"] for h in hist[Path(r.path).name]), 6)) for r in out.grid)
    winner = min(trials, key=lambda t: t[2])
    paused = getattr(out.monitor.scheduler, "num_paused", None)  # OrderedASHA counts its pauses
    return {"wall_s": round(wall, 1), "trial_epochs": sum(t[1] for t in trials),
            "outcome": [[list(c), e, o] for c, e, o in trials], "winner": [list(winner[0]), winner[1], winner[2]],
            "pauses": paused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--search", default="random", choices=["random", "optuna"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    patient_worker_start()
    init_ray(num_cpus=2, train_poll_s=0.25)
    runs: dict[str, list[dict]] = {"ray_asha": [], "ordered_asha": []}
    with tempfile.TemporaryDirectory() as tmp:
        split = write_digits_split(Path(tmp) / "data")
        base = loop_config(data_dir=str(split), input_shape=input_shape(split), model=args.model)
        one(base, Path(tmp) / "ray", "warm-up", args, "ordered_asha")  # first-use costs (imports, object store)
        for i in range(args.repeats):
            for name in runs:  # interleaved: the machine's drift hits both alike
                r = one(base, Path(tmp) / "ray", f"{name}-{i}", args, name)
                runs[name].append(r)
                print(name, i, {k: r[k] for k in ("wall_s", "trial_epochs", "winner", "pauses")},
                      flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"distinct_outcomes": len({str(r["outcome"]) for r in rs}),
                         "distinct_winners": len({str(r["winner"]) for r in rs}),
                         "wall_s_mean": round(statistics.mean(r["wall_s"] for r in rs), 1),
                         "trial_epochs": sorted({r["trial_epochs"] for r in rs})}
    ratio = round(summary["ordered_asha"]["wall_s_mean"] / summary["ray_asha"]["wall_s_mean"], 2)
    print(f"\ndigits, {args.model}, {args.search} search, {args.trials} trials x <= {args.epochs} epochs, ASHA g2 r2, "
          f"2 at a time, {args.repeats} repeats each")
    print(f"{'scheduler':<14}{'outcomes':>9}{'winners':>9}{'sweep s':>9}  trial-epochs")
    for name, s in summary.items():
        print(f"{name:<14}{s['distinct_outcomes']:>9}{s['distinct_winners']:>9}{s['wall_s_mean']:>9.1f}  "
              f"{s['trial_epochs']}")
    print(f"ordered / ray sweep wall: {ratio:.2f}x")
    name = f"tune_repeatability{'' if args.search == 'random' else '_' + args.search}"
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    write_results(out, {"benchmark": name, "trials": args.trials, "epochs": args.epochs,
                        "model": args.model, "search": args.search, "repeats": args.repeats, "summary": summary,
                        "wall_ratio_ordered_vs_ray": ratio, "runs": runs,
                        "note": "each arm's repeats interleaved with the other's, in one process"})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
