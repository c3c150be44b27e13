"""Ray Tune sweep whose trials are Ray Train runs of the same driver as the `train` stage.

Pattern (Ray Train v2): each Tune trial is a function that builds a ``TorchTrainer``
through :func:`components.training.driver.fit` with a ``TuneReportCallback``; the trial
itself holds almost no resources (the Train workers do), and ASHA stops weak trials early
on the chosen validation metric.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from components.training.driver import Scaling, fit
from components.training.loop import LoopConfig

# A trial's own actor only waits on its Train workers; Ray rejects an empty bundle ({"cpu": 0}).
TRIAL_DRIVER_CPU = 0.01


@dataclass(frozen=True)
class SweepOptions:
    num_samples: int = 8
    max_concurrent_trials: int = 2
    max_epochs: int = 10
    grace_period: int = 2
    reduction_factor: float = 2.0
    metric: str = "val/loss"
    mode: str = "min"
    seed: int = 0


def to_tune_space(space: dict[str, dict]) -> dict:
    """{"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}} -> Ray Tune domains."""
    from ray import tune

    out = {}
    for key, d in space.items():
        kind = d["type"]
        if kind == "loguniform":
            out[key] = tune.loguniform(d["low"], d["high"])
        elif kind == "uniform":
            out[key] = tune.uniform(d["low"], d["high"])
        elif kind == "randint":
            out[key] = tune.randint(int(d["low"]), int(d["high"]))
        elif kind == "choice":
            out[key] = tune.choice(list(d["values"]))
        else:
            raise ValueError(f"search_space.{key}.type: unknown distribution {kind!r}")
    return out


def _trial(config: dict, *, scaling: Scaling, storage_path: str) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    fit(LoopConfig(**config), scaling=scaling, storage_path=storage_path,
        name=tune.get_context().get_trial_name(), callbacks=[TuneReportCallback()])


def _progress_callback(metric: str):
    """A driver-side Tune callback that prints one line per trial result: the terminal's
    progress while Ray's own output stays off."""
    import logging

    from ray import tune

    log = logging.getLogger("trainwise")

    class Progress(tune.Callback):
        done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.info("trial_%s epoch %d  %s %.4f  val/acc %.4f", trial.trial_id, result.get("epoch", 0),
                     metric, result.get(metric, float("nan")), result.get("val/acc", float("nan")))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            log.info("trial_%s finished (%d trials done)", trial.trial_id, self.done)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            log.info("trial_%s failed (%d trials done): see %s", trial.trial_id, self.done, trial.local_path)

    return Progress()


def _trial_id(trial) -> str:
    return f"trial_{trial.trial_id}"


def run_sweep(base: LoopConfig, *, space: dict[str, dict], options: SweepOptions, scaling: Scaling,
              storage_path: str, name: str):
    """Run the sweep; returns Tune's ``ResultGrid``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    storage_path = os.path.abspath(storage_path) if "://" not in storage_path else storage_path
    # Trials run to max_epochs unless ASHA stops them; early stopping by patience is train's job.
    param_space = {**replace(base, epochs=options.max_epochs, patience=None).to_dict(),
                   **to_tune_space(space)}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, scaling=scaling, storage_path=f"{storage_path}/{name}-trials"),
        {"cpu": TRIAL_DRIVER_CPU})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=options.num_samples,
            max_concurrent_trials=options.max_concurrent_trials,
            search_alg=BasicVariantGenerator(random_state=options.seed),
            trial_dirname_creator=_trial_id,
            trial_name_creator=_trial_id,
            scheduler=ASHAScheduler(time_attr="epoch", metric=options.metric, mode=options.mode,
                                    max_t=options.max_epochs, grace_period=options.grace_period,
                                    reduction_factor=options.reduction_factor),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                  callbacks=[_progress_callback(options.metric)]),
    )
    return tuner.fit()


def trial_rows(grid, *, metric: str, mode: str, space_keys: list[str]) -> list[dict]:
    """One summary row per trial: sampled config, best metric and epoch, epochs run, outcome."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        row = {"trial": os.path.basename(r.path), **{k: r.config[k] for k in space_keys},
               "status": "error" if r.error else "ok", "epochs": 0}
        if df is not None and len(df) and metric in df:
            best = df.loc[df[metric].idxmin() if mode == "min" else df[metric].idxmax()]
            last = df.iloc[-1]
            row.update({"epochs": int(last["epoch"]), f"best_{metric}": float(best[metric]),
                        "best_epoch": int(best["epoch"]), "val/acc": float(best["val/acc"]),
                        "gap/acc": float(last["gap/acc"]), "time_s": float(last["time_total_s"])})
        rows.append(row)
    return rows
