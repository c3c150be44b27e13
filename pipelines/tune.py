"""DVC stage `tune`: a Ray Tune sweep over params.yaml's search space -> models/tune/best_params.json.

Resumes an interrupted sweep: the experiment is named after what determines its results
(tune params, the train params it starts from, the data's content hash), so running the stage
again after a crash restores it instead of starting over.
"""

import hashlib
import json
import time

from trainwise.components.atomic_io import write_csv_atomic, write_json_atomic
from trainwise.components.cluster.placement import cluster_nodes, describe_group, describe_nodes
from trainwise.components.ray_start import init_ray
from trainwise.components.training.data import input_shape
from trainwise.components.training.driver import Scaling
from trainwise.components.training.loop_config import build_loop_config
from trainwise.components.embedding.training import network_error
from trainwise.components.tracking.mlflow_runs import log_trial_runs
from trainwise.components.tuning.analysis import (add_reserved_cost, best_trial, curve_rows, pareto_rows, plot_pareto,
                                        spend_line, sweep_metrics, trial_line)
from trainwise.components.tuning.plan import SweepDoesNotFit, SweepPlan, plan_sweep
from trainwise.components.tuning.space import apply_trial_config
from trainwise.components.tuning.sweep import SweepInterrupted, SweepOptions, patient_worker_start, run_sweep, sweep_rows
from trainwise.pipelines.config import ConfigError
from trainwise.pipelines.stage import Stage, run_stage
from trainwise.pipelines.stage_error import StageError

CURVE_COLUMNS = ["trial", "epoch", "train/loss", "val/loss", "train/acc", "val/acc", "gap/acc"]


def _columns(space_keys: list[str], metric: str) -> list[str]:
    return ["number", "trial", *space_keys, "status", "stopped_by", "epochs", "best_epoch", f"best_{metric}", "val/acc",
            "gap/acc", "gap/loss", "overfit", "time_s", "cost/usd"]


def _write_plots(stage: Stage, rows: list[dict], histories: dict, metric: str, mode: str) -> list:
    plots = stage.path(stage.paths.plots)
    points = pareto_rows(rows, metric=metric, mode=mode)
    write_csv_atomic(plots / "tune_pareto.csv", points, ["trial", "cost/usd", f"best_{metric}", "val/acc",
                                                         "epochs", "pareto"])
    write_csv_atomic(plots / "tune_curves.csv", curve_rows(histories), CURVE_COLUMNS)
    plots.mkdir(parents=True, exist_ok=True)
    plot_pareto(points, plots / "tune_pareto.png", metric=metric)
    return [plots / "tune_pareto.png"]


def _base(stage: Stage):
    """The loop config every trial starts from, the trials' scaling and the data's manifest. The same
    function builds the train stage's loop (with the winner on top): a trial starts from exactly what
    train would run, and varies only the sampled keys."""
    tp, trp = stage.params.tune, stage.params.train
    if not tp.search_space:
        raise ConfigError("params.yaml: tune.search_space is empty; add train params to sample "
                          "or set tune.enabled: false")
    data = stage.path(stage.paths.audit)  # the split after the label audit
    manifest = stage.record_input(data)
    cpus = tp.cpus_per_worker or trp.cpus_per_worker
    scaling = Scaling(num_workers=tp.workers_per_trial, use_gpu=tp.use_gpu, cpus_per_worker=cpus)
    why = network_error(trp.model_dump(), root=stage.root)  # bad model / backbone / weights: exit 2, no Ray
    if why:
        raise StageError(why)
    base = build_loop_config(trp.model_dump(), data_dir=str(data), n_classes=len(manifest["classes"]),
                             input_shape=input_shape(data), cpus_per_worker=cpus, use_gpu=tp.use_gpu,
                             embed_dir=str(stage.path(stage.paths.embed)))
    return base, scaling, manifest


