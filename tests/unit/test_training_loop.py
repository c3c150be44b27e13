"""The per-rank training step without Ray: precision, schedules, accumulation, checkpoint state."""

import io

import pytest
import torch

from tests.demo_data import write_synthetic_split
from trainwise.components.models import build_model
from trainwise.components.training.data import augment, input_shape, load_split
from trainwise.components.training.driver import resolve, run_name
from trainwise.components.training.loop import Trainer
from trainwise.components.training.loop_config import LoopConfig
from trainwise.components.training.text import encode, fit_tokenizer
from tests.params import loop_config, scaling


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: torch's spinning threads slow tiny ops badly
    yield
    torch.set_num_threads(before)


def _cfg(**kw):
    kw = {"epochs": 4, "lr": 1e-2, "dropout": 0.0, **kw}
    return LoopConfig(data_dir="unused", n_classes=3, input_shape=(6,), model="mlp", n_train=64, **kw)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 6, generator=g) + torch.nn.functional.one_hot(y, 6).float() * 3
    return x, y


def _trainer(cfg, steps_per_epoch=4):
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape=cfg.input_shape, n_classes=3, dropout=cfg.dropout)
    return Trainer(model, cfg, device=torch.device("cpu"), steps_per_epoch=steps_per_epoch)


def _batches(x, y, bs=16):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def test_bf16_autocast_on_cpu_trains_and_runs_in_bf16():
    x, y = _data()
    tr = _trainer(_cfg(precision="bf16"))
    seen = []
    hook = tr.model.net[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    first = tr.train_epoch(_batches(x, y))
    for _ in range(3):
        last = tr.train_epoch(_batches(x, y))
    hook.remove()
    assert seen[0] == torch.bfloat16  # the linear layers really ran in bf16
    assert last[0] / last[2] < first[0] / first[2]
    assert next(tr.model.parameters()).dtype == torch.float32  # weights stay fp32
    assert tr.eval_epoch(_batches(x, y))[1] / len(y) > 0.9


def test_fp16_without_a_gpu_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="fp16 needs a GPU.*bf16"):
        _cfg(precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fp16_on_gpu_uses_the_grad_scaler():
    cfg = _cfg(precision="fp16", use_gpu=True)
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(6,), n_classes=3).cuda()
    tr = Trainer(model, cfg, device=torch.device("cuda"), steps_per_epoch=4)
    x, y = _data()
    tr.train_epoch(_batches(x, y))
    assert tr.scaler.is_enabled() and tr.scaler.get_scale() > 0


def test_gradient_accumulation_equals_one_big_batch():
    x, y = _data(32)
    big = _trainer(_cfg(optimizer="sgd", momentum=0.0))
    big.train_epoch([(x, y)])
    acc = _trainer(_cfg(optimizer="sgd", momentum=0.0, grad_accum_steps=2))
    acc.train_epoch(_batches(x, y, bs=16))  # two micro-batches, one optimiser step
    for a, b in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(a, b)
    assert acc.scheduler.last_epoch == 1  # one step taken


def test_gradient_clipping_bounds_the_update():
    x, y = _data(16)
    x = x * 1000  # huge gradients
    clipped = _trainer(_cfg(optimizer="sgd", momentum=0.0, weight_decay=0.0, grad_clip=0.01))
    before = [p.detach().clone() for p in clipped.model.parameters()]
    clipped.train_epoch([(x, y)])
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(clipped.model.parameters(), before)))
    assert moved.item() == pytest.approx(1e-2 * 0.01, rel=1e-3)  # lr x max norm


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle"])
def test_schedules_follow_their_shape_and_never_overrun(schedule):
    tr = _trainer(_cfg(lr_schedule=schedule), steps_per_epoch=4)
    x, y = _data(64)
    lrs = []
    for _ in range(5):  # one epoch more than planned: the schedule must not raise
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        tr.train_epoch(_batches(x, y))
    if schedule == "cosine":
        assert lrs[0] == pytest.approx(1e-2) and lrs[1] > lrs[2] > lrs[3] and lrs[4] == pytest.approx(0, abs=1e-9)
    else:
        assert lrs[0] < 1e-2 / 10 and max(lrs) > 0.5e-2 and lrs[4] < lrs[3] < max(lrs)


