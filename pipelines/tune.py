"""DVC stage `tune`: a Ray Tune sweep over params.yaml's search space -> models/tune/best_params.json.

Resumes an interrupted sweep: the experiment is named after what determines its results
(tune params, the train params it starts from, the data's content hash), so running the stage
again after a crash restores it instead of starting over.
"""

import hashlib
import json
import statistics
import time
from dataclasses import replace

from components.atomic_io import write_csv_atomic, write_json_atomic
from components.cluster.placement import cannot_fit, cluster_nodes, describe_group, describe_nodes, groups_that_fit
from components.ray_start import init_ray
from components.training.data import input_shape
from components.training.driver import Scaling
from components.training.loop_config import LOOP_KEYS, build_loop_config
from components.embedding.training import network_error
from components.tracking.cost import reserved_cost
from components.tracking.mlflow_runs import log_trial_runs
from components.tuning.analysis import curve_rows, pareto_rows, plot_pareto
from components.tuning.budget import trial_gpu_type, trial_usd_per_hour
from components.tuning.space import apply_trial_config
from components.tuning.sweep import SweepInterrupted, SweepOptions, patient_worker_start, run_sweep, sweep_rows
from pipelines.config import ConfigError
from pipelines.stage import Stage, run_stage
from pipelines.stage_error import StageError

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


def repeatability_note(*, scheduler: str, workers_per_trial: int, max_concurrent_trials: int) -> str | None:
    """What to tell the user when the same params.yaml can give a different sweep, else None.

    One-worker trials use the ordered ASHA (the same decisions at any concurrency); multi-worker
    trials keep Ray's, whose decisions depend on which trial reports first (docs/tuning.md)."""
    if scheduler == "asha" and workers_per_trial > 1 and max_concurrent_trials > 1:
        return (f"note: with tune.workers_per_trial={workers_per_trial} and {max_concurrent_trials} trials at once, "
                "ASHA judges each trial against whatever the others have reported so far, so the same params can "
                "stop different trials from one run to the next; for a repeatable sweep set "
                "tune.max_concurrent_trials: 1 or tune.scheduler: fifo (docs/tuning.md)")
    return None


def _startup_metrics(startup_s: list[float]) -> dict[str, float]:
    if not startup_s:
        return {}
    return {"tune/trial_startup_s_median": statistics.median(startup_s), "tune/trial_startup_s_max": max(startup_s),
            "tune/trial_starts": len(startup_s)}


