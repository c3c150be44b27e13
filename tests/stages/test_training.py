"""The training driver on real Ray Train: 2 DDP workers (gloo, CPU) on the digits split."""

import os
import signal
import threading
import time

import psutil
import pytest
import torch

from components.training.data import input_shape
from components.training.driver import Scaling, best_checkpoint_state, fit, run_history
from components.training.export import load_model_from_state
from components.training.loop import LoopConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _loop(data, **kw):
    kw = {"epochs": 3, **kw}
    return LoopConfig(data_dir=str(data), n_classes=10, input_shape=input_shape(data), batch_size=64,
                      lr=3e-3, weight_decay=1e-4, dropout=0.1, patience=None, seed=0, **kw)


@pytest.fixture(scope="module")
def two_runs(ray_session, digits_split, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ray-storage")
    seen = []  # run 0 relays progress to the driver as epochs end; run 1 does not
    runs = [fit(_loop(digits_split), scaling=Scaling(num_workers=2), storage_path=str(storage), name=f"run{i}",
                checkpoints_to_keep=1, on_epoch=seen.append if i == 0 else None) for i in range(2)]
    return runs, seen


def test_ddp_run_reports_every_epoch_and_learns(two_runs):
    (result, _), seen = two_runs
    assert result.error is None
    history = run_history(result)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "gap/acc", "samples_per_s"):
        assert all(key in r for r in history)
    assert history[-1]["val/acc"] > 0.85
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["gap/acc"] == pytest.approx(history[-1]["train/acc"] - history[-1]["val/acc"])
    assert seen == history  # the driver saw every epoch, as it ended, from rank 0


def test_best_checkpoint_is_the_lowest_val_loss_epoch_and_loads_safely(two_runs, digits_split):
    result = two_runs[0][0]
    history = run_history(result)
    best = best_checkpoint_state(result)  # torch.load(weights_only=True) inside
    assert best["epoch"] + 1 == min(history, key=lambda r: r["val/loss"])["epoch"]
    model, _ = load_model_from_state(best["model"], {"model": "small_cnn", "input_shape": input_shape(digits_split),
                                                     "classes": [str(i) for i in range(10)], "dropout": 0.1})
    assert model(torch.zeros(2, *input_shape(digits_split))).shape == (2, 10)


def test_same_seed_gives_identical_metrics_on_cpu(two_runs):
    a, b = (run_history(r) for r in two_runs[0])
    keys = ("train/loss", "val/loss", "val/acc")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def _train_workers():
    return [p for p in psutil.process_iter(["cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_session, digits_split, tmp_path):
    epochs = 20
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=fit(
        _loop(digits_split, epochs=epochs), scaling=Scaling(num_workers=2), storage_path=str(tmp_path),
        name="faulty", max_failures=1, checkpoints_to_keep=1)))
    thread.start()
    deadline = time.monotonic() + 240
    # The snapshot is written once a checkpoint is registered (not merely being uploaded).
    while not (tmp_path / "faulty" / "checkpoint_manager_snapshot.json").exists() or len(_train_workers()) < 2:
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    os.kill(_train_workers()[0].pid, signal.SIGKILL)  # what a preempted node does to a worker
    thread.join(timeout=400)
    assert not thread.is_alive()
    history = run_history(done["result"])
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))  # nothing repeated, nothing lost
    assert history[0]["restarts"] == 0 and history[-1]["restarts"] == 1  # resumed once, from a checkpoint
    first_after = next(r["epoch"] for r in history if r["restarts"] == 1)
    assert 2 <= first_after < epochs  # the restart began after the checkpointed epoch, not at epoch 1
