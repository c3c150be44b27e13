"""Ray Tune sweep whose trials run the same training loop as the `train` stage.

Two trial paths, one loop (:func:`trainwise.components.training.loop.run_loop`):

- one worker per trial (``tune.workers_per_trial: 1``, the default): the trial's own Tune actor
  runs the loop directly (:class:`~trainwise.components.training.loop.TuneSession`), reporting every epoch
  to Tune with its checkpoint; actors are reused between trials. No Train controller, placement
  group or worker group is built, which on 2 cores cost ~9 s per trial for ~1 s of training.
  The data is read and resolved once per sweep, not once per trial.
- more workers: each Tune trial is a function that builds a ``TorchTrainer`` through
  :func:`trainwise.components.training.driver.fit` with a Tune report callback (the Ray Train v2
  Train-in-Tune pattern); the trial itself holds almost no resources (the Train workers do).

Either way a trial trains like the final model (batch norm is synchronised across ranks, see
components/training/loop.py); tests/stages/test_tune.py checks both paths report the same metrics. The search algorithm (random or Optuna TPE,
both seeded) proposes configs, the scheduler (ASHA or FIFO) stops weak trials at rungs (ASHA
judged in trial-creation order, so concurrency does not change its decisions), and
:mod:`trainwise.components.tuning.budget` stops the sweep when its dollar or time budget is spent.

An interrupted sweep resumes: the experiment lives at ``storage_path/name``; run_sweep with
the same name restores it (``Tuner.restore``), finished trials are kept and unfinished ones
resume from their last checkpoint (the Tune trial's own on the direct path; on the Train path,
each trial's Train run is named after the trial).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Mapping

from trainwise.components.training.driver import Scaling, fit, resolve, run_data
from trainwise.components.tuning.space import apply_trial_config, to_tune_space

# A multi-worker trial's own actor only waits on its Train workers, which Ray Train places in a
# placement group of their own. It holds no CPU, so it never takes a slice of a node its workers
# need: with 0.01 CPU per trial actor, two 1-CPU nodes could no longer hold a 1-CPU worker and
# the sweep waited forever (issue 18). Ray rejects an empty bundle, hence a little memory.
TRIAL_DRIVER = {"cpu": 0, "memory": 256 * 2**20}
# Reported with every epoch: the chosen metric at the trial's best epoch so far. The search
# algorithm, ASHA and the final pick all use it, so a trial is judged by its best epoch (the
# one `train` would keep), not by a noisy last one.
OBJECTIVE = "objective"


WORKER_START_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def patient_worker_start(seconds: int = 600) -> None:
    """Call before Ray starts (its processes inherit the environment then).

    Ray Train gives a trial's worker group 60 s to start, then tears it down and tries again.
    On a busy machine a fresh worker's first import of torch can take longer than that, and the
    trial then retries forever without training an epoch (seen on a 2-core machine shared with
    other jobs). An explicit value in the environment wins.
    """
    os.environ.setdefault(WORKER_START_ENV, str(seconds))


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """What a sweep runs with. The keys of params.yaml's ``tune`` section have no default here (the
    schema holds them: build with :meth:`from_params`); the rest are decided by the caller."""

    num_samples: int
    max_concurrent_trials: int
    search_alg: str                   # random | optuna
    optuna_startup_trials: int
    scheduler: str                    # asha | fifo
    max_epochs: int
    grace_period: int
    reduction_factor: float
    metric: str
    mode: str                         # min | max (TuneParams.mode, from the metric)
    seed: int
    budget_usd: float | None
    time_budget_s: float | None
    resume: bool
    usd_per_trial_hour: float = 0.0   # what one trial's resources cost per hour (components/tuning/plan.py)
    # auto: one-worker trials train in their Tune actor, others through a TorchTrainer; train:
    # always a TorchTrainer (tests compare the two paths with it)
    trial_path: str = "auto"

    @classmethod
    def from_params(cls, tune: Mapping, **overrides) -> "SweepOptions":
        """From the ``tune`` section of params.yaml whole (a mapping, or its pydantic model): every
        key that is a field here, then ``overrides``. The section's schema holds the defaults and
        checked the values; nothing is copied by hand, so a new key cannot be dropped on the way."""
        names = [f.name for f in fields(cls)]
        if isinstance(tune, Mapping):
            picked = {k: tune[k] for k in names if k in tune}
        else:  # the pydantic section: its derived values (``mode``, from the metric) too
            picked = {k: getattr(tune, k) for k in names if hasattr(tune, k)}
        return cls(**{**picked, **overrides})


def _report_callback(metric: str, mode: str):
    from ray.tune.integration.ray_train import TuneReportCallback

    better = min if mode == "min" else max

    class ObjectiveReport(TuneReportCallback):
        """Adds OBJECTIVE (best-so-far of ``metric``) to what rank 0 reports to Tune."""

        best = None

        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            value = m[metric] if metric != "val/loss" else m.get("val/best_loss", m[metric])  # survives resumes
            self.best = value if self.best is None else better(self.best, value)
            super().after_report(run_context, [{**m, OBJECTIVE: self.best}, *metrics[1:]], checkpoint)

    return ObjectiveReport()


def _trial(config: dict, *, base, scaling: Scaling, storage_path: str, metric: str, mode: str) -> None:
    from ray import tune

    result = fit(apply_trial_config(base, config), scaling=scaling, storage_path=storage_path,
                 name=tune.get_context().get_trial_name(), callbacks=[_report_callback(metric, mode)])
    if result.error:
        raise result.error


def _direct_trial(config: dict, *, base, refs: dict | None, datasets: dict | None, metric: str, mode: str) -> None:
    """A one-worker trial: the training loop itself, in this Tune trial actor."""
    from trainwise.components.training.loop import DATA_REFS, TuneSession, run_loop

    loop = apply_trial_config(base, config)
    better = min if mode == "min" else max

    def objective(metrics: dict, history: list[dict]) -> dict:
        # from the whole history (restored from the checkpoint on a resume), like the Train path
        return {**metrics, OBJECTIVE: better(h[metric] for h in history)}

    run_loop({**loop.to_dict(), **({DATA_REFS: refs} if refs else {})},
             TuneSession(use_gpu=loop.use_gpu, datasets=datasets, decorate=objective))


def _trial_id(trial) -> str:
    return f"trial_{trial.trial_id}"


def _search_alg(options: SweepOptions):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if options.search_alg == "optuna":
        sampler = optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=options.optuna_startup_trials)
    elif options.search_alg == "random":
        # Random search through Optuna too: one seeded Searcher the budget can close (Tune's
        # BasicVariantGenerator is not a Searcher and cannot be wrapped).
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        raise ValueError(f"tune.search_alg: unknown {options.search_alg!r}; use random or optuna")
    return OptunaSearch(sampler=sampler)


def _scheduler(options: SweepOptions, *, key: str, monitor, direct: bool):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from trainwise.components.tuning.ordered_asha import OrderedASHA

    if options.scheduler == "asha" and not direct:
        # Multi-worker trials: a pause would tear down the trial's Train worker group and start a
        # new one (~20 s on 2 cores) and is not covered by our tests; Ray's ASHA, which never
        # pauses, as before. Its decisions depend on report order (docs/tuning.md).
        return ASHAScheduler(time_attr="epoch", max_t=options.max_epochs, grace_period=options.grace_period,
                             reduction_factor=options.reduction_factor)
    if options.scheduler == "asha":
        # Ray's ASHA rule, judged in trial-creation order: the same decisions at any concurrency
        # (components/tuning/ordered_asha.py); its rungs are saved with the monitor's state
        monitor.scheduler = OrderedASHA(key=key, time_attr="epoch", max_t=options.max_epochs,
                                        grace_period=options.grace_period,
                                        reduction_factor=options.reduction_factor, is_exhausted=monitor.exhausted)
        return monitor.scheduler
    if options.scheduler == "fifo":
        return FIFOScheduler()
    raise ValueError(f"tune.scheduler: unknown {options.scheduler!r}; use asha or fifo")


@dataclass
class SweepOutcome:
    grid: object            # Tune's ResultGrid
    monitor: object         # trainwise.components.tuning.budget.SweepMonitor
    resumed: bool           # restored an interrupted sweep instead of starting one
    experiment_path: str


def run_sweep(base, *, space: dict[str, dict], options: SweepOptions, scaling: Scaling,
              storage_path: str, name: str) -> SweepOutcome:
    """Run (or resume) the sweep named ``name`` under ``storage_path``.

    ``base`` is the training config every trial starts from (a LoopConfig); each trial sets its
    sampled values on it (:func:`apply_trial_config`) and runs ``options.max_epochs`` epochs
    at most, without patience (the scheduler decides).
    """
    from ray import tune

    from trainwise.components.tuning.budget import BudgetedSearch, BudgetStopper, SweepMonitor
    from trainwise.components.tuning.cleanup import reap_after_sweep

    storage_path = os.path.abspath(storage_path) if "://" not in storage_path else storage_path
    experiment_path = f"{storage_path}/{name}"
    # Tune saves its experiment state on a timer ("auto": seconds to minutes). A crash loses
    # what happened since; trials are tens of seconds each here, so save often (it is small).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    direct = scaling.num_workers == 1 and options.trial_path == "auto"
    monitor = SweepMonitor(name, usd_per_hour=options.usd_per_trial_hour, budget_usd=options.budget_usd,
                           time_budget_s=options.time_budget_s, metric=options.metric, reap_train_groups=not direct)
    base = replace(base, epochs=options.max_epochs, patience=None)
    if options.trial_path not in ("auto", "train"):
        raise ValueError(f"SweepOptions.trial_path={options.trial_path!r}; choose auto or train")
    if direct:
        # Resolved (modality, shape, tokenizer) and read once here; every trial gets the rows
        # through the object store, as the Train path's workers do.
        base = resolve(replace(base, use_gpu=scaling.use_gpu, cpus_per_worker=scaling.cpus_per_worker))
        datasets, refs = run_data(base)
        trainable = tune.with_resources(
            tune.with_parameters(_direct_trial, base=base, refs=refs, datasets=datasets, metric=options.metric,
                                 mode=options.mode),
            {"cpu": scaling.cpus_per_worker, **({"gpu": scaling.gpus_per_worker} if scaling.use_gpu else {})})
    else:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base, scaling=scaling, storage_path=f"{storage_path}/{name}-trials",
                                 metric=options.metric, mode=options.mode),
            TRIAL_DRIVER)

    scheduler = _scheduler(options, key=name, monitor=monitor, direct=direct)  # before a restore: unpickles as this
    resumed = options.resume and tune.Tuner.can_restore(experiment_path)
    if resumed:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune_space(space),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE, mode=options.mode,
                num_samples=options.num_samples,
                max_concurrent_trials=options.max_concurrent_trials,
                # TPE learns from finished trials: ordered, so it proposes the same configs on every run
                search_alg=BudgetedSearch(_search_alg(options), key=name, max_concurrent=options.max_concurrent_trials,
                                          ordered=options.search_alg == "optuna"),
                scheduler=scheduler,
                trial_dirname_creator=_trial_id,
                trial_name_creator=_trial_id,
                # a finished trial's actor (process up, torch imported) runs the next trial
                # (benchmarks/tune_knobs.py)
                reuse_actors=direct,
            ),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                      stop=BudgetStopper(name), callbacks=[monitor],
                                      # Every checkpoint is kept while the sweep runs (Tune's default):
                                      # Tune saves its experiment state every few seconds, so after a kill
                                      # it can name a trial checkpoint older than the latest; with only
                                      # the latest kept, that one was gone and the resumed trial failed
                                      # ("does not exist on storage anymore", seen in CI). Pruned after.
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
        )
    # Tune asks our searcher for one trial at a time until one is pending ("auto" for a custom
    # searcher): let as many wait as may run, so a free CPU finds its next trial ready
    # (docs/tuning.md, "Knobs"). Read when fit() builds its controller; a user's value wins.
    pending = "TUNE_MAX_PENDING_TRIALS_PG"
    ours = direct and pending not in os.environ
    if ours:
        os.environ[pending] = str(options.max_concurrent_trials)
    try:
        grid = tuner.fit()
    finally:
        if ours:
            os.environ.pop(pending, None)
    if not direct:  # only Train worker groups leave placement groups behind
        reap_after_sweep()
    else:  # a finished trial is never restored from a checkpoint: its latest is kept to look at
        prune_trial_checkpoints(experiment_path)
    return SweepOutcome(grid=grid, monitor=monitor, resumed=resumed, experiment_path=experiment_path)


def prune_trial_checkpoints(experiment_path: str) -> int:
    """Delete every trial's checkpoints but its latest (``checkpoint_NNNNNN``, the highest number)
    under ``experiment_path`` (a local path or a pyarrow-supported URI); returns how many went.
    Only for a sweep that has ended: an interrupted one resumes from whichever one Tune's saved
    state names. pyarrow.fs, as Tune resolves its own storage_path (the stage-file copies in
    components/cluster/storage.py use fsspec)."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(experiment_path) if "://" in experiment_path else \
        (fs.LocalFileSystem(), experiment_path)
    removed = 0
    for trial in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True)):
        if trial.type != fs.FileType.Directory or not trial.base_name.startswith("trial_"):
            continue
        checkpoints = sorted(info.path for info in filesystem.get_file_info(fs.FileSelector(trial.path))
                             if info.type == fs.FileType.Directory and info.base_name.startswith("checkpoint_"))
        for path in checkpoints[:-1]:
            filesystem.delete_dir(path)
            removed += 1
    return removed


