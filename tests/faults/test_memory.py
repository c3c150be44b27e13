"""Promise 6: ingest and clean stream. On an image folder several times larger than a memory cap,
each stage runs in its own process under that cap (RLIMIT_AS, the `ulimit -v` of the test) and
finishes; with 10x the data its peak RSS grows by a small fraction of the data, not with it."""

import resource
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from components.data.contract import read_manifest
from tests.project import copy_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLASSES, PER_CLASS, SIDE = 4, 450, 320          # 1800 noise PNGs of 320x320 RGB: ~300 KB each (550 MB)
CAP_BYTES = 3 * 1024**3                         # address space the stage may map (Python + libs ~1.5 GB)


def _noise_folder(root, per_class):
    rng = np.random.default_rng(0)
    total = 0
    for c in range(CLASSES):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)  # incompressible
            p = d / f"{i}.png"
            Image.fromarray(img).save(p, compress_level=0)
            total += p.stat().st_size
    return total


def _run_capped(stage, root, env) -> tuple[subprocess.CompletedProcess, int]:
    """Run the stage under the cap; returns it and the peak RSS of its process tree (sampled)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))

    proc = subprocess.Popen([sys.executable, "-m", f"pipelines.{stage}"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=cap)
    peak, ps = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out = proc.stdout.read()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), peak


def _ingest_and_clean(tmp_path, name, per_class):
    root = tmp_path / name
    raw = tmp_path / f"{name}-raw"
    env = copy_project(root, params={
        "ingest": {"source": "image_folder", "path": str(raw), "shard_mb": 32, "cache_dir": None},
        "clean": {"image_size": [32, 32], "channels": 3, "near_duplicate_distance": 0.0,
                  "label_issues": {"enabled": False}},
    })
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dataset = _noise_folder(raw, per_class)
    peaks = {}
    for stage in ("ingest", "clean"):
        proc, peaks[stage] = _run_capped(stage, root, env)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert read_manifest(root / f"data/{stage}")["rows"] == CLASSES * per_class
    return dataset, peaks


def test_ingest_and_clean_stream_under_a_memory_cap(tmp_path):
    small, small_peaks = _ingest_and_clean(tmp_path, "small", PER_CLASS // 3)
    big, big_peaks = _ingest_and_clean(tmp_path, "big", PER_CLASS)
    assert big > 500 * 1024**2
    for stage in ("ingest", "clean"):
        # 3x the data: the peak grows by a small fraction of the data, not with it
        grew = big_peaks[stage] - small_peaks[stage]
        print(f"{stage}: dataset {small / 2**20:.0f} -> {big / 2**20:.0f} MiB; "
              f"peak RSS {small_peaks[stage] / 2**20:.0f} -> {big_peaks[stage] / 2**20:.0f} MiB")
        assert grew < 0.25 * big, (stage, small_peaks, big_peaks, big)
