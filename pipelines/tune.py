"""DVC stage `tune`: Ray Tune + ASHA over params.yaml's search space -> models/tune/best_params.json."""

import time

from components.data.contract import write_csv_atomic, write_json_atomic
from components.runtime import init_ray, unschedulable
from components.training.data import input_shape
from components.training.driver import Scaling
from components.training.loop import LoopConfig
from components.tracking.cost import reserved_cost
from components.tracking.mlflow_runs import log_trial_runs
from components.tuning.sweep import SweepOptions, run_sweep, trial_rows
from pipelines.stage import Stage, StageError, run_stage

HP_KEYS = ("lr", "weight_decay", "dropout", "batch_size")
TRIAL_COLUMNS = ["trial", "status", "epochs", "best_epoch", "best_val/loss", "best_val/acc", "val/acc", "gap/acc",
                 "time_s", "cost/usd"]


def main() -> None:
    with Stage("tune") as stage:
        tp, trp, rp = stage.params.tune, stage.params.train, stage.params.ray
        out = stage.path(stage.paths.tune)
        defaults = {k: getattr(trp, k) for k in HP_KEYS}
        if not tp.enabled:
            stage.log("tune.enabled is false: train will use train.* as given")
            write_json_atomic(out / "best_params.json", {"source": "train", "params": defaults})
            write_csv_atomic(out / "trials.csv", [], TRIAL_COLUMNS)
            stage.finish({"tune/trials": 0})
            return

        data = stage.path(stage.paths.split)
        base = LoopConfig(data_dir=str(data), n_classes=len(stage.record_input(data)["classes"]),
                          input_shape=input_shape(data), model=trp.model, seed=trp.seed, **defaults)
        space = {k: d.model_dump(exclude_none=True) for k, d in tp.search_space.items()}
        options = SweepOptions(num_samples=tp.num_samples, max_concurrent_trials=tp.max_concurrent_trials,
                               max_epochs=tp.max_epochs, grace_period=tp.grace_period,
                               reduction_factor=tp.reduction_factor, metric=tp.metric, mode=tp.mode, seed=tp.seed)
        scaling = Scaling(num_workers=tp.workers_per_trial, cpus_per_worker=trp.cpus_per_worker)
        stage.meter.reserve(cpus=tp.max_concurrent_trials * tp.workers_per_trial * trp.cpus_per_worker)
        resources = init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose,
                             train_poll_s=rp.train_poll_s)
        why = unschedulable(resources, cpus=tp.workers_per_trial * trp.cpus_per_worker)
        if why:
            raise StageError(f"params.yaml: one trial (tune.workers_per_trial={tp.workers_per_trial} x "
                             f"train.cpus_per_worker={trp.cpus_per_worker}) {why}; lower them")
        stage.log("%d trials (%d at a time), ASHA on %s over %s", tp.num_samples, tp.max_concurrent_trials,
                  tp.metric, sorted(space))
        grid = run_sweep(base, space=space, options=options, scaling=scaling,
                         storage_path=str(stage.path(rp.storage_path)),
                         name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{stage.run_id[:8]}")

        rows = trial_rows(grid, metric=tp.metric, mode=tp.mode, space_keys=sorted(space))
        cpus_per_trial = tp.workers_per_trial * trp.cpus_per_worker
        for row in rows:
            row.update(reserved_cost(row.get("time_s", 0.0), cpus=cpus_per_trial, rates=stage.meter.rates))
        run_ids = stage.tracker.call("the trial runs", log_trial_runs, grid, rows, param_keys=HP_KEYS) or []
        for rid, row in zip(run_ids, rows):  # every trial's cost/* (log_trial_runs logs cost/usd)
            stage.tracker.log_metrics({k: v for k, v in row.items() if k.startswith("cost/") and k != "cost/usd"},
                                      run_id=rid)
        ok = [r for r in rows if r["status"] == "ok" and f"best_{tp.metric}" in r]
        if not ok:
            raise StageError(f"all {len(rows)} trials failed; see Ray's logs under /tmp/ray/session_latest/logs")
        best = grid.get_best_result(metric=tp.metric, mode=tp.mode, scope="all")
        best_row = next(r for r in rows if r["trial"] == best.path.rsplit("/", 1)[-1])
        params = {k: best.config[k] for k in HP_KEYS}
        write_json_atomic(out / "best_params.json", {"source": "tune", "params": params, "trial": best_row["trial"],
                                                     tp.metric: best_row[f"best_{tp.metric}"]})
        write_csv_atomic(out / "trials.csv", rows, [*TRIAL_COLUMNS[:1], *sorted(space), *TRIAL_COLUMNS[1:]])
        for r in rows:
            stage.log("%s %s epochs=%s best %s=%s", r["trial"], {k: f"{r[k]:.3g}" for k in sorted(space)},
                      r["epochs"], tp.metric, f"{r.get(f'best_{tp.metric}', float('nan')):.4f}")
        stage.log("best: %s -> %s", best_row["trial"], params)
        stage.finish({"tune/trials": len(rows), "tune/failed_trials": len(rows) - len(ok),
                      "tune/trial_epochs": sum(r["epochs"] for r in rows),
                      f"tune/best/{tp.metric}": best_row[f"best_{tp.metric}"],
                      "tune/best/val/acc": best_row["val/acc"]},
                     artifacts=[out / "trials.csv", out / "best_params.json"])


if __name__ == "__main__":
    run_stage(main)