def trial_histories(grid, *, metric: str, mode: str) -> dict[str, list[dict]]:
    """Every trial's epochs, each once, keyed by trial name: from its latest checkpoint (what it
    trained, across ordered ASHA's pauses), with Tune's own keys from its reports
    (:func:`trainwise.components.tuning.analysis.trial_history` says why not from Tune's record alone)."""
    from trainwise.components.tuning.analysis import HISTORY_KEYS, trial_history

    out = {}
    for r in grid:
        df = r.metrics_dataframe
        reported = {}
        if df is not None and len(df) and "epoch" in df:
            for rec in df.to_dict("records"):  # the last report wins if an epoch was reported twice
                reported[int(rec["epoch"])] = {k: v for k, v in rec.items() if "/" in k or k in HISTORY_KEYS}
        out[os.path.basename(r.path)] = trial_history(_ran(r), [reported[e] for e in sorted(reported)],
                                                      metric=metric, mode=mode)
    return out


def _ran(result) -> list[dict]:
    """The history in a trial's latest checkpoint: the Tune trial's own (direct path), or its Train
    run's latest, whose path the report callback adds to every report (Train path)."""
    import logging

    from ray.tune import Checkpoint
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    from trainwise.components.training.driver import checkpoint_history

    checkpoint = result.checkpoint
    if checkpoint is None and (result.metrics or {}).get(CHECKPOINT_PATH_KEY):
        checkpoint = Checkpoint(result.metrics[CHECKPOINT_PATH_KEY], filesystem=result.filesystem)
    if checkpoint is None:
        return []
    try:
        return checkpoint_history(checkpoint)
    except FileNotFoundError as err:
        logging.getLogger("trainwise").warning("%s: its checkpoint is gone (%s); its epochs are Tune's record, "
                                               "which can miss the epochs before a pause", result.path, err)
        return []