def test_label_smoothing_is_applied_to_the_training_loss():
    x, y = _data(16)
    plain, smooth = _trainer(_cfg(epochs=30)), _trainer(_cfg(epochs=30, label_smoothing=0.3))
    for _ in range(30):
        p, s = plain.train_epoch([(x, y)]), smooth.train_epoch([(x, y)])
    # smoothed targets keep the training loss off 0 (its floor here is ~0.6); plain CE goes to ~0
    assert p[0] / p[2] < 0.1 and s[0] / s[2] > 0.4


def test_checkpoint_state_round_trips_under_weights_only():
    x, y = _data()
    cfg = _cfg(lr_schedule="one_cycle", augment=0.5)
    a = _trainer(cfg)
    a.train_epoch(_batches(x, y))
    buf = io.BytesIO()
    torch.save({**a.state(), "config": cfg.to_dict(), "epoch": 0}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config", "epoch"}
    assert LoopConfig.from_dict(state["config"]) == cfg
    b = _trainer(cfg)
    b.load_state(state)
    # resumed and original continue identically: same weights, schedule, RNG (dropout, augmentation)
    a.train_epoch(_batches(x, y))
    b.train_epoch(_batches(x, y))
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]


def test_augmentation_is_seeded_and_keeps_shapes():
    x = torch.rand(8, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment(x, kind="image", strength=0.5, generator=g1), augment(x, kind="image", strength=0.5, generator=g2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augment(x, kind="image", strength=0.0, generator=g1), x)
    ids = torch.randint(2, 50, (4, 16))
    dropped = augment(ids, kind="text", strength=1.0, generator=g1)
    assert ((dropped == 1) | (dropped == ids)).all() and (dropped == 1).any()


def test_tokenizer_is_fitted_on_the_train_split_only(tmp_path):
    split = write_synthetic_split(tmp_path, "text")
    loop = resolve(loop_config(data_dir=str(split), n_classes=3, input_shape=(), model="gru", max_tokens=8))
    assert loop.modality == "text" and loop.input_shape == (8,)
    train_words = set()
    from trainwise.components.training.data import read_split
    from trainwise.components.training.text import words
    for t in read_split(str(split), "train").column("text").to_pylist():
        train_words.update(words(t))
    assert set(loop.tokenizer["vocab"][2:]) == train_words
    x, y, ids = load_split(str(split), "test", tokenizer=loop.tokenizer)
    assert x.dtype == torch.int64 and x.shape[1] == 8 and len(ids) == len(y)
    assert encode(["zzz unseen"], loop.tokenizer).tolist()[0][:2] == [1, 1]  # unknown words -> <unk>
    # deterministic: the same data gives the same vocabulary
    assert fit_tokenizer(["b a", "a c"], max_tokens=4, vocab_size=10)["vocab"] == ["<pad>", "<unk>", "a", "b", "c"]


@pytest.mark.parametrize("modality,shape", [("sequence", (1, 40)), ("features", (6,))])
def test_every_modality_decodes_to_the_model_input_shape(tmp_path, modality, shape):
    split = write_synthetic_split(tmp_path, modality)
    assert input_shape(str(split)) == shape
    x, y, _ = load_split(str(split), "train")
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape and len(x) == len(y)


def test_run_name_is_deterministic_and_changes_with_the_config():
    loop = _cfg()
    a = run_name("train", loop, scaling(num_workers=2), data_hash="h")
    assert a == run_name("train", _cfg(), scaling(num_workers=2), data_hash="h")
    assert a != run_name("train", _cfg(epochs=5), scaling(num_workers=2), data_hash="h")
    assert a != run_name("train", loop, scaling(num_workers=1), data_hash="h")
    assert a != run_name("train", loop, scaling(num_workers=2), data_hash="other")
    moved = LoopConfig(**{**loop.to_dict(), "data_dir": "/elsewhere"})
    assert a == run_name("train", moved, scaling(num_workers=2), data_hash="h")  # a checkout elsewhere resumes too


def test_a_finished_run_is_marked_in_local_and_url_storage(tmp_path):
    """The train stage marks a run finished once its model is published; a forced re-run with the
    same name then starts a new run instead of 'resuming' one that has nothing left to train."""
    import json

    from trainwise.components.training.driver import FINISHED, mark_finished, run_finished

    for storage in (str(tmp_path / "local"), f"file://{tmp_path}/url"):
        assert not run_finished(storage, "train-abc")
        mark_finished(storage, "train-abc", {"best_epoch": 3})
        assert run_finished(storage, "train-abc") and not run_finished(storage, "train-other")
    assert json.loads((tmp_path / "local" / "train-abc" / FINISHED).read_text()) == {"best_epoch": 3}
    assert (tmp_path / "url" / "train-abc" / FINISHED).exists()


# -- batch norm across ranks: a 1-worker trial trains like the 2-worker final model ------------

def _bn_run(rank: int, world: int, sync: bool, port: int, out: dict) -> None:
    """Two epochs of small_cnn (has BatchNorm) on a fixed dataset, the loop's own sampler and
    Trainer, DDP over gloo when world > 1. Writes rank 0's weights and BN buffers to ``out``."""
    import os

    import torch.distributed as dist

    from trainwise.components.training.loaders import MemoryBatches
    from trainwise.components.training.sync_batchnorm import sync_batchnorm

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 1, 8, 8, generator=g), torch.arange(128) % 3
    # SGD: the conv biases in front of a BN get a zero gradient up to rounding noise, which Adam
    # would normalise into full-size random steps on both sides of the comparison.
    cfg = loop_config(data_dir="unused", n_classes=3, input_shape=(1, 8, 8), model="small_cnn", batch_size=32,
                      lr=5e-2, dropout=0.0, epochs=2, n_train=128, optimizer="sgd")
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(1, 8, 8), n_classes=3, dropout=0.0)
    if sync:
        model = sync_batchnorm(model, world=world, device=torch.device("cpu"))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    per_rank = cfg.batch_size // world
    tr = Trainer(model, cfg, device=torch.device("cpu"), steps_per_epoch=128 // cfg.batch_size)
    batches = MemoryBatches(x, y, batch_size=per_rank, rank=rank, world=world, seed=0, shuffle=True)
    for epoch in range(2):
        tr.train_epoch(batches.epoch(epoch))
    if rank == 0:
        out.update({k: v.detach().clone() for k, v in tr.core.state_dict().items()})
    if world > 1:
        dist.destroy_process_group()


def _ddp_child(rank, world, sync, port, queue):
    out = {}
    _bn_run(rank, world, sync, port, out)
    if rank == 0:
        queue.put({k: v.numpy() for k, v in out.items()})


def _two_ranks(sync: bool) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_child, args=(r, 2, sync, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    state = queue.get(timeout=240)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return {k: torch.from_numpy(v) for k, v in state.items()}


def test_two_ranks_with_synced_batch_norm_train_like_one_worker_with_the_global_batch():
    one = {}
    _bn_run(0, 1, True, 0, one)         # a 1-worker trial: batch 32 through one BN
    synced = _two_ranks(sync=True)     # the final model's layout: 2 ranks x 16, BN over all 32
    per_rank = _two_ranks(sync=False)  # what it was before: BN statistics of each rank's 16 rows

    def gap(a, b):
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())

    assert any("running_mean" in k for k in one)
    assert gap(one, synced) < 1e-4, gap(one, synced)  # same weights and running statistics
    assert gap(one, per_rank) > 1e-3, gap(one, per_rank)  # and the check has teeth


def test_sync_batchnorm_keeps_a_frozen_layer_frozen():
    """A frozen backbone's BatchNorm stays frozen when converted for 2 CPU ranks: its new parameters
    required grad before, so DDP waited for gradients the frozen head never produces ("Expected to
    have finished reduction in the prior iteration", the photo benchmark's 2-worker frozen train)."""
    from trainwise.components.training.sync_batchnorm import CpuSyncBatchNorm, sync_batchnorm

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm2d(4)),
                                torch.nn.Linear(4, 2))
    for p in model[0].parameters():
        p.requires_grad_(False)
    for p in model[1].parameters():
        p.requires_grad_(False)
    converted = sync_batchnorm(model, world=2, device=torch.device("cpu"))
    assert isinstance(converted[0], CpuSyncBatchNorm) and isinstance(converted[1][0], CpuSyncBatchNorm)
    assert [p.requires_grad for p in converted.parameters()] == [False, False, False, False, True, True]
