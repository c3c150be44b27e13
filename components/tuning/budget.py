"""Driver-side pieces of a sweep: progress lines, the dollar / time budget, and why trials stopped.

Three Tune hooks share one :class:`SweepMonitor`:

- the monitor itself is a Tune ``Callback``: it prints progress, prices every trial from its
  reported wall time (resources x ``cost.*`` rates) and keeps the sweep's elapsed time;
- :class:`BudgetStopper` (``RunConfig(stop=...)``) ends each running trial at its next report
  once the budget is spent, and ends trials that never started;
- :class:`BudgetedSearch` wraps the search algorithm: once the budget is spent it says
  FINISHED, so no new trial starts. It also enforces ``max_concurrent_trials`` itself, counting
  the trials a resumed sweep brought back (Ray's ConcurrencyLimiter does not save its count).

Tune pickles its callbacks, stopper and searcher into the experiment directory and unpickles
them on ``Tuner.restore``; a monitor pickles as its key and unpickles as the live instance
registered in this process, so the three always share one state. The monitor's own state
(time spent, trials stopped by the budget) is saved with Tune's experiment state
(``get_state`` / ``set_state``), so a resumed sweep keeps counting where it left off.
"""

from __future__ import annotations

import logging
import time

from ray import tune
from ray.tune.search import Searcher

from trainwise.components.tracking.cost import Rates, reserved_cost
from trainwise.components.tuning.cleanup import reap_orphaned_train_groups

log = logging.getLogger("trainwise")

_LIVE: dict[str, "SweepMonitor"] = {}
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
REAP_EVERY_S = 10.0  # how often to look for placement groups of stopped trials (trainwise.components.tuning.cleanup)


ACCELERATOR_PREFIX = "accelerator_type:"  # the resource Ray gives a GPU node, e.g. accelerator_type:H100


def trial_gpu_type(nodes: list[tuple[dict[str, float], int]], rates: Rates, *, fallback: str | None) -> str | None:
    """The GPU type a trial's workers get, for its price: the ``accelerator_type:...`` Ray reports on
    the cluster's GPU nodes; with several types, the dearest under ``rates`` (a budget had better err
    high); with none reported, ``fallback`` (the stage machine's own GPU, by NVML)."""
    types = {k.removeprefix(ACCELERATOR_PREFIX) for res, _ in nodes if res.get("GPU") for k in res
             if k.startswith(ACCELERATOR_PREFIX)}
    return max(sorted(types), key=rates.gpu_rate) if types else fallback


def trial_usd_per_hour(*, workers: int, cpus_per_worker: float, use_gpu: bool, node_share: float, rates: Rates,
                       gpu_type: str | None) -> float:
    """What one trial costs per hour of its wall time, priced by :func:`reserved_cost`, the function that
    prices every stage: its workers' CPUs and GPUs (at ``gpu_type``'s rate from ``gpu_hour_usd_by_type``,
    else ``gpu_hour_usd``) and ``node_share`` of a node at ``node_hour_usd``. (It once priced CPUs and the
    default GPU rate only, so a sweep on H100s or on node-priced machines overran its budget.)"""
    return reserved_cost(3600.0, cpus=workers * cpus_per_worker, gpus=workers if use_gpu else 0,
                         nodes=node_share, rates=rates, gpu_type=gpu_type)["cost/usd"]


def live_monitor(key: str) -> "SweepMonitor":
    try:
        return _LIVE[key]
    except KeyError:
        raise RuntimeError(f"no SweepMonitor {key!r} in this process: create it before restoring the sweep") from None


