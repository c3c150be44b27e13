"""The per-worker training loop that Ray Train runs on every DDP rank.

It is a plain function of a config dict, so the same loop serves the ``train`` stage and
every Tune trial. All ranks compute; only rank 0 writes checkpoints. Every epoch reports
``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` and ``gap/acc`` (train - val
accuracy, the overfitting signal), computed over the whole split (summed across ranks).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_QUEUE = "progress_queue"  # optional config key: a ray.util.queue.Queue that rank 0 feeds


@dataclass
class LoopConfig:
    data_dir: str              # split dataset (absolute path, or storage every node sees)
    n_classes: int
    input_shape: tuple         # (channels, height, width)
    model: str = "small_cnn"
    epochs: int = 15
    batch_size: int = 64       # global; each rank takes batch_size // world_size
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dropout: float = 0.25
    patience: int | None = 5   # None: no early stopping (Tune's scheduler decides)
    seed: int = 0
    cpus_per_worker: int = 1
    use_gpu: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _epoch_pass(model, loader, device, *, optimizer=None) -> torch.Tensor:
    """One pass; returns [loss_sum, correct, count] on ``device`` (summed over this rank)."""
    training = optimizer is not None
    model.train(training)
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with torch.set_grad_enabled(training):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if training:
                optimizer.zero_grad(set_to_none=True)
                (loss / len(yb)).backward()
                optimizer.step()
            # Accumulate on the device: no host sync per batch (matters on GPU).
            stats[0] += loss.detach().double()
            stats[1] += (logits.argmax(1) == yb).sum()
            stats[2] += len(yb)
    return stats


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from components.models import build_model
    from components.training.data import load_split

    config = dict(config)
    progress = config.pop(PROGRESS_QUEUE, None)
    cfg = LoopConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    x_train, y_train, _ = load_split(cfg.data_dir, "train")
    x_val, y_val, _ = load_split(cfg.data_dir, "val")
    per_rank = max(1, cfg.batch_size // world)
    sampler = DistributedSampler(TensorDataset(x_train, y_train), num_replicas=world, rank=rank,
                                 shuffle=True, seed=cfg.seed, drop_last=False)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=per_rank, sampler=sampler)
    # Validation: each rank scores a disjoint slice, sums are all-reduced: exact, no padding.
    val_loader = DataLoader(TensorDataset(x_val[rank::world], y_val[rank::world]), batch_size=1024)

    model = build_model(cfg.model, input_shape=tuple(cfg.input_shape), n_classes=cfg.n_classes,
                        dropout=cfg.dropout)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    core = model.module if hasattr(model, "module") else model

    start_epoch, best_val, bad_epochs, history, restarts = 0, float("inf"), 0, [], 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group resumes where the last checkpoint left off
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        start_epoch, best_val, bad_epochs = state["epoch"] + 1, state["best_val"], state["bad_epochs"]
        history, restarts = state["history"], state["restarts"] + 1

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        tr = _all_sum(_epoch_pass(model, train_loader, device, optimizer=optimizer)).tolist()
        va = _all_sum(_epoch_pass(model, val_loader, device)).tolist()
        seconds = time.perf_counter() - t0
        val_loss = va[0] / va[2]
        improved = val_loss < best_val
        best_val, bad_epochs = (val_loss, 0) if improved else (best_val, bad_epochs + 1)
        metrics = {
            "epoch": epoch + 1,
            "train/loss": tr[0] / tr[2], "train/acc": tr[1] / tr[2],
            "val/loss": val_loss, "val/acc": va[1] / va[2],
            "gap/acc": tr[1] / tr[2] - va[1] / va[2],
            "val/best_loss": best_val,
            "epoch_s": seconds, "samples_per_s": tr[2] / seconds,
            "restarts": restarts,  # times this run resumed from a checkpoint after a failure
        }
        history.append(metrics)
        stop = cfg.patience is not None and bad_epochs >= cfg.patience
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                            "rng": torch.get_rng_state(), "epoch": epoch, "best_val": best_val,
                            "bad_epochs": bad_epochs, "history": history, "restarts": restarts,
                            "config": config},
                           os.path.join(d, CHECKPOINT_FILE))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)
        if progress is not None and rank == 0:
            progress.put_nowait(metrics)
        if stop:
            break