def main() -> None:
    with Stage("tune") as stage:
        tp, trp, rp = stage.params.tune, stage.params.train, stage.params.ray
        out = stage.path(stage.paths.tune)
        if not tp.enabled:
            stage.log("tune.enabled is false: train will use train.* as given")
            # best_params.json holds only what tune decided: nothing here (train.* as given).
            write_json_atomic(out / "best_params.json", {"source": "train", "params": {}})
            write_csv_atomic(out / "trials.csv", [], _columns([], tp.metric))
            _write_plots(stage, [], {}, tp.metric, tp.mode)
            stage.finish({"tune/trials": 0})
            return
        if not tp.search_space:
            raise ConfigError("params.yaml: tune.search_space is empty; add train params to sample "
                              "or set tune.enabled: false")
        for key in tp.search_space:
            if key not in LOOP_KEYS:
                raise ConfigError(f"params.yaml: tune.search_space.{key}: train.{key} is not a setting of the "
                                  f"training loop (components.training.loop_config.LoopConfig), so a trial cannot vary it")

        data = stage.path(stage.paths.audit)  # the split after the label audit
        manifest = stage.record_input(data)
        cpus = tp.cpus_per_worker or trp.cpus_per_worker
        scaling = Scaling(num_workers=tp.workers_per_trial, use_gpu=tp.use_gpu, cpus_per_worker=cpus)
        # The same function builds the train stage's loop (with the winner on top): a trial starts
        # from exactly what train would run, and varies only the sampled keys.
        why = network_error(trp.model_dump(), root=stage.root)  # bad model / backbone / weights: exit 2, no Ray
        if why:
            raise StageError(why)
        base = build_loop_config(trp.model_dump(), data_dir=str(data), n_classes=len(manifest["classes"]),
                                 input_shape=input_shape(data), cpus_per_worker=cpus, use_gpu=tp.use_gpu,
                                 embed_dir=str(stage.path(stage.paths.embed)))
        space = {k: d.model_dump(exclude_none=True) for k, d in tp.search_space.items()}
        options = SweepOptions(
            num_samples=tp.num_samples, max_concurrent_trials=tp.max_concurrent_trials, search_alg=tp.search_alg,
            optuna_startup_trials=tp.optuna_startup_trials, scheduler=tp.scheduler, max_epochs=tp.max_epochs,
            grace_period=tp.grace_period, reduction_factor=tp.reduction_factor, metric=tp.metric, mode=tp.mode,
            seed=tp.seed, budget_usd=tp.budget_usd, time_budget_s=tp.time_budget_s, resume=tp.resume)
        # Same inputs -> same name -> an interrupted sweep is found and resumed.
        identity = {"tune": tp.model_dump(mode="json", exclude={"enabled", "resume"}), "base": base.to_dict(),
                    "data": manifest["content_hash"], "scaling": vars(scaling)}
        digest = hashlib.blake2b(json.dumps(identity, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
        name = f"tune-{digest}" if tp.resume else f"tune-{digest}-{stage.run_id[:8]}"

        gpus = tp.workers_per_trial if tp.use_gpu else 0
        stage.meter.reserve(cpus=tp.max_concurrent_trials * tp.workers_per_trial * cpus,
                            gpus=tp.max_concurrent_trials * gpus)
        patient_worker_start()
        init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose, train_poll_s=rp.train_poll_s,
                 schedule_timeout_s=rp.schedule_timeout_s)
        # What fits is counted per node: a trial's workers each need a node with room for a whole
        # worker (one worker: the trial actor itself; more: their Train placement group, beside a
        # trial actor that holds no CPU, see components/tuning/sweep.py).
        nodes, worker = cluster_nodes(), {"CPU": cpus, **({"GPU": 1} if tp.use_gpu else {})}
        why = cannot_fit(nodes, worker, tp.workers_per_trial)
        if why:
            raise StageError(f"params.yaml: one trial (tune.workers_per_trial={tp.workers_per_trial}, "
                             f"{cpus} CPUs{' + 1 GPU' if tp.use_gpu else ''} per worker) {why}. Fix: lower "
                             "tune.workers_per_trial or tune.cpus_per_worker, or use bigger nodes")
        fits = groups_that_fit(nodes, worker, tp.workers_per_trial)
        if fits < tp.max_concurrent_trials:
            # More trials at once would only queue for workers (and run into ray.schedule_timeout_s).
            stage.log("note: the cluster's nodes (%s) hold %d trial(s) of %s at once; running %d at a time, "
                      "not tune.max_concurrent_trials=%d", describe_nodes(nodes), fits,
                      describe_group(worker, tp.workers_per_trial, "PACK"), fits, tp.max_concurrent_trials)
            options = replace(options, max_concurrent_trials=fits)
            stage.meter.reserve(cpus=fits * tp.workers_per_trial * cpus, gpus=fits * gpus)
        # Each trial is priced as the stage is (components/tracking/cost.py: GPU type, node rate), with
        # its share of the node-hours the stage reserves: trials at once split the node between them.
        gpu_type = trial_gpu_type(nodes, stage.meter.rates, fallback=stage.meter.gpu_type) if tp.use_gpu else None
        node_share = stage.meter.nodes / options.max_concurrent_trials
        if gpu_type:  # the stage's own GPU-hours (the trials' GPUs, reserved above) at the same rate
            stage.meter.gpu_type = gpu_type
        options = replace(options, usd_per_trial_hour=trial_usd_per_hour(
            workers=tp.workers_per_trial, cpus_per_worker=cpus, use_gpu=tp.use_gpu, node_share=node_share,
            rates=stage.meter.rates, gpu_type=gpu_type))
        note = repeatability_note(scheduler=tp.scheduler, workers_per_trial=tp.workers_per_trial,
                                  max_concurrent_trials=options.max_concurrent_trials)
        if note:
            stage.log("%s", note)
        stage.log("%d trials (%d at a time), %s search, %s on %s over %s; budget %s / %s", tp.num_samples,
                  options.max_concurrent_trials, tp.search_alg, tp.scheduler.upper(), tp.metric, sorted(space),
                  f"${tp.budget_usd:g}" if tp.budget_usd else "no $ limit",
                  f"{tp.time_budget_s:g}s" if tp.time_budget_s else "no time limit")
        t_sweep = time.perf_counter()
        sweep = run_sweep(base, space=space, options=options, scaling=scaling,
                          storage_path=stage.storage(), name=name)
        sweep_wall = time.perf_counter() - t_sweep
        monitor = sweep.monitor
        if sweep.resumed:
            stage.log("resumed sweep %s (%d trials were already done)", name,
                      len(monitor.done) - len(set(monitor.started_here) & monitor.done))

        try:
            rows, histories = sweep_rows(sweep, space_keys=sorted(space), options=options, patience=tp.patience)
        except SweepInterrupted as err:
            raise StageError(str(err)) from None
        for row in rows:  # cost/wall_s, cost/cpu_hours, ... of the resources each trial held, beside its cost/usd
            held = reserved_cost(row.get("time_s", 0.0), cpus=tp.workers_per_trial * cpus, gpus=gpus,
                                 nodes=node_share, rates=stage.meter.rates, gpu_type=gpu_type)
            row.update({k: v for k, v in held.items() if k != "cost/usd"})
        run_ids = stage.tracker.call("the trial runs", log_trial_runs, rows, histories,
                                     param_keys=sorted(space)) or []
        for rid, row in zip(run_ids, rows):  # log_trial_runs logs cost/usd; the rest of cost/* here
            stage.tracker.log_metrics({k: v for k, v in row.items() if k.startswith("cost/") and k != "cost/usd"},
                                      run_id=rid)
        key = f"best_{tp.metric}"
        ok = [r for r in rows if r["status"] == "ok" and key in r]
        if not ok:
            raise StageError(f"no trial reported an epoch ({len(rows)} trials; budget spent: "
                             f"{monitor.exhausted_by or 'no'}); see Ray's logs under /tmp/ray/session_latest/logs")
        best_row = (min if tp.mode == "min" else max)(ok, key=lambda r: r[key])
        tuned = apply_trial_config(base, {k: best_row[k] for k in space})
        params = {k: getattr(tuned, k) for k in sorted(space)}  # every tuned key, typed as the loop took it
        write_json_atomic(out / "best_params.json", {"source": "tune", "params": params,
                                                     # the trial's number, not Ray's random id: the same file on a
                                                     # re-run with the same result, so DVC need not re-run train
                                                     "trial_number": best_row["number"],
                                                     tp.metric: best_row[key], "epoch": best_row["best_epoch"]})
        write_csv_atomic(out / "trials.csv", rows, _columns(sorted(space), tp.metric))
        artifacts = _write_plots(stage, rows, histories, tp.metric, tp.mode)

        for r in rows:
            stage.log("%s %s epochs=%d stopped_by=%s best %s=%s gap/acc=%s%s $%.6f", r["trial"],
                      {k: (f"{r[k]:.3g}" if isinstance(r[k], float) else r[k]) for k in sorted(space)}, r["epochs"],
                      r["stopped_by"], tp.metric, f"{r.get(key, float('nan')):.4f}",
                      f"{r.get('gap/acc', float('nan')):+.3f}", "  OVERFIT" if r["overfit"] else "", r["cost/usd"])
        spent = sum(r["cost/usd"] for r in rows)
        never = tp.num_samples - sum(1 for r in rows if r["epochs"])
        by_budget = sum(1 for r in rows if r["stopped_by"] == "budget")
        stage.log("spent $%.6f on trials%s; %d of %d trials ran, %d stopped by the budget, %d never started%s",
                  spent, f" of a ${tp.budget_usd:g} budget" if tp.budget_usd else "", tp.num_samples - never,
                  tp.num_samples, by_budget, never,
                  f" (budget spent: {monitor.exhausted_by})" if monitor.exhausted_by else "")
        stage.log("best: trial number %s (%s) -> %s", best_row["number"], best_row["trial"], params)
        stage.finish({"tune/trials": len(rows), "tune/failed_trials": sum(r["status"] == "error" for r in rows),
                      "tune/trial_epochs": sum(r["epochs"] for r in rows),
                      "tune/asha_stopped_trials": sum(r["stopped_by"] == "asha" for r in rows),
                      # a trial at a rung before an earlier trial: it waited, paused (components/tuning/ordered_asha.py)
                      "tune/asha_pauses": getattr(monitor.scheduler, "num_paused", 0),
                      "tune/overfit_trials": sum(bool(r["overfit"]) for r in rows),
                      "tune/budget_stopped_trials": by_budget, "tune/skipped_trials": never,
                      "tune/spent_usd": spent, "tune/budget_exhausted": int(monitor.exhausted_by is not None),
                      "tune/resumed": int(sweep.resumed),
                      # 1: these params give these trials on every run (the wall and cost figures aside)
                      "tune/repeatable": int(note is None and not sweep.resumed and monitor.exhausted_by is None),
                      # Tune's overhead = sweep wall against the time trials spent in epochs (benchmarks/pipeline_stages.py)
                      "tune/sweep_wall_s": sweep_wall,
                      "tune/trial_epochs_s": sum(e.get("epoch_s", 0.0) for h in histories.values() for e in h),
                      "tune/concurrent_trials": options.max_concurrent_trials,
                      # per trial start (new actor, reused actor, resume): Tune's start to its first
                      # epoch, less the epoch; the first trials pay a new actor's process and imports
                      **_startup_metrics(monitor.startup_s),
                      **({"tune/first_actors_start_s": max(monitor.first_start_wait_s[:options.max_concurrent_trials])}
                         if monitor.first_start_wait_s else {}),
                      f"tune/best/{tp.metric}": best_row[key], "tune/best/val/acc": best_row["val/acc"]},
                     artifacts=[out / "trials.csv", out / "best_params.json", *artifacts])


if __name__ == "__main__":
    run_stage(main)
