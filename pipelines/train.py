"""DVC stage `train`: Ray Train DDP on `train.num_workers` workers -> models/model."""

import time

import numpy as np

from trainwise.components.atomic_io import write_csv_atomic
from trainwise.components.data.contract import read_json
from trainwise.components.cluster.placement import cannot_fit, cluster_nodes
from trainwise.components.ray_start import init_ray
from trainwise.components.stage_exit import refuse_if_orphaned
from trainwise.components.training.data import input_shape
from trainwise.components.serving.pyfunc import log_classifier
from trainwise.components.training.driver import (Scaling, best_checkpoint_state, fit, has_checkpoint, mark_finished,
                                        run_finished, run_history, run_name)
from trainwise.components.training.export import model_spec, save_model
from trainwise.components.training.loop_config import build_loop_config, merged_train_params
from trainwise.components.embedding.training import network_error
from trainwise.pipelines.config import ConfigError
from trainwise.pipelines.stage import Stage, run_stage
from trainwise.pipelines.stage_error import StageError

CURVE_COLUMNS = ["epoch", "train/loss", "val/loss", "train/acc", "val/acc", "gap/acc", "lr", "epoch_s",
                 "samples_per_s"]


def _with_tune_result(stage: Stage) -> dict:
    """Put what tune found into the stage's ``train`` section before the stage logs it, so the
    run's ``train.*`` MLflow params are the values the loop trains with. Returns best_params.json."""
    tuned = read_json(stage.path(stage.paths.tune) / "best_params.json")
    try:
        merged = merged_train_params(stage.params.train.model_dump(), tuned["params"])
        train = type(stage.params.train).model_validate(merged)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"{stage.paths.tune}/best_params.json: {err}") from None
    stage.params = stage.params.model_copy(update={"train": train})
    return tuned


def _check_fits(tp) -> None:
    """Per node: each worker needs one node with room for all of it (components/cluster/placement.py)."""
    worker = {"CPU": tp.cpus_per_worker, **({"GPU": tp.gpus_per_worker} if tp.use_gpu else {})}
    why = cannot_fit(cluster_nodes(), worker, tp.num_workers, tp.placement_strategy)
    if why:
        raise StageError(f"params.yaml: train.num_workers={tp.num_workers} x train.cpus_per_worker="
                         f"{tp.cpus_per_worker}{' with train.use_gpu' if tp.use_gpu else ''} {why}. Fix: lower "
                         "them, or join a cluster with bigger nodes (RAY_ADDRESS, ray.submit)")


def _run_name(stage: Stage, loop, scaling: Scaling, manifest: dict, storage: str) -> str:
    """Same params + data -> same name: a re-run after the driver died continues that run."""
    tp = stage.params.train
    name = (run_name("train", loop, scaling, data_hash=manifest["content_hash"]) if tp.resume
            else f"train-{time.strftime('%Y%m%d-%H%M%S')}-{stage.run_id[:8]}")
    if tp.resume and run_finished(storage, name):  # e.g. `dvc repro -f train`: the user wants it trained again
        stage.log("run %s already finished with these params and data; training afresh in a new run "
                  "(train.resume continues only unfinished runs)", name)
        name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{stage.run_id[:8]}"
    elif tp.resume and has_checkpoint(storage, name):
        stage.log("resuming run %s from its latest checkpoint (train.resume: false starts afresh)", name)
    return name


def main() -> None:
    stage = Stage("train")
    tuned = _with_tune_result(stage)
    with stage:
        tp, rp = stage.params.train, stage.params.ray
        hp = tuned["params"]
        data = stage.path(stage.paths.audit)  # the split after the label audit
        manifest = stage.record_input(data)
        classes = manifest["classes"]
        # tp already holds the tune result: the loop is built from it by the function tune's trials use
        why = network_error(tp.model_dump(), root=stage.root)  # bad model / backbone / weights: exit 2, no Ray
        if why:
            raise StageError(why)
        loop = build_loop_config(tp.model_dump(), tuned=hp, data_dir=str(data), n_classes=len(classes),
                                 input_shape=input_shape(data), embed_dir=str(stage.path(stage.paths.embed)))
        scaling = Scaling.from_train(tp)
        # train.* (logged by the stage) are the values trained with; hp.* say which came from tune.
        stage.tracker.log_params({f"hp.{k}": v for k, v in hp.items()} | {"hp.source": tuned["source"]})
        gpus = tp.num_workers * tp.gpus_per_worker if tp.use_gpu else 0
        stage.meter.reserve(cpus=tp.num_workers * tp.cpus_per_worker, gpus=gpus)
        init_ray(address=rp.address, num_cpus=rp.num_cpus, verbose=rp.verbose, train_poll_s=rp.train_poll_s,
                 schedule_timeout_s=rp.schedule_timeout_s)
        _check_fits(tp)
        stage.log("training %s on %d worker(s) (%s), up to %d epochs, hp from %s: %s",
                  f"a {tp.backbone_mode} {tp.backbone} backbone + head" if tp.backbone else tp.model, tp.num_workers,
                  "GPU" if tp.use_gpu else "CPU", tp.epochs, tuned["source"], hp)
        storage = stage.storage()
        name = _run_name(stage, loop, scaling, manifest, storage)
        result = fit(loop, scaling=scaling, storage_path=storage, name=name,
                     max_failures=tp.max_failures, checkpoints_to_keep=tp.checkpoints_to_keep,
                     collective_timeout_s=tp.collective_timeout_s,
                     on_epoch=lambda row: stage.log(
                         "epoch %2d  train/loss %.4f  val/loss %.4f  val/acc %.4f  gap/acc %+.4f  %.0f samples/s%s",
                         row["epoch"], row["train/loss"], row["val/loss"], row["val/acc"], row["gap/acc"],
                         row["samples_per_s"], f"  (restart {row['restarts']})" if row["restarts"] else ""))
        if result.error:
            raise result.error
        refuse_if_orphaned(stage.paths.model)  # Ray Train turns the orphan's SIGINT into a graceful abort
        history = run_history(result)
        stage.tracker.log_history(history)
        write_csv_atomic(stage.path(stage.paths.plots) / "train_curve.csv", history, CURVE_COLUMNS)

        best = best_checkpoint_state(result)
        best_row = next(r for r in history if r["epoch"] == best["epoch"] + 1)
        # Tabular models are served by column name: keep the names in the order the network takes them.
        names = {"feature_names": manifest["feature_names"]} if manifest.get("feature_names") else {}
        spec = model_spec(best["config"], classes=classes, epoch=best_row["epoch"], hp=hp, ray_run=name, **names)
        # A pyfunc that takes raw image bytes / base64 and preprocesses them like training did.
        info = stage.tracker.call("the model (log + register)", log_classifier, best["model"], spec,
                                  registered_model_name=stage.params.mlflow.registered_model)
        spec.update(mlflow_run_id=stage.run_id, registered_version=info and {
            "name": stage.params.mlflow.registered_model, "version": str(info.registered_model_version)})
        out = save_model(stage.path(stage.paths.model), best["model"], spec)
        mark_finished(storage, name, {"mlflow_run_id": stage.run_id, "best_epoch": best_row["epoch"]})
        stage.finish({
            **{k: best_row[k] for k in ("train/loss", "train/acc", "val/loss", "val/acc", "gap/acc")},
            "train/best_epoch": best_row["epoch"], "train/epochs_run": len(history),
            "train/samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
        }, artifacts=[out / "model.json"], logged_per_step=set(history[0]))


if __name__ == "__main__":
    run_stage(main)
