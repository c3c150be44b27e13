"""OrderedASHA: Ray's ASHA rule with decisions that do not depend on report order.

A small simulator drives the scheduler the way Tune's controller does (trials created one at a
time up to the concurrency limit, results in whatever order the trials happen to finish their
epochs, PAUSE / STOP / resume of paused trials). Ray's own ASHAScheduler, fed the same curves
one trial at a time, is the reference.
"""

import random

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from trainwise.components.tuning.ordered_asha import OrderedASHA, live_scheduler, rungs


class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving, self.epoch = trial_id, "PENDING", False, 0


class FakeController:
    def __init__(self, scheduler):
        self.scheduler, self.trials = scheduler, []

    def get_trials(self):
        return self.trials

    def get_trial(self, tid):
        return next((t for t in self.trials if t.trial_id == tid), None)

    def stop_trial(self, trial):  # Tune: a PAUSED / PENDING trial is removed, a running one completed
        if trial.status in ("PAUSED", "PENDING"):
            self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"


def curves(n: int, max_t: int, seed: int) -> list[list[float]]:
    """Per trial, the objective (best val/loss so far) at each epoch: a decaying loss with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, rate = rng.uniform(0.5, 2.5), rng.uniform(0.1, 0.6)
        loss = start * np.exp(-rate * np.arange(1, max_t + 1)) + rng.normal(0, 0.05, max_t)
        out.append(list(np.minimum.accumulate(loss)))
    return out


def simulate(scheduler, objective: list[list[float]], *, concurrency: int, max_t: int, rng=None) -> dict:
    """Epochs each trial ran. ``rng`` picks which running trial finishes its next epoch first."""
    ctl, made = FakeController(scheduler), 0
    while True:
        live = [t for t in ctl.trials if t.status in ("PENDING", "RUNNING", "PAUSED")]
        if made < len(objective) and len(live) < concurrency:  # the searcher's next trial
            t = FakeTrial(f"t{made}")
            ctl.trials.append(t)
            scheduler.on_trial_add(ctl, t)
            made += 1
            continue
        while sum(t.status == "RUNNING" for t in ctl.trials) < concurrency:
            t = scheduler.choose_trial_to_run(ctl)
            if t is None:
                break
            t.status = "RUNNING"
        running = [t for t in ctl.trials if t.status == "RUNNING"]
        if not running:
            assert made == len(objective) and all(t.status == "TERMINATED" for t in ctl.trials), \
                [(t.trial_id, t.status) for t in ctl.trials]
            return {t.trial_id: t.epoch for t in ctl.trials}
        t = rng.choice(running) if rng else running[0]
        t.epoch += 1
        result = {"epoch": t.epoch, "objective": objective[int(t.trial_id[1:])][t.epoch - 1]}
        action = scheduler.on_trial_result(ctl, t, result)
        if action == TrialScheduler.PAUSE:
            t.status = "PAUSED"
        elif action == TrialScheduler.STOP or t.epoch >= max_t:
            t.status = "TERMINATED"
            scheduler.on_trial_complete(ctl, t, result)


def ordered(key: str, max_t: int, grace: int, rf: float) -> OrderedASHA:
    s = OrderedASHA(key=key, max_t=max_t, grace_period=grace, reduction_factor=rf)
    assert s.set_search_properties("objective", "min")
    return s


@pytest.mark.parametrize("max_t,grace,rf", [(8, 2, 2), (9, 1, 3), (16, 1, 4)])
def test_the_decisions_are_rays_asha_run_one_trial_at_a_time_whatever_the_report_order(max_t, grace, rf):
    for seed in range(4):
        obj = curves(10, max_t, seed)
        ray_asha = ASHAScheduler(time_attr="epoch", metric="objective", mode="min", max_t=max_t,
                                 grace_period=grace, reduction_factor=rf)
        reference = simulate(ray_asha, obj, concurrency=1, max_t=max_t)
        assert min(reference.values()) < max_t  # ASHA stopped someone: the comparison means something
        assert simulate(ordered(f"seq{seed}", max_t, grace, rf), obj, concurrency=1, max_t=max_t) == reference
        for c in (2, 3, 4):
            for order_seed in range(5):
                got = simulate(ordered(f"c{c}-{seed}-{order_seed}", max_t, grace, rf), obj, concurrency=c,
                               max_t=max_t, rng=random.Random(order_seed))
                assert got == reference, (c, order_seed)


def test_rays_asha_itself_depends_on_the_report_order():
    """Why OrderedASHA exists: the same curves, concurrency 3, two report orders, two outcomes."""
    max_t, grace, rf = 8, 1, 2
    outcomes = set()
    for seed in range(6):
        obj = curves(10, max_t, seed)
        for order_seed in range(6):
            ray_asha = ASHAScheduler(time_attr="epoch", metric="objective", mode="min", max_t=max_t,
                                     grace_period=grace, reduction_factor=rf)
            outcomes.add((seed, tuple(sorted(simulate(ray_asha, obj, concurrency=3, max_t=max_t,
                                                      rng=random.Random(order_seed)).items()))))
    assert len(outcomes) > 6  # more outcomes than curve sets: order changed some decision


def test_a_trial_ahead_of_an_earlier_one_waits_paused_and_is_resumed_or_stopped():
    s = ordered("wait", max_t=8, grace=2, rf=2)
    ctl = FakeController(s)
    a, b, c = FakeTrial("a"), FakeTrial("b"), FakeTrial("c")
    for t in (a, b, c):
        ctl.trials.append(t)
        s.on_trial_add(ctl, t)
        t.status = "RUNNING"
    # b reaches rung 2 first: a (created before it) has no value there yet
    assert s.on_trial_result(ctl, b, {"epoch": 1, "objective": 0.9}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(ctl, b, {"epoch": 2, "objective": 0.5}) == TrialScheduler.PAUSE
    b.status = "PAUSED"
    assert s.choose_trial_to_run(ctl) is None           # b cannot be judged yet
    # c reaches it too: it waits for a as well (b's value is known, a's is not)
    assert s.on_trial_result(ctl, c, {"epoch": 2, "objective": 0.8}) == TrialScheduler.PAUSE
    c.status = "PAUSED"
    # a gets there with a worse value than b: a goes on (first at the rung), b is judged against a: goes on;
    # c is judged against a and b: the median of (0.7, 0.5) is 0.6, c's 0.8 is worse: stopped while paused
    assert s.on_trial_result(ctl, a, {"epoch": 2, "objective": 0.7}) == TrialScheduler.CONTINUE
    assert c.status == "TERMINATED" and s.ended["c"] == 2
    assert s.choose_trial_to_run(ctl) is b
    assert s.decided == {"a": {2.0: "CONTINUE"}, "b": {2.0: "CONTINUE"}, "c": {2.0: "STOP"}}


def test_the_rungs_survive_a_restore_and_the_scheduler_unpickles_as_the_live_one():
    import pickle

    s = ordered("restore", max_t=8, grace=2, rf=2)
    ctl = FakeController(s)
    for i, v in enumerate((0.5, 0.9)):
        t = FakeTrial(f"t{i}")
        ctl.trials.append(t)
        s.on_trial_add(ctl, t)
        s.on_trial_result(ctl, t, {"epoch": 2, "objective": v})
    state = s.get_state()
    fresh = ordered("restore", max_t=8, grace=2, rf=2)   # the next process's instance
    assert pickle.loads(pickle.dumps(s)) is fresh        # what Tuner.restore unpickles
    fresh.set_state(pickle.loads(pickle.dumps(state)))   # what the monitor's saved state brings back
    t2 = FakeTrial("t2")
    ctl2 = FakeController(fresh)
    ctl2.trials.append(t2)
    fresh.on_trial_add(ctl2, t2)
    assert fresh.order == {"t0": 0, "t1": 1, "t2": 2}
    # judged against both earlier trials' rung values (cutoff 0.7): 0.8 stops, as it would have unrestored
    assert fresh.on_trial_result(ctl2, t2, {"epoch": 2, "objective": 0.8}) == TrialScheduler.STOP
    assert live_scheduler("restore") is fresh


def test_rungs_match_rays_brackets():
    assert rungs(2, 8, 2.0) == [2.0, 4.0]
    assert rungs(1, 9, 3.0) == [1.0, 3.0]
    assert rungs(1, 16, 4.0) == [1.0, 4.0]
    with pytest.raises(ValueError, match="grace_period"):
        OrderedASHA(key="bad", max_t=2, grace_period=3)


class RecordingSearcher:
    """Stands in for Optuna's TPE: records which trials it had been told of at each proposal."""

    metric, mode = "objective", "min"

    def __init__(self):
        self.told, self.proposals = [], []

    def suggest(self, trial_id):
        self.proposals.append(tuple(self.told))
        return {"x": len(self.proposals)}

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(result["objective"])


