"""Search space, budget bookkeeping, trial analysis and MLflow child runs: no Ray cluster needed."""

import pytest
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized

from trainwise.components.training.loop_config import LoopConfig
from trainwise.components.tuning.analysis import is_overfit, pareto_rows, stopped_by, trial_row
from trainwise.components.tuning.budget import (BudgetedSearch, BudgetStopper, SweepMonitor, trial_gpu_type,
                                      trial_usd_per_hour)
from trainwise.components.tuning.space import apply_trial_config, to_tune_space
from tests.params import loop_config
from trainwise.pipelines.config import ConfigError, parse_params

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "quniform", "low": 32, "high": 128, "q": 32},
    "weight_decay": {"type": "choice", "values": [0.0, 1e-4]},
    "model": {"type": "choice", "values": ["mlp", "small_cnn"]},
}


def test_params_space_becomes_tune_domains_of_the_right_kind():
    p = parse_params({"tune": {"search_space": {**SPACE, "batch_size": {"type": "randint", "low": 16, "high": 64}}}})
    space = to_tune_space({k: d.model_dump(exclude_none=True) for k, d in p.tune.search_space.items()})
    assert isinstance(space["lr"], Float) and isinstance(space["lr"].get_sampler(), LogUniform)
    assert (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-1)
    assert isinstance(space["dropout"], Float) and space["dropout"].upper == 0.5
    assert isinstance(space["batch_size"], Integer) and (space["batch_size"].lower, space["batch_size"].upper) == (16, 64)
    assert isinstance(space["model"], Categorical) and space["model"].categories == ["mlp", "small_cnn"]
    q = to_tune_space({"batch_size": SPACE["batch_size"]})["batch_size"]
    assert isinstance(q.get_sampler(), Quantized) and q.get_sampler().q == 32


@pytest.mark.parametrize("entry, key, words", [
    ({"lr": {"type": "loguniform", "low": 0, "high": 1}}, "tune.search_space.lr.low", "low > 0"),
    ({"lr": {"type": "gaussian", "low": 0, "high": 1}}, "tune.search_space.lr.type", "loguniform"),
    ({"lr": {"type": "uniform", "low": 0.1}}, "tune.search_space.lr.high", "needs `high`"),
    ({"lr": {"type": "uniform", "low": 0.1, "high": 0.01}}, "tune.search_space.lr.high", "low < high"),
    ({"batch_size": {"type": "quniform", "low": 16, "high": 64}}, "tune.search_space.batch_size.q", "q > 0"),
    ({"dropout": {"type": "choice", "values": []}}, "tune.search_space.dropout.values", "non-empty"),
    ({"dropout": {"type": "uniform", "low": 0.1, "high": 1.5}}, "tune.search_space.dropout", "train.dropout"),
    ({"model": {"type": "choice", "values": ["mlp", "resnet"]}}, "tune.search_space.model", "'resnet'"),
    ({"warp_speed": {"type": "uniform", "low": 0, "high": 1}}, "tune.search_space.warp_speed", "not a tunable"),
    ({"epochs": {"type": "randint", "low": 1, "high": 5}}, "tune.search_space.epochs", "not a tunable"),
])
def test_a_bad_distribution_is_a_config_error_naming_the_key(entry, key, words):
    with pytest.raises(ConfigError) as err:
        parse_params({"tune": {"search_space": entry}})
    assert key in str(err.value) and words in str(err.value)


def test_tunable_keys_follow_the_train_params_model():
    # Any train.* field is accepted (not a fixed list): `model` and `batch_size` included.
    p = parse_params({"tune": {"search_space": SPACE}})
    assert set(p.tune.search_space) == set(SPACE)


