"""ASHA whose decisions do not depend on the order in which concurrent trials report.

Ray's ASHA (``AsyncHyperBandScheduler``) judges a trial at a rung against the values the
other trials have recorded there *so far*. With ``tune.max_concurrent_trials > 1`` that set
depends on which trial happened to report first, so one params.yaml could stop different
trials and pick a different winner from one run to the next (the demo's test/acc was 0.9774
in one repro and 0.9811 in the next, nothing changed).

:class:`OrderedASHA` applies Ray's rule unchanged (one bracket, rungs at ``grace_period *
reduction_factor**k`` epochs below ``max_t``, a trial whose value is worse than the
``1 - 1/reduction_factor`` quantile of the rung's values stops) but judges trial *i* at a rung
only against the trials created before it: exactly the values ASHA would have seen running
the trials one at a time in creation order. A trial that reaches a rung before an earlier
trial has reported there (or ended) is paused (its checkpoint is that epoch's) and resumed,
or stopped, once the earlier trials have caught up. The searcher proposes the k-th config
independently of timing (seeded random search), so the trials, their epochs and the winner are
the same whatever the concurrency or the machine's timing. What it costs is the wait of a
paused trial (benchmarks/tune_repeatability.py: the sweep wall with both schedulers).

A resumed sweep keeps the rungs (saved with the sweep monitor in Tune's experiment state); a
trial that was waiting at a rung when the sweep was interrupted resumes like any unfinished
trial and is judged at its next report (it may have run one epoch past the rung).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

log = logging.getLogger("trainwise")

_LIVE: dict[str, "OrderedASHA"] = {}


def live_scheduler(key: str) -> "OrderedASHA":
    try:
        return _LIVE[key]
    except KeyError:
        raise RuntimeError(f"no OrderedASHA {key!r} in this process: create it before restoring the sweep") from None


def rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[float]:
    """The epochs at which trials are judged: Ray's ``_Bracket`` milestones (bracket 0) below max_t
    (a trial at max_t ends anyway)."""
    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [m for m in (grace_period * reduction_factor ** k for k in range(n)) if m < max_t]


class OrderedASHA(FIFOScheduler):
    """Asynchronous successive halving, deterministic under concurrency (see the module doc)."""

    _supports_buffered_results = False  # a rung must be judged at its own epoch

    def __init__(self, *, key: str, time_attr: str = "epoch", max_t: int = 10, grace_period: int = 1,
                 reduction_factor: float = 4, metric: str | None = None, mode: str | None = None,
                 is_exhausted=lambda: False):
        if not (max_t > 0 and 0 < grace_period <= max_t and reduction_factor > 1):
            raise ValueError(f"ASHA needs 0 < grace_period ({grace_period}) <= max_t ({max_t}) and "
                             f"reduction_factor > 1 ({reduction_factor})")
        super().__init__()
        self.key, self.time_attr, self.max_t, self.rf = key, time_attr, max_t, float(reduction_factor)
        self.milestones = rungs(grace_period, max_t, float(reduction_factor))
        self._metric, self._mode = metric, mode
        self.is_exhausted = is_exhausted   # the sweep's budget is spent: resume nothing
        self.order: dict[str, int] = {}                 # trial id -> creation index
        self.values: dict[float, dict[str, float]] = {m: {} for m in self.milestones}  # higher is better
        self.decided: dict[str, dict[float, str]] = {}  # trial id -> rung -> CONTINUE / STOP
        self.ended: dict[str, int] = {}                 # trial id -> epochs it ran (stopped, done, failed)
        self.waiting: dict[str, float] = {}             # paused trial id -> the rung it waits to be judged at
        self.resumable: set[str] = set()                # judged CONTINUE while paused: run it again
        self.last_epoch: dict[str, int] = {}
        self.num_stopped = 0
        self.num_paused = 0    # times a trial waited at a rung for an earlier one
        self._judging = False
        _LIVE[key] = self

    def __reduce__(self):  # Tune pickles its config into the experiment; a restore finds this instance
        return live_scheduler, (self.key,)

    # -- Tune's scheduler interface --------------------------------------------------------
    def set_search_properties(self, metric, mode, **spec) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    @property
    def _op(self) -> float:
        if self._mode not in ("min", "max"):
            raise ValueError("OrderedASHA needs mode min or max (tune.TuneConfig(mode=...))")
        return 1.0 if self._mode == "max" else -1.0

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if trial.trial_id not in self.order:
            self.order[trial.trial_id] = len(self.order)
        self.decided.setdefault(trial.trial_id, {})

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        epoch, value = result.get(self.time_attr), result.get(self._metric)
        tid = trial.trial_id
        if epoch is None or value is None:
            return TrialScheduler.CONTINUE
        self.last_epoch[tid] = int(epoch)
        self.resumable.discard(tid)
        self.waiting.pop(tid, None)  # it runs, so it waits no more (it may again, below)
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        action = TrialScheduler.CONTINUE
        for m in self.milestones:
            if epoch < m:
                break
            if m in self.decided.setdefault(tid, {}):
                if self.decided[tid][m] == TrialScheduler.STOP:  # a resumed sweep re-reporting a stopped rung
                    action = TrialScheduler.STOP
                    break
                continue
            self.values[m].setdefault(tid, self._op * float(value))
            if not self._judgeable(tid, m):
                self.waiting[tid] = m
                self.num_paused += 1
                action = TrialScheduler.PAUSE
                break
            if self._judge(tid, m) == TrialScheduler.STOP:
                action = TrialScheduler.STOP
                break
        self._judge_waiting(tune_controller)
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        epoch = (result or {}).get(self.time_attr)
        self._end(tune_controller, trial, epoch)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._end(tune_controller, trial, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._end(tune_controller, trial, None)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        if self.is_exhausted():
            return None
        trials = tune_controller.get_trials()
        first = lambda ts: min(ts, key=lambda t: self.order.get(t.trial_id, math.inf)) if ts else None  # noqa: E731
        return (first([t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.resumable])
                or first([t for t in trials if t.status == Trial.PENDING]))

    def debug_string(self) -> str:
        return (f"OrderedASHA: rungs {self.milestones}, {self.num_stopped} stopped, {self.num_paused} pauses, "
                f"{len(self.waiting)} waiting")

    # -- state (saved by the sweep monitor with Tune's experiment state) ---------------------
    def get_state(self) -> dict:
        return {"order": dict(self.order), "values": {m: dict(v) for m, v in self.values.items()},
                "decided": {t: dict(d) for t, d in self.decided.items()}, "ended": dict(self.ended),
                "waiting": dict(self.waiting), "last_epoch": dict(self.last_epoch), "num_stopped": self.num_stopped,
                "num_paused": self.num_paused}

    def set_state(self, state: dict) -> None:
        self.order.update(state["order"])
        for m, v in state["values"].items():
            self.values.setdefault(m, {}).update(v)
        for t, d in state["decided"].items():
            self.decided.setdefault(t, {}).update(d)
        self.ended.update(state["ended"])
        self.waiting.update(state["waiting"])
        self.last_epoch.update(state["last_epoch"])
        self.num_stopped, self.num_paused = state["num_stopped"], state.get("num_paused", 0)

    # -- the rule -------------------------------------------------------------------------
    def _earlier(self, tid: str) -> list[str]:
        i = self.order[tid]
        return [t for t, j in self.order.items() if j < i]

    def _judgeable(self, tid: str, m: float) -> bool:
        """Every trial created before ``tid`` has a value at rung ``m`` or has ended."""
        return all(t in self.values[m] or t in self.ended for t in self._earlier(tid))

    def _judge(self, tid: str, m: float) -> str:
        earlier = [self.values[m][t] for t in self._earlier(tid) if t in self.values[m]]
        decision = TrialScheduler.CONTINUE
        if earlier:
            cutoff = np.nanpercentile(earlier, (1 - 1 / self.rf) * 100)  # Ray's _Bracket.cutoff
            if self.values[m][tid] < cutoff:
                decision = TrialScheduler.STOP
                self.num_stopped += 1
        self.decided[tid][m] = decision
        return decision

    def _judge_waiting(self, tune_controller) -> None:
        """Judge every paused trial whose earlier trials have caught up (stopping one may free
        another: Tune's stop_trial calls back into on_trial_remove, hence no nesting here)."""
        if self._judging:
            return
        self._judging = True
        try:
            ready = True
            while ready:
                ready = [t for t in sorted(self.waiting, key=self.order.__getitem__)
                         if self._judgeable(t, self.waiting[t])]
                if not ready:
                    break
                tid = ready[0]
                m = self.waiting.pop(tid)
                trial = tune_controller.get_trial(tid)
                if self._judge(tid, m) == TrialScheduler.CONTINUE:
                    self.resumable.add(tid)
                elif trial is not None and (trial.status in (Trial.PAUSED, Trial.PENDING) or trial.is_saving):
                    tune_controller.stop_trial(trial)  # what Ray's HyperBand does with a paused loser
                # else: still running (a resumed sweep); its next report meets the STOP in self.decided
        finally:
            self._judging = False

    def _end(self, tune_controller, trial: Trial, epoch) -> None:
        tid = trial.trial_id
        self.ended[tid] = int(epoch) if epoch is not None else self.last_epoch.get(tid, 0)
        self.waiting.pop(tid, None)
        self.resumable.discard(tid)
        self._judge_waiting(tune_controller)
