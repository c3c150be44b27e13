"""The training driver on real Ray Train: 2 DDP workers (gloo, CPU) on the digits split."""

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import psutil
import pytest
import torch

from trainwise.components.data.contract import read_manifest
from tests.demo_data import write_synthetic_split
from trainwise.components.training.data import input_shape, load_split
from trainwise.components.training.driver import Scaling, best_checkpoint_state, fit, run_history, run_name
from trainwise.components.training.export import load_model_from_state, model_spec
from tests.params import loop_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


EPOCHS = 6  # two_runs' runs; the killed-worker test's run (the same config) ends where they end


def _loop(data, **kw):
    kw = {"epochs": EPOCHS, **kw}
    # patience None (no early stopping) is the loop's, not a params.yaml value
    return replace(loop_config(data_dir=str(data), input_shape=input_shape(data), batch_size=64, lr=3e-3,
                               weight_decay=1e-4, dropout=0.1, seed=0, **kw), patience=None)


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
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
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
    """Ray Train worker processes of this test's own Ray (descendants of this process: the
    raylet started by ray.init, and the workers it forks), not any other on the machine."""
    workers = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                workers.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return workers


def _latest_checkpoint(snapshot) -> str | None:
    """The latest registered checkpoint in Ray Train's checkpoint manager snapshot, or None
    (not there yet, written partly, or no checkpoint in it yet)."""
    try:
        state = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return None
    latest = state.get("latest_checkpoint_result") if isinstance(state, dict) else None
    return (latest or {}).get("checkpoint_dir_name")


def test_a_killed_worker_resumes_from_the_last_checkpoint(two_runs, ray_session, digits_split, tmp_path):
    # The kill lands within ~0.1 s of the first registered checkpoint, and the surviving worker
    # waits on the dead one at its next all-reduce: a few epochs after it are enough
    epochs = EPOCHS
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=fit(
        _loop(digits_split, epochs=epochs), scaling=Scaling(num_workers=2), storage_path=str(tmp_path),
        name="faulty", max_failures=1, checkpoints_to_keep=1)))
    thread.start()
    deadline = time.monotonic() + 240
    snapshot = tmp_path / "faulty" / "checkpoint_manager_snapshot.json"
    # A checkpoint registered (the snapshot names it), and both workers up to kill one of.
    while _latest_checkpoint(snapshot) is None or len(workers := _train_workers()) < 2:
        assert thread.is_alive(), f"training ended before a worker could be killed: {done}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    assert thread.is_alive(), f"training ended before a worker could be killed: {done}"
    workers[0].send_signal(signal.SIGKILL)  # what a preempted node does to a worker
    thread.join(timeout=400)
    assert not thread.is_alive()
    history = run_history(done["result"])
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))  # nothing repeated, nothing lost
    assert history[0]["restarts"] == 0 and history[-1]["restarts"] == 1  # resumed once, from a checkpoint
    first_after = next(r["epoch"] for r in history if r["restarts"] == 1)
    assert 2 <= first_after < epochs  # the restart began after the checkpointed epoch, not at epoch 1
    # ... and it ends where an uninterrupted run of the same config ends (RNG state is checkpointed
    # too): two_runs' first run
    reference = run_history(two_runs[0][0])
    assert abs(history[-1]["val/acc"] - reference[-1]["val/acc"]) <= 0.02
    assert abs(history[-1]["val/loss"] - reference[-1]["val/loss"]) <= 0.05


def test_text_through_ray_data_in_bf16_trains_and_exports_its_tokenizer(ray_session, tmp_path):
    split = write_synthetic_split(tmp_path / "data", "text")
    loop = replace(loop_config(data_dir=str(split), n_classes=3, input_shape=(), model="gru", epochs=3, batch_size=32,
                               lr=3e-3, dropout=0.1, loader="ray_data", precision="bf16", lr_schedule="one_cycle",
                               grad_clip=1.0, label_smoothing=0.05, augment=0.2, max_tokens=12), patience=None)
    result = fit(loop, scaling=Scaling(num_workers=2), storage_path=str(tmp_path / "ray"), name="text",
                 checkpoints_to_keep=1)
    assert result.error is None
    history = run_history(result)
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[-1]["val/acc"] > 0.9
    best = best_checkpoint_state(result)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(best)
    spec = model_spec(best["config"], classes=["a", "b", "c"])
    assert spec["modality"] == "text" and spec["tokenizer"]["max_tokens"] == 12
    model, _ = load_model_from_state(best["model"], spec)
    x, y, _ = load_split(str(split), "test", tokenizer=spec["tokenizer"])
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    # served from raw strings through the exported tokenizer: the same answers as on the test tensors
    from trainwise.components.serving.predictor import Predictor
    from trainwise.components.training.data import read_split

    texts = read_split(str(split), "test").column("text").to_pylist()
    rows = Predictor(model, spec).predict(texts)
    with torch.no_grad():
        assert [r["class_index"] for r in rows] == model(x).argmax(1).tolist()


DRIVER = textwrap.dedent("""
    import sys
    from trainwise.components.ray_start import init_ray
    from trainwise.components.training.driver import Scaling, fit
    from trainwise.components.training.loop_config import LoopConfig
    init_ray(address=sys.argv[1], train_poll_s=0.25)
    fit(LoopConfig(**{config}), scaling=Scaling(num_workers=2), storage_path=sys.argv[2], name=sys.argv[3])
""")


def test_rerun_after_the_driver_died_resumes_the_same_run(ray_session, digits_split, tmp_path):
    """The driver (a second Ray job on this cluster) is SIGKILLed after its first checkpoint;
    fit() again with the same deterministic name continues from that checkpoint."""
    epochs = 6  # the driver is killed within ~0.1 s of its first registered checkpoint
    loop = _loop(digits_split, epochs=epochs, loader="ray_data")
    name = run_name("train", loop, Scaling(num_workers=2), data_hash=read_manifest(digits_split)["content_hash"])
    assert name == run_name("train", _loop(digits_split, epochs=epochs, loader="ray_data"), Scaling(num_workers=2),
                            data_hash=read_manifest(digits_split)["content_hash"])
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.replace("{config}", repr(loop.to_dict())))
    snapshot = tmp_path / "ray" / name / "checkpoint_manager_snapshot.json"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(script), ray_session.get_runtime_context().gcs_address,
                                   str(tmp_path / "ray"), name], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while _latest_checkpoint(snapshot) is None:
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.1)
            driver.kill()  # the driver dies; Ray ends its job's controller and workers
            assert driver.wait(timeout=60) == -signal.SIGKILL
        finally:
            if driver.poll() is None:
                driver.kill()
    result = fit(loop, scaling=Scaling(num_workers=2), storage_path=str(tmp_path / "ray"), name=name,
                 checkpoints_to_keep=1)
    assert result.error is None
    history = run_history(result)
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))  # nothing repeated, nothing lost
    first_resumed = next(r["epoch"] for r in history if r["restarts"] >= 1)
    assert 2 <= first_resumed < epochs  # began after the dead driver's checkpointed epoch, not at epoch 1


# That the train stage trains with every key tune chose (the loop's config in its checkpoint, its
# train.* MLflow params): tests/e2e/test_pipeline.py, on the session's demo pipeline run.
