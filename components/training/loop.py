"""The training loop that Ray Train runs on every DDP rank, and a one-worker Tune trial runs itself.

It is a plain function of a config dict, so the same loop serves the ``train`` stage and
every Tune trial. Two entry points share one body (:func:`run_loop`): :func:`train_loop_per_worker`
on a Ray Train worker (a rank of a ``TorchTrainer``), and :class:`TuneSession` for a trial of
one worker, which runs the loop directly in its Tune trial actor (no controller, placement
group or worker group to start: Ray's own guide for single-process trials). What differs is only
where rank/world, the checkpoint to resume and ``report`` come from. All ranks compute; only
rank 0 writes checkpoints.

With more than one rank every BatchNorm layer is synchronised across ranks, so a 1-worker trial
trains like the multi-worker final model (components/training/sync_batchnorm.py). Every epoch
reports ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` and ``gap/acc`` (train - val
accuracy, the overfitting signal), computed over the whole split (summed across ranks), plus
``lr``, ``epoch_s`` and ``samples_per_s``.

Data reaches the worker one of two ways (``LoopConfig.loader``, components/training/loaders.py):
``memory`` or ``ray_data``. Either way decoding and augmentation run here, on the worker, and no
worker opens the driver's files. The config is :class:`trainwise.components.training.loop_config.LoopConfig`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn

from trainwise.components.training.loaders import MemoryBatches, RayDataBatches
from trainwise.components.training.loop_config import LoopConfig
from trainwise.components.training.sync_batchnorm import sync_batchnorm

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_QUEUE = "progress_queue"  # optional config key: a ray.util.queue.Queue that rank 0 feeds
DATA_REFS = "data_refs"            # config key of the memory loader: {"train": ObjectRef, "val": ObjectRef}

def amp_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def make_optimizer(params, cfg: LoopConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: LoopConfig, *, steps_per_epoch: int):
    """Stepped once per optimiser step; ``total_steps`` covers ``cfg.epochs`` epochs."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.lr_schedule == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   cycle_momentum=cfg.optimizer == "sgd")
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def optimizer_steps_per_epoch(cfg: LoopConfig, world: int) -> int:
    """Optimiser steps one rank takes per epoch (both loaders give each rank ~n/world rows)."""
    per_rank = max(1, cfg.batch_size // world)
    batches = math.ceil(math.ceil((cfg.n_train or 1) / world) / per_rank)
    return max(1, math.ceil(batches / cfg.grad_accum_steps))


class Trainer:
    """One rank's model, optimiser, schedule and precision: the steps of an epoch.

    Free of Ray so that unit tests drive it directly; ``train_loop_per_worker`` wraps it.
    """

    def __init__(self, model: nn.Module, cfg: LoopConfig, *, device: torch.device, steps_per_epoch: int):
        self.model, self.cfg, self.device = model, cfg, device
        self.core = model.module if hasattr(model, "module") else model
        self.optimizer = make_optimizer(model.parameters(), cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, steps_per_epoch=steps_per_epoch)
        self.total_steps = max(1, cfg.epochs * steps_per_epoch)
        self.dtype = amp_dtype(cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # augmentation

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _step(self) -> None:
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler.last_epoch < self.total_steps:  # one_cycle refuses to step past its end
            self.scheduler.step()

    def train_epoch(self, batches, *, augment_fn=None) -> torch.Tensor:
        """One pass over ``batches`` of (x, y) with optimiser steps; returns [loss_sum, correct, count]."""
        self.model.train()
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        accum = self.cfg.grad_accum_steps
        ddp_sync = getattr(self.model, "no_sync", None)
        pending = 0
        self.optimizer.zero_grad(set_to_none=True)
        for xb, yb in batches:
            if augment_fn is not None:
                xb = augment_fn(xb, self.generator)
            xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            pending += 1
            # DDP all-reduces gradients on every backward unless told not to: skip it on the
            # micro-batches that only accumulate.
            sync = pending == accum or ddp_sync is None
            with (contextlib.nullcontext() if sync else ddp_sync()):
                with self._autocast():
                    logits = self.model(xb)
                    loss = self.loss_fn(logits.float(), yb)
                self.scaler.scale(loss / accum).backward()
            if pending == accum:
                self._step()
                pending = 0
            # Accumulate on the device: no host sync per batch (matters on GPU).
            stats[0] += loss.detach().double() * len(yb)
            stats[1] += (logits.argmax(1) == yb).sum()
            stats[2] += len(yb)
        if pending:  # a last, partial accumulation (DDP synced nothing for it: sync now)
            if ddp_sync is not None:
                for p in self.model.parameters():
                    if p.grad is not None and dist.is_initialized():
                        dist.all_reduce(p.grad)
                        p.grad.div_(dist.get_world_size())
            self._step()
        return stats

    @torch.no_grad()
    def eval_epoch(self, batches) -> torch.Tensor:
        # The bare module, not the DDP wrapper: DDP's forward broadcasts buffers (a collective),
        # which would hang when ranks score different numbers of batches.
        model = self.core
        model.eval()
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        loss_fn = nn.CrossEntropyLoss(reduction="sum")  # val/loss without label smoothing
        for xb, yb in batches:
            xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            with self._autocast():
                logits = model(xb).float()
            stats[0] += loss_fn(logits, yb).double()
            stats[1] += (logits.argmax(1) == yb).sum()
            stats[2] += len(yb)
        return stats

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "augment": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng}

    def load_state(self, state: dict) -> None:
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.generator.set_state(rng["augment"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _TrainSession:
    """A rank of a Ray Train ``TorchTrainer``."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(sync_batchnorm(model, world=self.world, device=self.device))

    def dataset(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None, history: list[dict]) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir else None)


class TuneSession:
    """A one-worker Tune trial running the loop in its own trial actor (a function trainable).

    ``datasets``: the ray_data loader's Ray Data datasets by split (the memory loader's object
    refs travel in the config). ``decorate(metrics, history)`` may add keys to what is reported
    to Tune (the sweep adds its objective, computed from the whole history so it survives a
    resume)."""

    rank, world = 0, 1

    def __init__(self, *, use_gpu: bool = False, datasets: dict | None = None, decorate=None):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.datasets, self.decorate = datasets or {}, decorate

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)  # what prepare_model does for one worker (no DDP wrapper)

    def dataset(self, name: str):
        return self.datasets[name].iterator()

    def checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None, history: list[dict]) -> None:
        from ray import tune

        if self.decorate is not None:
            metrics = self.decorate(dict(metrics), history)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


def _checkpoint_state(checkpoint, device) -> dict:
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=True)


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train entry point: one DDP rank of a ``TorchTrainer``."""
    run_loop(config, _TrainSession())


def run_loop(config: dict, session) -> None:
    """The loop body, for a Ray Train rank or a Tune trial actor (``session``, see above)."""
    import ray

    from trainwise.components.models import build_model
    from trainwise.components.training.data import augment, decode, to_numpy

    config = dict(config)
    progress = config.pop(PROGRESS_QUEUE, None)
    refs = config.pop(DATA_REFS, None)
    cfg = LoopConfig.from_dict(config)
    rank, world = session.rank, session.world
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = session.device
    kind, shape = cfg.modality, tuple(cfg.input_shape)
    if cfg.backbone and cfg.backbone_mode == "frozen":  # rows are the embed stage's vectors (driver.run_data)
        kind, shape = "features", (cfg.embed_dim,)
    per_rank = max(1, cfg.batch_size // world)

    def decode_fn(batch):
        return decode(batch, kind=kind, shape=shape, tokenizer=cfg.tokenizer)

    if cfg.loader == "memory":
        (x_train, y_train), (x_val, y_val) = (decode_fn(to_numpy(ray.get(refs[s]), kind)) for s in ("train", "val"))
        train_batches = MemoryBatches(x_train, y_train, batch_size=per_rank, rank=rank, world=world,
                                       seed=cfg.seed, shuffle=True)
        val_batches = MemoryBatches(x_val, y_val, batch_size=1024, rank=rank, world=world, seed=cfg.seed,
                                     shuffle=False)
    else:
        train_batches = RayDataBatches(session.dataset("train"), decode_fn, batch_size=per_rank, rank=rank,
                                        world=world, seed=cfg.seed, train=True)
        val_batches = RayDataBatches(session.dataset("val"), decode_fn, batch_size=1024, rank=rank, world=world,
                                      seed=cfg.seed, train=False)

    if cfg.backbone:  # pretrained backbone + linear head; frozen: only the head learns (models/backbones.py)
        from trainwise.components.models.backbones import build_classifier

        model = build_classifier(cfg.backbone, cfg.pretrained, n_classes=cfg.n_classes, dropout=cfg.dropout,
                                 frozen=cfg.backbone_mode == "frozen", seed=cfg.seed)
    else:  # params: what a package.module:factory model receives (components/models/custom.py)
        model = build_model(cfg.model, input_shape=shape, n_classes=cfg.n_classes, dropout=cfg.dropout,
                            vocab_size=len(cfg.tokenizer["vocab"]) if cfg.tokenizer else None,
                            params={k: v for k, v in cfg.to_dict().items() if k != "tokenizer"},
                            vocab=(cfg.tokenizer or {}).get("vocab"))
    if cfg.backbone and cfg.backbone_mode == "frozen" and cfg.loader == "memory":
        # A linear head on frozen embeddings starts where the linear probe ends (fitted here on the
        # train rows only; every rank fits the same one): from a random start it ended below the
        # probe, the same model class (components/models/linear_probe.py). Training then moves it
        # by cross-entropy on the same rows, and early stopping keeps the best val/loss epoch.
        from trainwise.components.models.linear_probe import init_from_probe

        init_from_probe(model, x_train.numpy(), y_train.numpy(), seed=cfg.seed)
    model = session.prepare_model(model)
    trainer = Trainer(model, cfg, device=device, steps_per_epoch=optimizer_steps_per_epoch(cfg, world))
    augment_fn = (lambda x, g: augment(x, kind=kind, strength=cfg.augment, generator=g, hflip=cfg.hflip)) \
        if cfg.augment or cfg.hflip else None

    start_epoch, best_val, bad_epochs, history, restarts = 0, float("inf"), 0, [], 0
    checkpoint = session.checkpoint()
    if checkpoint:  # a restarted worker group, or a re-run of the same run, resumes here
        state = _checkpoint_state(checkpoint, device)
        if LoopConfig.from_dict(state["config"]) != cfg:
            raise RuntimeError("the checkpoint in this run's storage was written with another config; "
                               "use a new run name (or delete the run directory) to start afresh")
        trainer.load_state(state)
        start_epoch, best_val, bad_epochs = state["epoch"] + 1, state["best_val"], state["bad_epochs"]
        history, restarts = state["history"], state["restarts"] + 1
        if state.get("stopped"):
            start_epoch = cfg.epochs  # finished (early stopping) before: nothing left to do

    checkpoint_s = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = trainer.optimizer.param_groups[0]["lr"]
        tr = _all_sum(trainer.train_epoch(train_batches.epoch(epoch), augment_fn=augment_fn)).tolist()
        va = _all_sum(trainer.eval_epoch(val_batches.epoch(epoch))).tolist()
        seconds = time.perf_counter() - t0
        val_loss = va[0] / va[2]
        # Early stopping watches an exponential moving average of val/loss (patience_smoothing; 0: the
        # raw value), so one noisy epoch neither resets the count nor trips it; best_val stays the raw best.
        a = cfg.patience_smoothing
        smoothed = val_loss if not history else a * history[-1].get("val/loss_smoothed", val_loss) + (1 - a) * val_loss
        best_smoothed = min((h.get("val/loss_smoothed", h["val/loss"]) for h in history), default=float("inf"))
        best_val = min(best_val, val_loss)
        bad_epochs = 0 if smoothed < best_smoothed else bad_epochs + 1
        metrics = {
            "epoch": epoch + 1,
            "train/loss": tr[0] / tr[2], "train/acc": tr[1] / tr[2],
            "val/loss": val_loss, "val/acc": va[1] / va[2],
            "gap/acc": tr[1] / tr[2] - va[1] / va[2],
            "val/best_loss": best_val, "val/loss_smoothed": smoothed, "lr": lr,
            "epoch_s": seconds, "samples_per_s": tr[2] / seconds,
            "train/rows": tr[2], "val/rows": va[2],  # rows seen, all ranks: what the loaders delivered
            "restarts": restarts,  # times this run resumed from a checkpoint (worker or driver failure)
            "checkpoint_s": checkpoint_s,  # writing the previous epoch's checkpoint (rank 0; 0 at the first)
        }
        history.append(metrics)
        stop = cfg.patience is not None and bad_epochs >= cfg.patience
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                t_save = time.perf_counter()
                torch.save({**trainer.state(), "epoch": epoch, "best_val": best_val, "bad_epochs": bad_epochs,
                            "history": history, "restarts": restarts, "stopped": stop, "config": cfg.to_dict()},
                           os.path.join(d, CHECKPOINT_FILE))
                # what checkpointing every epoch costs, outside epoch_s; reported with the next epoch
                # (this one's metrics are inside the file being written) (benchmarks/train_throughput.py)
                checkpoint_s = time.perf_counter() - t_save
            session.report(metrics, d if rank == 0 else None, history)
        if progress is not None and rank == 0:
            progress.put_nowait(metrics)
        if stop:
            break
