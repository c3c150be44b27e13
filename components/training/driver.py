"""The training driver: one ``TorchTrainer`` run of :func:`train_loop_per_worker`.

The ``train`` stage calls :func:`fit` directly; a Tune trial of several workers calls the same
function with a ``TuneReportCallback`` (the Ray Train v2 Train-in-Tune pattern), and a trial of
one worker runs the same loop in its own Tune actor (components/tuning/sweep.py), so a trial
trains exactly the way the final model does.

Where the data is read. :func:`fit` runs on the driver and is the only place that opens the
split's files: with the ``memory`` loader it reads the train and val rows once (pyarrow) and
puts the raw table in Ray's object store; with ``ray_data`` it builds Ray Data streams of the
shards' row groups (components/training/streaming.py), never materialised, whose zero-CPU read
tasks are pinned to the driver's node for local paths (URLs such as ``s3://`` are read where the
tasks run). Either way workers on other nodes receive rows through the object store, so a split
that only the driver's disk holds trains on a multi-node cluster. Checkpoints are another
matter: ``storage_path`` must be storage every node can write (a URL or a shared mount) on a
cluster; a local path is fine on one machine.

Resuming. Ray Train v2 restores a run whose ``storage_path/name`` already holds a
checkpoint snapshot: the loop then continues from the latest checkpoint. With
:func:`run_name` (a hash of everything that determines the result), re-running a stage after
its driver died continues the same run; a changed config gets a new name, hence a fresh run.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from trainwise.components.training.loop import CHECKPOINT_FILE, DATA_REFS, PROGRESS_QUEUE, train_loop_per_worker
from trainwise.components.training.loop_config import LoopConfig

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class Scaling:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0     # used only with use_gpu; a fraction shares a GPU between workers
    placement_strategy: str = "PACK"  # Ray placement group strategy for the worker bundles

    def __post_init__(self):
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(f"placement_strategy={self.placement_strategy!r}; choose from {PLACEMENT_STRATEGIES}")

    @classmethod
    def from_train(cls, train) -> "Scaling":
        """The final run's scaling from the ``train`` section of params.yaml whole (its pydantic model
        or a mapping): every key that is a field here, with the section's values and defaults."""
        names = [f.name for f in fields(cls)]
        if isinstance(train, Mapping):
            return cls(**{k: train[k] for k in names if k in train})
        return cls(**{k: getattr(train, k) for k in names if hasattr(train, k)})

    def scaling_config(self):
        import ray.train

        resources = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}
        return ray.train.ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                       resources_per_worker=resources, placement_strategy=self.placement_strategy)


def resolve(loop: LoopConfig) -> LoopConfig:
    """Fill what the data determines: modality, input shape, train row count and, for text,
    the tokenizer (fitted on the train split only). Deterministic: same data, same result."""
    from trainwise.components.data.contract import read_table
    from trainwise.components.training.data import input_shape, modality
    from trainwise.components.training.text import fit_tokenizer

    kind = modality(loop.data_dir)
    train = read_table(loop.data_dir, columns=["label", *(["text"] if kind == "text" else [])],
                       filter_split="train")
    if train.num_rows == 0:
        raise ValueError(f"{loop.data_dir}: the train split is empty")
    tokenizer = loop.tokenizer
    if kind == "text" and tokenizer is None:
        tokenizer = fit_tokenizer(train.column("text").to_pylist(), max_tokens=loop.max_tokens,
                                  vocab_size=loop.vocab_size)
    loop = replace(loop, modality=kind, input_shape=input_shape(loop.data_dir, max_tokens=loop.max_tokens),
                   n_train=train.num_rows, tokenizer=tokenizer)
    if loop.backbone:  # model name, embedding size, weights path (components/embedding/training.py)
        from trainwise.components.embedding.training import resolve_backbone

        loop = replace(loop, **resolve_backbone(loop))
    return loop