def _search_run(concurrency: int, finish_order_seed: int, *, ordered: bool) -> list[tuple]:
    from trainwise.components.tuning.budget import BudgetedSearch, SweepMonitor

    key = f"search-{concurrency}-{finish_order_seed}-{ordered}"
    monitor, inner = SweepMonitor(key, usd_per_hour=0.0), RecordingSearcher()
    search = BudgetedSearch(inner, key=key, max_concurrent=concurrency, ordered=ordered)
    rng, live, made = random.Random(finish_order_seed), [], 0
    while made < 8 or live:
        while made < 8:
            config = search.suggest(f"t{made}")
            if config is None:
                break
            live.append(made)
            made += 1
        monitor.unfinished = {f"t{i}" for i in live}
        done = live.pop(rng.randrange(len(live)))      # any running trial may finish first
        monitor.unfinished = {f"t{i}" for i in live}
        search.on_trial_complete(f"t{done}", result={"objective": done})
    return inner.proposals


def test_an_ordered_search_proposes_from_the_same_finished_trials_whatever_order_they_finish_in():
    for c in (1, 2, 3):
        runs = {tuple(_search_run(c, seed, ordered=True)) for seed in range(8)}
        assert len(runs) == 1, c
        (proposals,) = runs
        # the k-th proposal saw exactly trials 0 .. k - c, in creation order
        assert list(proposals) == [tuple(range(max(0, k - c + 1))) for k in range(8)]
    # unordered (what Tune does by itself), concurrency 2: what it was told depends on finishing order
    assert len({tuple(_search_run(2, seed, ordered=False)) for seed in range(8)}) > 1
