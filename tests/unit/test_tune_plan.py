"""The sweep's plan (components/tuning/plan.py) and its summary (components/tuning/analysis.py):
what the tune stage decides once the cluster is known, as pure functions."""

from types import SimpleNamespace

import pytest

from trainwise.components.tracking.cost import Rates
from trainwise.components.tuning.analysis import best_trial, spend_line, sweep_metrics, trial_line
from trainwise.components.tuning.budget import trial_usd_per_hour
from trainwise.components.tuning.plan import SweepDoesNotFit, plan_sweep
from trainwise.components.tuning.sweep import SweepOptions
from tests.params import sweep_options
from trainwise.pipelines.config import TuneParams

RATES = Rates(cpu_hour_usd=0.05, gpu_hour_usd=2.0, node_hour_usd=0.5)


def test_the_plan_runs_no_more_trials_at_once_than_the_nodes_hold_and_prices_each():
    nodes = [({"CPU": 4.0}, 1)]  # one 4-CPU node: two trials of 1 x 2 CPUs
    plan = plan_sweep(sweep_options(max_concurrent_trials=4), nodes, workers_per_trial=1, cpus_per_worker=2,
                      use_gpu=False, rates=RATES, nodes_reserved=1.0, fallback_gpu_type=None)
    assert plan.fits == 2 and plan.options.max_concurrent_trials == 2
    assert plan.node_share == 0.5 and plan.worker == {"CPU": 2}
    assert plan.options.usd_per_trial_hour == pytest.approx(trial_usd_per_hour(
        workers=1, cpus_per_worker=2, use_gpu=False, node_share=0.5, rates=RATES, gpu_type=None))
    assert plan.options.usd_per_trial_hour == pytest.approx(2 * 0.05 + 0.5 * 0.5)
    roomy = plan_sweep(sweep_options(max_concurrent_trials=1), nodes, workers_per_trial=1, cpus_per_worker=2,
                       use_gpu=False, rates=RATES, nodes_reserved=1.0, fallback_gpu_type=None)
    assert roomy.options.max_concurrent_trials == 1 and roomy.fits == 2


def test_a_trial_that_fits_no_node_is_refused_with_the_reason():
    with pytest.raises(SweepDoesNotFit):
        plan_sweep(sweep_options(), [({"CPU": 2.0}, 1)], workers_per_trial=1, cpus_per_worker=4, use_gpu=False,
                   rates=RATES, nodes_reserved=1.0, fallback_gpu_type=None)


def test_the_plan_notes_when_the_same_params_can_give_another_sweep():
    nodes = [({"CPU": 8.0}, 1)]
    kw = dict(workers_per_trial=2, cpus_per_worker=1, use_gpu=False, rates=RATES, nodes_reserved=1.0,
              fallback_gpu_type=None)
    assert plan_sweep(sweep_options(max_concurrent_trials=2, scheduler="asha"), nodes, **kw).repeatability_note
    assert plan_sweep(sweep_options(max_concurrent_trials=2, scheduler="fifo"), nodes, **kw).repeatability_note is None


def test_sweep_options_come_from_the_tune_section_whole():
    tp = TuneParams.model_validate({"num_samples": 3, "metric": "val/acc", "budget_usd": 1.5})
    options = SweepOptions.from_params(tp, max_concurrent_trials=1)
    assert (options.num_samples, options.metric, options.mode, options.budget_usd) == (3, "val/acc", "max", 1.5)
    assert options.max_concurrent_trials == 1  # an override wins
    for name in ("max_epochs", "grace_period", "reduction_factor", "seed", "search_alg", "scheduler", "resume",
                 "optuna_startup_trials", "time_budget_s"):
        assert getattr(options, name) == getattr(tp, name), name
    section = {**TuneParams().model_dump(), "mode": "min", "num_samples": 5}
    assert SweepOptions.from_params(section).num_samples == 5


def _row(n, loss, *, status="ok", stopped_by="asha", epochs=3, usd=0.01):
    return {"number": n, "trial": f"t{n}", "lr": 0.1 * n, "status": status, "stopped_by": stopped_by,
            "epochs": epochs, "best_val/loss": loss, "val/acc": 1 - loss, "gap/acc": 0.01, "overfit": False,
            "cost/usd": usd}


def test_the_summary_picks_the_best_trial_and_counts_what_the_budget_did():
    rows = [_row(0, 0.5), _row(1, 0.3), _row(2, 0.4, stopped_by="budget"), _row(3, 0.9, status="error", stopped_by="error", epochs=0)]
    del rows[3]["best_val/loss"]
    assert best_trial(rows, metric="val/loss", mode="min")["number"] == 1
    assert best_trial(rows, metric="val/loss", mode="max")["number"] == 0
    assert best_trial([rows[3]], metric="val/loss", mode="min") is None
    line = spend_line(rows, num_samples=5, budget_usd=1.0, exhausted_by="usd")
    assert line == ("spent $0.040000 on trials of a $1 budget; 3 of 5 trials ran, 1 stopped by the budget, "
                    "2 never started (budget spent: usd)")
    assert trial_line(rows[1], space_keys=["lr"], metric="val/loss") == \
        "t1 {'lr': '0.1'} epochs=3 stopped_by=asha best val/loss=0.3000 gap/acc=+0.010 $0.010000"
    monitor = SimpleNamespace(scheduler=None, exhausted_by=None, startup_s=[1.0, 3.0], first_start_wait_s=[2.0])
    m = sweep_metrics(rows, {"t0": [{"epoch_s": 1.5}], "t1": [{"epoch_s": 2.0}]}, rows[1], metric="val/loss",
                      num_samples=5, monitor=monitor, resumed=False, repeatable=True, sweep_wall_s=9.0, concurrent=2)
    assert m["tune/trials"] == 4 and m["tune/failed_trials"] == 1 and m["tune/skipped_trials"] == 2
    assert m["tune/budget_stopped_trials"] == 1 and m["tune/asha_stopped_trials"] == 2
    assert m["tune/spent_usd"] == pytest.approx(0.04) and m["tune/trial_epochs_s"] == 3.5
    assert m["tune/repeatable"] == 1 and m["tune/best/val/loss"] == 0.3 and m["tune/trial_startup_s_median"] == 2.0
    assert m["tune/first_actors_start_s"] == 2.0