def _sweep_name(stage: Stage, base, manifest: dict, scaling: Scaling) -> str:
    """Same inputs -> same name -> an interrupted sweep is found and resumed."""
    tp = stage.params.tune
    identity = {"tune": tp.model_dump(mode="json", exclude={"enabled", "resume"}), "base": base.to_dict(),
                "data": manifest["content_hash"], "scaling": vars(scaling)}
    digest = hashlib.blake2b(json.dumps(identity, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    return f"tune-{digest}" if tp.resume else f"tune-{digest}-{stage.run_id[:8]}"


def _plan(stage: Stage, cpus: int) -> SweepPlan:
    """Fit the sweep to the cluster's nodes (components/tuning/plan.py) and bill the stage for it."""
    tp = stage.params.tune
    gpus = tp.workers_per_trial if tp.use_gpu else 0
    nodes = cluster_nodes()
    try:
        plan = plan_sweep(SweepOptions.from_params(tp), nodes, workers_per_trial=tp.workers_per_trial,
                          cpus_per_worker=cpus, use_gpu=tp.use_gpu, rates=stage.meter.rates,
                          nodes_reserved=stage.meter.nodes, fallback_gpu_type=stage.meter.gpu_type)
    except SweepDoesNotFit as why:
        raise StageError(f"params.yaml: one trial (tune.workers_per_trial={tp.workers_per_trial}, "
                         f"{cpus} CPUs{' + 1 GPU' if tp.use_gpu else ''} per worker) {why}. Fix: lower "
                         "tune.workers_per_trial or tune.cpus_per_worker, or use bigger nodes") from None
    if plan.fits < tp.max_concurrent_trials:
        stage.log("note: the cluster's nodes (%s) hold %d trial(s) of %s at once; running %d at a time, "
                  "not tune.max_concurrent_trials=%d", describe_nodes(nodes), plan.fits,
                  describe_group(plan.worker, tp.workers_per_trial, "PACK"), plan.fits, tp.max_concurrent_trials)
        stage.meter.reserve(cpus=plan.fits * tp.workers_per_trial * cpus, gpus=plan.fits * gpus)
    if plan.gpu_type:  # the stage's own GPU-hours (the trials' GPUs, reserved above) at the same rate
        stage.meter.gpu_type = plan.gpu_type
    if plan.repeatability_note:
        stage.log("%s", plan.repeatability_note)
    return plan


def _log_trial_runs(stage: Stage, rows: list[dict], histories: dict, keys: list[str]) -> None:
    """One MLflow child run per trial; log_trial_runs logs cost/usd, the rest of cost/* here."""
    run_ids = stage.tracker.call("the trial runs", log_trial_runs, rows, histories, param_keys=keys) or []
    for rid, row in zip(run_ids, rows):
        stage.tracker.log_metrics({k: v for k, v in row.items() if k.startswith("cost/") and k != "cost/usd"},
                                  run_id=rid)


def _write_best(out, base, best_row: dict, space: dict, metric: str) -> dict:
    tuned = apply_trial_config(base, {k: best_row[k] for k in space})
    params = {k: getattr(tuned, k) for k in sorted(space)}  # every tuned key, typed as the loop took it
    write_json_atomic(out / "best_params.json", {"source": "tune", "params": params,
                                                 # the trial's number, not Ray's random id: the same file on a
                                                 # re-run with the same result, so DVC need not re-run train
                                                 "trial_number": best_row["number"],
                                                 metric: best_row[f"best_{metric}"], "epoch": best_row["best_epoch"]})
    return params


def main() -> None:
    with Stage("tune") as stage:
        tp, rp = stage.params.tune, stage.params.ray
        out = stage.path(stage.paths.tune)
        if not tp.enabled:
            stage.log("tune.enabled is false: train will use train.* as given")
            # best_params.json holds only what tune decided: nothing here (train.* as given).
            write_json_atomic(out / "best_params.json", {"source": "train", "params": {}})
            write_csv_atomic(out / "trials.csv", [], _columns([], tp.metric))
            _write_plots(stage, [], {}, tp.metric, tp.mode)
            stage.finish({"tune/trials": 0})
            return
        base, scaling, manifest = _base(stage)
        space = {k: d.model_dump(exclude_none=True) for k, d in tp.search_space.items()}
        cpus, gpus = scaling.cpus_per_worker, tp.workers_per_trial if tp.use_gpu else 0
        stage.meter.reserve(cpus=tp.max_concurrent_trials * tp.workers_per_trial * cpus,
                            gpus=tp.max_concurrent_trials * gpus)
        patient_worker_start()
        init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose, train_poll_s=rp.train_poll_s,
                 schedule_timeout_s=rp.schedule_timeout_s)
        plan = _plan(stage, cpus)
        options = plan.options
        stage.log("%d trials (%d at a time), %s search, %s on %s over %s; budget %s / %s", tp.num_samples,
                  options.max_concurrent_trials, tp.search_alg, tp.scheduler.upper(), tp.metric, sorted(space),
                  f"${tp.budget_usd:g}" if tp.budget_usd else "no $ limit",
                  f"{tp.time_budget_s:g}s" if tp.time_budget_s else "no time limit")
        name = _sweep_name(stage, base, manifest, scaling)
        t_sweep = time.perf_counter()
        sweep = run_sweep(base, space=space, options=options, scaling=scaling, storage_path=stage.storage(), name=name)
        sweep_wall = time.perf_counter() - t_sweep
        monitor = sweep.monitor
        if sweep.resumed:
            stage.log("resumed sweep %s (%d trials were already done)", name,
                      len(monitor.done) - len(set(monitor.started_here) & monitor.done))
        try:
            rows, histories = sweep_rows(sweep, space_keys=sorted(space), options=options, patience=tp.patience)
        except SweepInterrupted as err:
            raise StageError(str(err)) from None
        add_reserved_cost(rows, cpus=tp.workers_per_trial * cpus, gpus=gpus, nodes=plan.node_share,
                          rates=stage.meter.rates, gpu_type=plan.gpu_type)
        _log_trial_runs(stage, rows, histories, sorted(space))
        best_row = best_trial(rows, metric=tp.metric, mode=tp.mode)
        if best_row is None:
            raise StageError(f"no trial reported an epoch ({len(rows)} trials; budget spent: "
                             f"{monitor.exhausted_by or 'no'}); see Ray's logs under /tmp/ray/session_latest/logs")
        params = _write_best(out, base, best_row, space, tp.metric)
        write_csv_atomic(out / "trials.csv", rows, _columns(sorted(space), tp.metric))
        artifacts = _write_plots(stage, rows, histories, tp.metric, tp.mode)
        for r in rows:
            stage.log("%s", trial_line(r, space_keys=sorted(space), metric=tp.metric))
        stage.log("%s", spend_line(rows, num_samples=tp.num_samples, budget_usd=tp.budget_usd,
                                   exhausted_by=monitor.exhausted_by))
        stage.log("best: trial number %s (%s) -> %s", best_row["number"], best_row["trial"], params)
        stage.finish(sweep_metrics(rows, histories, best_row, metric=tp.metric, num_samples=tp.num_samples,
                                   monitor=monitor, resumed=sweep.resumed, repeatable=plan.repeatability_note is None,
                                   sweep_wall_s=sweep_wall, concurrent=options.max_concurrent_trials),
                     artifacts=[out / "trials.csv", out / "best_params.json", *artifacts])


if __name__ == "__main__":
    run_stage(main)