def test_trial_config_is_set_on_the_loop_config_with_field_types():
    base = loop_config(data_dir="d", n_classes=10, input_shape=(1, 8, 8))
    cfg = apply_trial_config(base, {"lr": 0.01, "batch_size": 64.0, "model": "mlp"})
    assert cfg.lr == 0.01 and cfg.batch_size == 64 and isinstance(cfg.batch_size, int) and cfg.model == "mlp"
    assert cfg.n_classes == 10 and base.batch_size == 64 and base.model == "small_cnn"
    with pytest.raises(ValueError, match="warp_speed"):
        apply_trial_config(base, {"warp_speed": 0.9})


def _epochs(val_losses, train_losses):
    return [{"epoch": i + 1, "val/loss": v, "train/loss": t, "val/acc": 1 - v, "gap/acc": v - t,
             "time_total_s": 10.0 * (i + 1)} for i, (v, t) in enumerate(zip(val_losses, train_losses))]


def test_overfit_means_val_loss_rose_for_patience_epochs_while_train_loss_fell():
    assert is_overfit(_epochs([0.5, 0.4, 0.45, 0.5], [0.5, 0.3, 0.2, 0.1]), patience=2)
    assert not is_overfit(_epochs([0.5, 0.4, 0.45, 0.38], [0.5, 0.3, 0.2, 0.1]), patience=2)  # recovered
    assert not is_overfit(_epochs([0.5, 0.4, 0.45], [0.5, 0.3, 0.2]), patience=2)              # only 1 epoch up
    assert not is_overfit(_epochs([0.5, 0.4, 0.45, 0.5], [0.5, 0.3, 0.35, 0.4]), patience=2)  # underfitting too


def test_trial_row_and_pareto_front():
    rows = [trial_row(f"trial_{i}", {"lr": lr}, _epochs(v, [0.3] * len(v)), metric="val/loss", mode="min",
                      patience=2, usd_per_hour=3.6, max_epochs=3, error=False, budget=False, scheduler="asha")
            for i, (lr, v) in enumerate([(0.1, [0.5]), (0.01, [0.5, 0.2, 0.3]), (0.001, [0.6, 0.5, 0.4])])]
    assert [r["stopped_by"] for r in rows] == ["asha", "max_epochs", "max_epochs"]
    assert rows[1]["best_val/loss"] == 0.2 and rows[1]["best_epoch"] == 2 and rows[1]["epochs"] == 3
    assert rows[0]["cost/usd"] == pytest.approx(0.01) and rows[1]["cost/usd"] == pytest.approx(0.03)
    front = {p["trial"]: p["pareto"] for p in pareto_rows(rows, metric="val/loss", mode="min")}
    assert front == {"trial_0": True, "trial_1": True, "trial_2": False}  # trial_2 costs as much as 1, worse
    assert stopped_by(epochs=0, max_epochs=3, error=False, budget=True, scheduler="asha") == "budget (never started)"


def test_budget_monitor_stops_running_trials_at_their_next_report_and_new_ones_for_good():
    clock = [0.0]
    m = SweepMonitor("unit", usd_per_hour=3600.0, budget_usd=10.0, time_budget_s=100.0, clock=lambda: clock[0])
    stopper = BudgetStopper("unit")
    inner = _FixedSearcher()
    search = BudgetedSearch(inner, key="unit", max_concurrent=2)
    assert search.suggest("a") == {"lr": 0.1} and search.suggest("b") == {"lr": 0.1}
    assert search.suggest("c") is None                      # 2 live: concurrency limit
    assert stopper("a", {"time_total_s": 4.0}) is False     # $4 of $10
    assert stopper("b", {"time_total_s": 7.0}) is True      # $11: b ends at this report
    assert m.exhausted_by == "budget_usd" and m.stopped_by_budget == {"b"}
    assert stopper("a", {"time_total_s": 5.0}) is True      # a ends at its next report
    search.on_trial_complete("a")
    assert search.suggest("c") is Searcher.FINISHED         # no new trial
    m.running = set()
    assert stopper.stop_all()                                # what is left never started
    # state survives a restore (Tune saves it with the experiment)
    m2 = SweepMonitor("unit2", usd_per_hour=1.0, time_budget_s=100.0, clock=lambda: clock[0])
    clock[0] = 60.0
    m2.set_state({**m.get_state(), "exhausted_by": None})
    clock[0] = 100.0
    assert m2.elapsed_s == pytest.approx(100.0) and m2.exhausted() and m2.exhausted_by == "time_budget_s"