class SweepMonitor(tune.Callback):
    def __init__(self, key: str, *, usd_per_hour: float, budget_usd: float | None = None,
                 time_budget_s: float | None = None, metric: str = "val/loss", clock=time.monotonic,
                 reap_train_groups: bool = True):
        self.key, self.usd_per_hour, self.metric = key, usd_per_hour, metric
        self.budget_usd, self.time_budget_s = budget_usd, time_budget_s
        self._clock, self._t0, self._elapsed_before = clock, clock(), 0.0
        self.trial_s: dict[str, float] = {}          # trial id -> wall seconds reported so far
        self.stopped_by_budget: set[str] = set()
        self.done: set[str] = set()                  # completed or failed (incl. earlier runs)
        self.unfinished: set[str] = set()            # pending / running / paused, as of the last step
        self.running: set[str] = set()
        self.exhausted_by: str | None = None
        self.started_here: list[str] = []            # trials that started (or resumed) in this process
        self._last_reap = clock()
        self.reap_train_groups = reap_train_groups  # trials on the direct path start no worker groups
        self.last_results: dict[str, dict] = {}      # trial id -> its latest report
        self.created: list[str] = []                 # trial ids in the order the searcher proposed them
        self.scheduler = None                        # an OrderedASHA: its rungs are saved with this state
        # start-up: from Tune starting a trial (a new actor, a reused one, a resume from a pause) to
        # the end of its first epoch, less that epoch's own time (``epoch_s``), in this process
        self.startup_s: list[float] = []
        self._starting: dict[str, float] = {}
        # ... and before that, from a trial's first sight (pending) to its first start: for the first
        # trials (a free slot each) that is a new actor's start: its process, imports and arguments
        self.first_start_wait_s: list[float] = []
        self._seen: dict[str, float] = {}
        _LIVE[key] = self

    def __reduce__(self):
        return live_monitor, (self.key,)

    # -- accounting -------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return self._elapsed_before + self._clock() - self._t0

    @property
    def spent_usd(self) -> float:
        return sum(self.trial_s.values()) / 3600 * self.usd_per_hour

    def record(self, trial_id: str, result: dict) -> None:
        t = result.get("time_total_s")
        if t is not None:
            self.trial_s[trial_id] = max(self.trial_s.get(trial_id, 0.0), float(t))

    def exhausted(self) -> bool:
        """True once the dollar or time budget is spent (and from then on)."""
        if self.exhausted_by is None:
            if self.budget_usd is not None and self.spent_usd >= self.budget_usd:
                self.exhausted_by = "budget_usd"
            elif self.time_budget_s is not None and self.elapsed_s >= self.time_budget_s:
                self.exhausted_by = "time_budget_s"
            if self.exhausted_by:
                log.info("budget spent (%s): $%.6f, %.0fs; no new trials, running ones end at their next epoch",
                         self.exhausted_by, self.spent_usd, self.elapsed_s)
        return self.exhausted_by is not None

    # -- Tune callback hooks ------------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        now = self._clock()
        for t in trials:
            self._seen.setdefault(t.trial_id, now)
        for t in trials:
            if t.last_result:
                self.record(t.trial_id, t.last_result)
        self.unfinished = {t.trial_id for t in trials if t.status in UNFINISHED}
        self.running = {t.trial_id for t in trials if t.status == "RUNNING"}
        self.exhausted()
        if self.reap_train_groups and self._clock() - self._last_reap > REAP_EVERY_S and any(t.status in ("TERMINATED", "ERROR") for t in trials):
            self._last_reap = self._clock()
            reap_orphaned_train_groups()

    def on_trial_start(self, iteration, trials, trial, **info):
        now = self._clock()
        if trial.trial_id not in self.started_here and trial.trial_id in self._seen:
            self.first_start_wait_s.append(now - self._seen[trial.trial_id])
        self.started_here.append(trial.trial_id)
        self._starting[trial.trial_id] = now
        log.info("trial_%s started %s", trial.trial_id,
                 {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in trial.config.items()})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.record(trial.trial_id, result)
        started = self._starting.pop(trial.trial_id, None)
        if started is not None and result.get("epoch_s") is not None:
            self.startup_s.append(max(0.0, self._clock() - started - float(result["epoch_s"])))
        self.last_results[trial.trial_id] = result
        log.info("trial_%s epoch %d  %s %.4f  val/acc %.4f  ($%.6f spent)", trial.trial_id, result.get("epoch", 0),
                 self.metric, result.get(self.metric, float("nan")), result.get("val/acc", float("nan")),
                 self.spent_usd)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done.add(trial.trial_id)
        log.info("trial_%s finished (%d trials done)", trial.trial_id, len(self.done))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done.add(trial.trial_id)
        log.info("trial_%s failed (%d trials done): see %s", trial.trial_id, len(self.done), trial.local_path)

    def get_state(self) -> dict:
        return {"elapsed_s": self.elapsed_s, "trial_s": dict(self.trial_s), "done": sorted(self.done),
                "stopped_by_budget": sorted(self.stopped_by_budget), "exhausted_by": self.exhausted_by,
                "created": list(self.created),
                "scheduler": self.scheduler.get_state() if self.scheduler is not None else None}

    def set_state(self, state: dict) -> None:
        self._elapsed_before, self._t0 = state["elapsed_s"], self._clock()
        self.trial_s.update(state["trial_s"])
        self.done.update(state["done"])
        self.stopped_by_budget.update(state["stopped_by_budget"])
        self.exhausted_by = self.exhausted_by or state["exhausted_by"]
        self.created[:0] = [t for t in state.get("created", []) if t not in self.created]
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.set_state(state["scheduler"])