def run_name(prefix: str, loop: LoopConfig, scaling: Scaling, *, data_hash: str) -> str:
    """A name that is the same exactly when the run would compute the same thing: the loop
    config (without the data's path, which differs between checkouts), the data's content
    hash and the worker layout. Same name + same storage path = Ray resumes that run."""
    key = {**loop.to_dict(), "data_dir": None, "embed_dir": None, "data": data_hash,
           "scaling": [scaling.num_workers, scaling.use_gpu, scaling.cpus_per_worker]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def run_data(loop: LoopConfig) -> tuple[dict | None, dict | None]:
    """(Ray Data datasets for ``TorchTrainer``, or object refs of the raw tables for the loop).
    ``loop`` is resolved (:func:`resolve`)."""
    import ray

    from trainwise.components.data.contract import read_table

    kind = loop.modality
    if loop.backbone and loop.backbone_mode == "frozen":  # the head trains on the embed stage's vectors
        from trainwise.components.embedding.training import embedding_tables

        return None, {s: ray.put(t) for s, t in embedding_tables(loop).items()}
    if loop.loader == "memory":
        return None, {s: ray.put(read_table(loop.data_dir, columns=["label", kind], filter_split=s))
                      for s in ("train", "val")}
    from trainwise.components.training.streaming import stream_datasets

    return stream_datasets(loop.data_dir, kind), None


def fit(loop: LoopConfig, *, scaling: Scaling, storage_path: str, name: str,
        max_failures: int = 0, checkpoints_to_keep: int = 2, callbacks: list | None = None,
        on_epoch: Callable[[dict], None] | None = None, collective_timeout_s: int = 120):
    """Train on ``scaling.num_workers`` DDP ranks; returns Ray Train's ``Result``.

    Checkpoints (every epoch, best ``checkpoints_to_keep`` by ``val/loss``) go under
    ``storage_path/name``; if that run already has checkpoints, training resumes from the
    latest. ``on_epoch`` is called in this process with rank 0's metrics as each epoch ends
    (Ray's own worker output stays off the terminal). ``collective_timeout_s`` bounds every
    collective (and the process-group rendezvous): a dead peer fails the group in that
    time instead of PyTorch's 30 minutes, and ``max_failures`` then restarts it.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainwise.components.training.streaming import StreamingDataConfig

    loop = resolve(replace(loop, use_gpu=scaling.use_gpu, cpus_per_worker=scaling.cpus_per_worker))
    datasets, refs = run_data(loop)
    config = loop.to_dict()
    if refs is not None:
        config[DATA_REFS] = refs
    queue = None
    if on_epoch is not None:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})
        config[PROGRESS_QUEUE] = queue
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo", timeout_s=collective_timeout_s),
        scaling_config=scaling.scaling_config(),
        datasets=datasets,
        dataset_config=StreamingDataConfig() if datasets else None,
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


def has_checkpoint(storage_path: str, name: str) -> bool:
    """Whether ``fit`` with this storage path and name would resume (local storage only)."""
    return "://" not in storage_path and (Path(storage_path) / name / "checkpoint_manager_snapshot.json").exists()


FINISHED = "trainwise_finished.json"  # written beside Ray's files once the train stage published the model


def _run_file(storage_path: str, name: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_path)
    return fs, f"{root.rstrip('/')}/{name}/{FINISHED}"


def run_finished(storage_path: str, name: str) -> bool:
    """Whether a run of this name already ran to the end and its model was published: resuming it
    would train nothing, so a forced re-run (``dvc repro -f``) must start a new one."""
    fs, path = _run_file(storage_path, name)
    return fs.exists(path)


def mark_finished(storage_path: str, name: str, info: dict) -> None:
    fs, path = _run_file(storage_path, name)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as fh:
        json.dump(info, fh)


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
    """The checkpoint dict (model weights, epoch, config, ...) of the epoch with the lowest val/loss."""
    return _load(result.get_best_checkpoint(metric="val/loss", mode="min"), result)


def checkpoint_history(checkpoint) -> list[dict]:
    """Every epoch's metrics the run trained up to ``checkpoint`` (the loop keeps its history in
    each checkpoint and carries it across resumes). ``mmap``: the weights stay on disk unread."""
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True, mmap=True)["history"]


def run_history(result) -> list[dict]:
    """Every epoch's metrics, from the latest checkpoint (Ray always keeps the latest one;
    ``result.metrics_dataframe`` only holds the epochs whose checkpoints were kept)."""
    return _load(result.checkpoint, result)["history"]