def test_the_monitor_times_each_trial_start_to_its_first_epoch_less_the_epoch():
    from types import SimpleNamespace

    clock = [0.0]
    m = SweepMonitor("startup", usd_per_hour=1.0, clock=lambda: clock[0])
    a, b = (SimpleNamespace(trial_id=t, config={}, last_result={}, status="PENDING") for t in "ab")
    m.on_step_begin(0, [a, b])          # both pending from t=0
    clock[0] = 2.0
    m.on_trial_start(0, [a, b], a)      # a's new actor is up after 2 s
    clock[0] = 5.5                      # a's first epoch (1 s) ends 3.5 s after its start
    m.on_trial_result(0, [a, b], a, {"epoch": 1, "epoch_s": 1.0, "time_total_s": 3.5})
    clock[0] = 6.5
    m.on_trial_result(0, [a, b], a, {"epoch": 2, "epoch_s": 1.0, "time_total_s": 4.5})  # not a start
    m.on_trial_start(0, [a, b], b)      # b on a reused actor, 6.5 s after it was first seen
    clock[0] = 7.8
    m.on_trial_result(0, [a, b], b, {"epoch": 1, "epoch_s": 1.0, "time_total_s": 1.3})
    m.on_trial_start(0, [a, b], a)      # a resumed (from a pause): a start, not a first start
    clock[0] = 9.0
    m.on_trial_result(0, [a, b], a, {"epoch": 3, "epoch_s": 1.0, "time_total_s": 5.5})
    assert m.startup_s == pytest.approx([2.5, 0.3, 0.2])
    assert m.first_start_wait_s == pytest.approx([2.0, 6.5])


def test_the_tune_stage_says_when_the_same_params_can_give_another_sweep():
    from trainwise.components.tuning.plan import repeatability_note

    # Ray's ASHA (multi-worker trials) at 2 at a time: it depends on who reports first
    note = repeatability_note(scheduler="asha", workers_per_trial=2, max_concurrent_trials=2)
    assert "tune.max_concurrent_trials: 1" in note and "tune.scheduler: fifo" in note
    # ordered ASHA (one worker), FIFO, or one trial at a time: the same trials on every run
    for kw in (dict(scheduler="asha", workers_per_trial=1, max_concurrent_trials=4),
               dict(scheduler="fifo", workers_per_trial=2, max_concurrent_trials=2),
               dict(scheduler="asha", workers_per_trial=2, max_concurrent_trials=1)):
        assert repeatability_note(**kw) is None, kw


class _FixedSearcher(Searcher):
    def suggest(self, trial_id):
        return {"lr": 0.1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_trial_child_runs_in_mlflow(tmp_path):
    import mlflow

    from trainwise.components.tracking.mlflow_runs import log_trial_runs, setup_mlflow

    setup_mlflow(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="t", root=tmp_path)
    rows = [trial_row("trial_a", {"lr": 0.1}, _epochs([0.5, 0.4], [0.4, 0.3]), metric="val/loss", mode="min",
                      patience=2, usd_per_hour=1.0, max_epochs=2, error=False, budget=False, scheduler="asha"),
            trial_row("trial_b", {"lr": 0.2}, [], metric="val/loss", mode="min", patience=2, usd_per_hour=1.0,
                      max_epochs=2, error=True, budget=False, scheduler="asha")]
    with mlflow.start_run(run_name="tune") as parent:
        ids = log_trial_runs(rows, {"trial_a": _epochs([0.5, 0.4], [0.4, 0.3])}, param_keys=["lr"])
    client = mlflow.MlflowClient()
    a, b = (client.get_run(i) for i in ids)
    assert a.data.tags["mlflow.parentRunId"] == parent.info.run_id and a.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(a.info.run_id, "val/loss")] == [1, 2]
    assert a.data.metrics["cost/usd"] == pytest.approx(20 / 3600) and a.data.tags["trainwise.stopped_by"] == "max_epochs"
    assert a.info.status == "FINISHED" and b.info.status == "FAILED" and b.data.tags["trainwise.stopped_by"] == "error"


