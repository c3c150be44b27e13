"""``train.loader: ray_data`` streams the train split from the Parquet shards (issue 29, "Training
streams"): a split whose decoded pixels are five times the object store (stored as PNG files,
decoded in the read tasks) trains on a two-CPU Ray with two one-CPU workers, nothing spills, every
row is seen once."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from trainwise.components.data.contract import read_manifest, read_table
from tests.conftest import REPO
from tests.stream_data import write_image_chain

STORE_MB = 100


def test_join_rows_keeps_the_batch_order_and_the_chain_labels():
    from trainwise.components.training.streaming import join_rows

    batch = pa.table({"id": ["a", "b", "c", "d"], "image": [[1], [2], [3], [4]]})
    rows = pa.table({"id": ["d", "b", "x"], "label": [7, 5, 9]})  # relabelled by the chain, "a"/"c" not kept
    out = join_rows(batch, rows)
    assert out.column_names == ["label", "image"]
    assert out.to_pydict() == {"label": [5, 7], "image": [[2], [4]]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_split_five_times_the_object_store_streams_through_a_two_worker_fit(tmp_path):
    # as the stages write photos: PNG files in data/ingest, data/clean and data/split extensions of it
    split = write_image_chain(tmp_path / "data", n_train=11_000, n_val=600, n_test=200, encoded=True)
    assert read_manifest(split)["extends"]  # the payload lives in data/ingest: the join by id is exercised
    train_bytes = read_table(split, columns=["image"], filter_split="train").nbytes   # decoded pixels
    files = read_table(split, columns=["image"], filter_split="train", decode=False).nbytes
    assert files < train_bytes / 5   # the stream carries the files; the read tasks decode them
    args = {"split": str(split), "loader": "ray_data", "workers": 2, "storage": str(tmp_path / "ray"),
            "name": "stream", "epochs": 1, "object_store_mb": STORE_MB}
    # a process of its own: its own Ray (2 CPUs, a 100 MB store; the suite's fixture has Ray's default
    # store) and its own peak RSS; PYTHONPATH so the workers import tests.stream_data:tiny
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.stream_data", json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=840)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    print({k: v for k, v in r.items() if k != "history"}, f"train split {train_bytes / 1e6:.0f} MB")
    assert r["error"] == "None"
    assert r["store_capacity"] <= 1.05 * STORE_MB * 2**20 and train_bytes >= 5 * r["store_capacity"]
    (epoch,) = r["history"]
    # every train row once (11,000 divides by 2 workers: the equal split drops none), every val row once
    assert (epoch["train/rows"], epoch["val/rows"]) == (11_000, 600)
    assert epoch["val/acc"] > 0.95  # labels from the extension chain reached the right pixels
    # streamed, not materialised: nothing (or next to nothing) left the store for disk; a
    # materialised 540 MB split spills at least 440 MB of it here
    assert r["spilled"] < 0.1 * train_bytes, r


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tune_trials_stream_too_with_every_cpu_held_by_a_trial(ray_session, tmp_path):
    """Two one-CPU trials at once on the 2-CPU Ray (the trial actors hold every CPU) read their
    ray_data streams through zero-CPU tasks: both finish, each row seen once per epoch."""
    from trainwise.components.training.data import input_shape
    from trainwise.components.training.driver import Scaling
    from trainwise.components.training.loop_config import LoopConfig
    from trainwise.components.tuning.sweep import run_sweep, trial_histories
    from tests.params import sweep_options

    split = write_image_chain(tmp_path / "data", n_train=600, n_val=100, n_test=50, side=32)
    base = LoopConfig(data_dir=str(split), n_classes=2, input_shape=input_shape(split), model="tests.stream_data:tiny",
                      batch_size=32, lr=3e-3, dropout=0.0, loader="ray_data")
    options = sweep_options(num_samples=2, max_concurrent_trials=2, max_epochs=2, scheduler="fifo", budget_usd=None, time_budget_s=None)
    out = run_sweep(base, space={"lr": {"type": "choice", "values": [3e-3, 1e-2]}}, options=options,
                    scaling=Scaling(num_workers=1), storage_path=str(tmp_path / "tune"), name="stream")
    histories = trial_histories(out.grid, metric=options.metric, mode=options.mode)
    assert len(histories) == 2
    for history in histories.values():
        assert [(h["epoch"], h["train/rows"], h["val/rows"]) for h in history] == [(1, 600, 100), (2, 600, 100)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_embed_streams_a_folder_larger_than_the_object_store(tmp_path):
    """The embed stage's Ray path reads the photos as a stream (zero-CPU read tasks, a row group at a
    time) while two one-CPU replicas embed them: files of 1.5x the object store pass through it with
    nothing spilled. Before, every file's bytes were ray.put before the first batch: the store held
    the folder and spilled the rest. Every kept row (and no row clean set aside) comes back once."""
    from tests.stream_data import write_noise_photos

    # large files, few rows: the backbone resizes every input to 224 px, so its cost is per row
    n = 600
    clean = write_noise_photos(tmp_path / "data", n=n, side=320, stored_side=32)
    files = read_table(clean, columns=["image"], decode=False).nbytes
    assert files >= 1.4 * STORE_MB * 2**20
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.stream_data",
                           json.dumps({"embed": str(clean), "object_store_mb": STORE_MB})],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    print({k: v for k, v in r.items() if k != "ids"}, f"files {files / 1e6:.0f} MB")
    kept = n - len(range(0, n, 7))
    assert r["ids"] == sorted(f"r{i:07d}" for i in range(n) if i % 7) and r["dims"] == [1280]
    assert r["rows"] == r["nonzero_rows"] == kept and r["missing"] == []
    assert r["store_capacity"] <= 1.05 * STORE_MB * 2**20
    assert r["spilled"] < 0.1 * files, r
    assert r["peak_used"] < 0.8 * files, r
