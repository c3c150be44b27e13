"""The training driver: one ``TorchTrainer`` run of :func:`train_loop_per_worker`.

The ``train`` stage calls :func:`fit` directly; every Tune trial calls the same function
with a ``TuneReportCallback`` (the Ray Train v2 Train-in-Tune pattern), so a trial trains
exactly the way the final model does.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from components.training.loop import CHECKPOINT_FILE, PROGRESS_QUEUE, LoopConfig, train_loop_per_worker


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1


def fit(loop: LoopConfig, *, scaling: Scaling, storage_path: str, name: str,
        max_failures: int = 0, checkpoints_to_keep: int = 2, callbacks: list | None = None,
        on_epoch: Callable[[dict], None] | None = None):
    """Train on ``scaling.num_workers`` DDP ranks; returns Ray Train's ``Result``.

    Checkpoints (every epoch, best ``checkpoints_to_keep`` by ``val/loss``) go under
    ``storage_path/name``. ``on_epoch`` is called in this process with rank 0's metrics as
    each epoch ends (Ray's own worker output stays off the terminal).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    config = {**loop.to_dict(), "use_gpu": scaling.use_gpu, "cpus_per_worker": scaling.cpus_per_worker}
    queue = None
    if on_epoch is not None:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        config[PROGRESS_QUEUE] = queue
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=os.path.abspath(storage_path) if "://" not in storage_path else storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=checkpoints_to_keep, checkpoint_score_attribute="val/loss",
                checkpoint_score_order="min"),
            callbacks=callbacks or [],
        ),
    )
    if queue is None:
        return trainer.fit()
    # fit() blocks (and wants the main thread); a helper thread relays progress meanwhile.
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(queue, on_epoch, stop), daemon=True)
    relay.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        relay.join(timeout=30)
        queue.shutdown()


def _relay(queue, on_epoch: Callable[[dict], None], stop: threading.Event) -> None:
    from ray.util.queue import Empty

    while True:
        try:
            on_epoch(queue.get(timeout=0.5))
        except Empty:
            if stop.is_set():
                return


def _load(checkpoint, result) -> dict:
    if checkpoint is None:
        raise RuntimeError(f"training run at {result.path} reported no checkpoint")
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def best_checkpoint_state(result) -> dict:
    """The checkpoint dict (model weights, epoch, ...) of the epoch with the lowest val/loss."""
    return _load(result.get_best_checkpoint(metric="val/loss", mode="min"), result)


def run_history(result) -> list[dict]:
    """Every epoch's metrics, from the latest checkpoint (Ray always keeps the latest one;
    ``result.metrics_dataframe`` only holds the epochs whose checkpoints were kept)."""
    return _load(result.checkpoint, result)["history"]