# -- one loop config for tune trials and the train stage ------------------------------------------

def test_every_train_param_is_a_loop_setting_or_a_run_setting():
    """A train.* key added to params.yaml must reach the loop (a LoopConfig field) or be a run
    setting; otherwise build_loop_config refuses it rather than dropping it silently."""
    from trainwise.components.training.loop_config import LOOP_KEYS, RUN_KEYS
    from trainwise.pipelines.config import TrainParams

    assert set(TrainParams.model_fields) <= LOOP_KEYS | RUN_KEYS, set(TrainParams.model_fields) - LOOP_KEYS - RUN_KEYS


def test_loop_config_passes_every_train_key_and_the_tune_result_wins():
    from trainwise.components.training.loop_config import LOOP_KEYS, build_loop_config
    from trainwise.pipelines.config import parse_params

    train = parse_params({"train": {"optimizer": "sgd", "label_smoothing": 0.05, "epochs": 7}}).train.model_dump()
    tuned = {"label_smoothing": 0.2, "lr": 0.01, "grad_accum_steps": 2}
    loop = build_loop_config(train, tuned=tuned, data_dir="d", n_classes=3, input_shape=(1, 8, 8))
    for key, value in train.items():
        if key in LOOP_KEYS:
            assert getattr(loop, key) == tuned.get(key, value), key
    assert (loop.optimizer, loop.label_smoothing, loop.lr, loop.grad_accum_steps, loop.epochs) == ("sgd", 0.2, 0.01, 2, 7)
    assert build_loop_config(train, data_dir="d", n_classes=3, input_shape=(4,), cpus_per_worker=3).cpus_per_worker == 3


def test_loop_config_refuses_keys_it_would_drop():
    from trainwise.components.training.loop_config import build_loop_config

    with pytest.raises(ValueError, match=r"best_params.json: \['nonsense'\]"):
        build_loop_config({}, tuned={"nonsense": 1}, data_dir="d", n_classes=3, input_shape=(4,))
    with pytest.raises(ValueError, match="train.brand_new_knob is neither"):
        build_loop_config({"brand_new_knob": 1}, data_dir="d", n_classes=3, input_shape=(4,))