class BudgetStopper(tune.Stopper):
    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id: str, result: dict) -> bool:
        m = live_monitor(self.key)
        m.record(trial_id, result)
        if m.exhausted():
            m.stopped_by_budget.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        # Only once nothing runs: what is left are trials that never started. Running ones are
        # ended by __call__ at their next report (Tune's stop_all would kill them mid-epoch).
        m = live_monitor(self.key)
        return m.exhausted() and not m.running


class BudgetedSearch(Searcher):
    """Wraps a Searcher: FINISHED once the budget is spent; at most ``max_concurrent`` live trials.

    ``ordered`` (for a searcher that learns from finished trials, Optuna's TPE): the k-th config
    is proposed from exactly trials 0 .. k - max_concurrent, told in creation order, whatever
    order they finished in. With one trial at a time that is every earlier trial, as usual;
    with more, the k-th waits until trial k - max_concurrent has finished, and trials finished
    out of turn are told later. The proposals, and so the sweep, are then the same on every
    run; without it they depend on which concurrent trial happened to finish first.
    """

    def __init__(self, searcher: Searcher, *, key: str, max_concurrent: int, ordered: bool = False):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.key, self.max_concurrent, self.ordered = searcher, key, max_concurrent, ordered
        self._live: set[str] = set()
        self._finished: dict[str, tuple] = {}        # ordered: finished, not yet told -> (result, error)
        self._told: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # handled here: Tune's ConcurrencyLimiter then passes through

    def suggest(self, trial_id: str):
        m = live_monitor(self.key)
        if m.exhausted():
            return Searcher.FINISHED
        if len(self._live | m.unfinished) >= self.max_concurrent:
            return None
        if self.ordered:  # m.created: the trials proposed so far, in order
            seen = m.created[:max(0, len(m.created) - self.max_concurrent + 1)]
            if any(t not in self._told and t not in self._finished for t in seen):
                return None  # the proposal must not depend on which trial finished first: wait
            for t in seen:
                if t not in self._told:
                    self._tell(t)
        config = self.searcher.suggest(trial_id)
        if config not in (None, Searcher.FINISHED):
            self._live.add(trial_id)
            m.created.append(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self._live.discard(trial_id)
        m = live_monitor(self.key)
        if result is None and not error:
            # stopped while paused (ASHA judged it at a rung after an earlier trial caught up): Tune
            # passes no result; its last report is what it achieved (else Optuna would record it
            # as pruned without a value)
            result = m.last_results.get(trial_id)
        if self.ordered and trial_id in m.created:
            self._finished[trial_id] = (result, error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def _tell(self, trial_id: str) -> None:
        result, error = self._finished.pop(trial_id)
        self._told.add(trial_id)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves a wrapper's get_state() and the wrapped searcher separately (save_to_dir). The
    # live set is not kept: after a restore, the monitor's view of unfinished trials covers it.
    def get_state(self) -> dict:
        return {"max_concurrent": self.max_concurrent, "told": sorted(self._told), "finished": dict(self._finished)}

    def set_state(self, state: dict) -> None:
        self.max_concurrent = state["max_concurrent"]
        self._told = set(state.get("told", []))
        self._finished = dict(state.get("finished", {}))