class SweepInterrupted(RuntimeError):
    """The sweep ended with a trial neither finished, failed nor stopped by the budget."""


def sweep_rows(sweep: SweepOutcome, *, space_keys: list[str], options: SweepOptions,
               patience: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """The trials table (one row per trial, see analysis.trial_row) and every trial's history."""
    from trainwise.components.tuning.analysis import trial_row

    monitor, rows = sweep.monitor, []
    histories = trial_histories(sweep.grid, metric=options.metric, mode=options.mode)
    number = {t: i + 1 for i, t in enumerate(monitor.created)}
    for r in sweep.grid:
        trial = os.path.basename(r.path.rstrip("/"))
        history = histories.get(trial, [])
        trial_id = trial.removeprefix("trial_")
        # stopped by the budget, or never resumed after it was spent (a trial ASHA had paused at a rung)
        budget = trial_id in monitor.stopped_by_budget or (monitor.exhausted_by is not None
                                                           and (not history or trial_id not in monitor.done))
        if not (r.error or budget or trial_id in monitor.done):
            raise SweepInterrupted(f"the sweep was interrupted before {trial} finished; run it again to resume "
                                   f"(state in {sweep.experiment_path})")
        rows.append(trial_row(trial, {k: r.config.get(k) for k in space_keys}, history, metric=options.metric,
                              mode=options.mode, patience=patience, usd_per_hour=options.usd_per_trial_hour,
                              max_epochs=options.max_epochs, error=r.error is not None, budget=budget,
                              scheduler=options.scheduler))
        # Ray's trial ids are random; the number (1 = the searcher's first proposal) is the same on every run
        rows[-1]["number"] = number.get(trial_id)
    return sorted(rows, key=lambda row: row["number"] or len(number) + 1), histories