def test_the_tune_stage_reruns_when_any_train_key_a_trial_starts_from_changes():
    """Trials start from build_loop_config(train.*): dvc.yaml must list every loop key of train
    for the tune stage (but those the sweep sets itself), or a changed knob leaves a stale sweep."""
    import yaml

    from trainwise.components.training.loop_config import LOOP_KEYS
    from trainwise.pipelines.config import TrainParams
    from tests.conftest import REPO

    listed = [p.split("#")[0].strip() if isinstance(p, str) else p
              for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tune"]["params"]]
    set_by_sweep = {"epochs", "patience", "use_gpu"}  # tune.max_epochs, no patience, tune.use_gpu
    needed = {f"train.{k}" for k in set(TrainParams.model_fields) & LOOP_KEYS} - {f"train.{k}" for k in set_by_sweep}
    assert "train" in listed or needed <= set(listed), sorted(needed - set(listed))


def test_after_a_sweep_each_trial_keeps_only_its_latest_checkpoint(tmp_path):
    from trainwise.components.tuning.sweep import prune_trial_checkpoints

    exp = tmp_path / "tune-abc"
    for trial, n in (("trial_a", 3), ("trial_b", 1), ("trial_c", 0)):
        for k in range(n):
            (exp / trial / f"checkpoint_{k:06d}").mkdir(parents=True)
            (exp / trial / f"checkpoint_{k:06d}" / "checkpoint.pt").write_bytes(b"x")
        (exp / trial).mkdir(parents=True, exist_ok=True)
        (exp / trial / "result.json").write_text("{}")
    (exp / "experiment_state.json").write_text("{}")
    (exp / "checkpoint_000009").mkdir()  # not a trial's: left alone
    assert prune_trial_checkpoints(str(exp)) == 2
    assert sorted(p.name for p in (exp / "trial_a").iterdir()) == ["checkpoint_000002", "result.json"]
    assert (exp / "trial_a" / "checkpoint_000002" / "checkpoint.pt").exists()
    assert sorted(p.name for p in (exp / "trial_b").iterdir()) == ["checkpoint_000000", "result.json"]
    assert (exp / "checkpoint_000009").is_dir() and (exp / "experiment_state.json").exists()
    assert prune_trial_checkpoints(str(tmp_path / "never-ran")) == 0


def test_a_trial_is_priced_as_a_stage_is_gpu_type_and_node_rate_included():
    """Two H100 workers of 4 CPUs, half a node: the trial's dollars for 30 minutes are what the stage
    meter bills for the same reservation (it once priced CPUs and the default GPU rate only: $2.20
    where the bill says $4.45, and the budget let the sweep overrun)."""
    from trainwise.components.tracking.cost import CostMeter, Rates

    rates = Rates(cpu_hour_usd=0.05, gpu_hour_usd=2.0, gpu_hour_usd_by_type={"A10G": 1.0, "H100": 4.0},
                  node_hour_usd=1.0)
    nodes = [({"CPU": 16.0, "GPU": 4.0, "accelerator_type:H100": 1.0}, 2), ({"CPU": 4.0}, 1)]
    gpu_type = trial_gpu_type(nodes, rates, fallback=None)
    assert gpu_type == "H100"
    per_hour = trial_usd_per_hour(workers=2, cpus_per_worker=4, use_gpu=True, node_share=0.5, rates=rates,
                                  gpu_type=gpu_type)
    clock = [0.0]
    meter = CostMeter(rates=rates, cpus=8, gpus=2, nodes=0.5, gpu_type=gpu_type, clock=lambda: clock[0],
                      cpu_clock=lambda: 0.0).start()
    clock[0] = 1800.0
    assert per_hour / 2 == pytest.approx(meter.read()["cost/usd"]) == pytest.approx(8 * 0.025 + 2 * 2.0 + 0.25)
    m = SweepMonitor("priced", usd_per_hour=per_hour, budget_usd=4.0)
    assert BudgetStopper("priced")("t1", {"time_total_s": 1800.0}) is True  # $4.45 > $4: the budget sees it
    # several GPU types on the cluster: the dearest (a budget errs high); none reported: the fallback
    mixed = nodes + [({"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}, 3)]
    assert trial_gpu_type(mixed, rates, fallback=None) == "H100"
    assert trial_gpu_type([({"CPU": 8.0, "GPU": 1.0}, 1)], rates, fallback="NVIDIA A10G") == "NVIDIA A10G"


def test_a_key_the_schema_lets_a_trial_sample_is_a_setting_of_the_loop():
    """The schema is the one check of tune.search_space's keys (the stage trusts it): every train key
    it lets a trial vary is a LoopConfig field, so apply_trial_config never meets one that is not."""
    from trainwise.components.training.loop_config import LOOP_KEYS, RUN_KEYS
    from trainwise.pipelines.config import NOT_TUNABLE, TrainParams

    tunable = set(TrainParams.model_fields) - set(NOT_TUNABLE)
    assert tunable <= LOOP_KEYS, sorted(tunable - LOOP_KEYS)
    assert RUN_KEYS <= set(NOT_TUNABLE)
