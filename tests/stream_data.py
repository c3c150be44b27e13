"""A large image split for the streaming loader (``train.loader: ray_data``): data/clean with the
decoded pixels, data/split as an extension of it (id, label, split only); or, ``encoded``, as the
stages write photos now: data/ingest with the PNG files' bytes, data/clean and data/split extensions;
and a model small enough that reading, not computing, is what a fit of it costs. Used by
tests/stages/test_stream_loader.py and benchmarks/stream_loader.py.

The images compress well (flat colours), so gigabytes of decoded pixels are a few MB of Parquet on
disk and quick to write; in memory, in Ray's object store and on the training worker they are full
size (Arrow fixed-size lists of uint8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from torch import nn

from trainwise.components.data.contract import ENCODED, DatasetWriter, SetAside

CLASSES = ["top", "bottom"]


def _images(start: int, n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n, side*side*3) uint8, labels): class 0 bright in the top half, class 1 in the
    bottom half, each row a shade of its own (so rows differ, but runs of equal bytes stay long)."""
    idx = np.arange(start, start + n)
    labels = idx % 2
    pix = np.zeros((n, side, side, 3), np.uint8)
    shade = (80 + idx % 150).astype(np.uint8)[:, None, None]
    half = side // 2
    top, bottom = labels == 0, labels == 1
    pix[top, :half, :, 0] = shade[top]
    pix[bottom, half:, :, 1] = shade[bottom]
    return pix.reshape(n, -1), labels


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_image_chain(root: str | Path, *, n_train: int, n_val: int, n_test: int = 0, side: int = 128,
                      batch: int = 500, encoded: bool = False) -> Path:
    """``root/clean`` (whole rows, payload) and ``root/split`` (an extension: id, label, split);
    returns the split folder. Splits are interleaved (every row's split from its index), so each
    shard holds rows of every split, as the split stage's hash assignment gives. ``encoded``: the
    payload is PNG files in ``root/ingest``, and ``root/clean`` extends it (the clean stage's layout)."""
    root = Path(root)
    n = n_train + n_val + n_test
    order = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    order = order[np.random.default_rng(0).permutation(n)]
    width = side * side * 3
    meta = {"image_shape": [side, side, 3]}
    if encoded:
        with DatasetWriter(root / "ingest", classes=CLASSES) as w:
            for k in range(0, n, batch):
                m = min(batch, n - k)
                pix, labels = _images(k, m, side)
                w.write(pa.table({"id": [f"r{i:07d}" for i in range(k, k + m)],
                                  "label": pa.array(labels, pa.int64()),
                                  "image": pa.array([_png(p.reshape(side, side, 3)) for p in pix], pa.binary()),
                                  "source": [f"img/{i}.png" for i in range(k, k + m)]}))
            w.close(rows_in=n, set_aside=SetAside())
        meta = {**meta, "payload_encoding": ENCODED}
        with DatasetWriter(root / "clean", classes=CLASSES, metadata=meta, base=root / "ingest") as w:
            for k in range(0, n, batch):
                m = min(batch, n - k)
                w.write(pa.table({"id": [f"r{i:07d}" for i in range(k, k + m)],
                                  "label": pa.array(np.arange(k, k + m) % 2, pa.int64()),
                                  "group": [f"r{i:07d}" for i in range(k, k + m)]}))
            w.close(rows_in=n, set_aside=SetAside())
    else:
        with DatasetWriter(root / "clean", classes=CLASSES, metadata=meta) as w:
            for k in range(0, n, batch):
                m = min(batch, n - k)
                pix, labels = _images(k, m, side)
                w.write(pa.table({"id": [f"r{i:07d}" for i in range(k, k + m)],
                                  "label": pa.array(labels, pa.int64()),
                                  "image": pa.FixedSizeListArray.from_arrays(pa.array(pix.reshape(-1)), width),
                                  "source": [f"img/{i}.png" for i in range(k, k + m)]}))
            w.close(rows_in=n, set_aside=SetAside())
    with DatasetWriter(root / "split", classes=CLASSES, metadata=meta, base=root / "clean") as w:
        for k in range(0, n, batch):
            m = min(batch, n - k)
            w.write(pa.table({"id": [f"r{i:07d}" for i in range(k, k + m)],
                              "label": pa.array(np.arange(k, k + m) % 2, pa.int64()),
                              "split": pa.array(order[k:k + m].tolist())}))
        w.close(rows_in=n, set_aside=SetAside())
    return root / "split"


def tiny(*, n_classes: int, input_shape: tuple, params: dict) -> nn.Module:
    """``train.model: tests.stream_data:tiny``: 4x4 average pooling and a linear layer (the
    classes differ in where the image is bright)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(input_shape[0] * 16, n_classes))


_STATE = []


def _store_stats() -> dict:
    """Object-store bytes in use, in the filesystem fallback and spilled so far (all nodes), from
    the raylet (what `ray memory --stats-only` prints; Ray's internal API: no public one has it)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    if not _STATE:  # this process's Ray by its address: other Rays on the machine make None ambiguous
        _STATE.append(get_state_from_address(ray.get_runtime_context().gcs_address))
    s = get_memory_info_reply(_STATE[0]).store_stats
    return {"used": s.object_store_bytes_used, "fallback": s.object_store_bytes_fallback,
            "spilled": s.spilled_bytes_total, "capacity": s.object_store_bytes_avail}


def measured_fit(split: str, *, loader: str, workers: int, storage: str, name: str, epochs: int = 1,
                 object_store_mb: int = 100, batch_size: int = 64, materialise: bool = False) -> dict:
    """Start Ray (2 CPUs, an object store of ``object_store_mb``), fit ``tiny`` on ``split``
    with ``loader``, sampling the object store and every Ray process's RSS every 0.2 s. Run it in a
    process of its own (``python -m tests.stream_data``): it owns that Ray and the peak RSS.
    ``materialise``: the ray_data loader as it was before it streamed (the datasets materialised
    in the object store before the workers start), for benchmarks/stream_loader.py."""
    import resource
    import threading
    import time

    import psutil

    from trainwise.components.ray_start import init_ray
    from trainwise.components.training.data import input_shape
    from trainwise.components.training.driver import Scaling, fit, run_history
    from trainwise.components.training.loop_config import LoopConfig

    init_ray(num_cpus=2, object_store_memory=object_store_mb * 2**20, train_poll_s=0.25)
    rss_after_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if materialise:
        from trainwise.components.training import streaming

        lazy = streaming.stream_datasets
        streaming.stream_datasets = lambda d, k: {s: ds.materialize() for s, ds in lazy(d, k).items()}
    peak = {"store_used": 0, "store_fallback": 0, "ray_process_rss": 0, "driver_rss": 0, "driver_rss_at_s": 0.0}
    stop = threading.Event()
    me = psutil.Process()

    def sample():
        while not stop.wait(0.2):
            try:
                s = _store_stats()
                peak["store_used"] = max(peak["store_used"], s["used"])
                peak["store_fallback"] = max(peak["store_fallback"], s["fallback"])
                peak["store_capacity"] = s["capacity"]
                rss = me.memory_info().rss
                if rss > peak["driver_rss"]:
                    peak["driver_rss"], peak["driver_rss_at_s"] = rss, round(time.perf_counter() - t0, 1)
                for p in me.children(recursive=True):
                    with_rss = p.memory_info().rss
                    peak["ray_process_rss"] = max(peak["ray_process_rss"], with_rss)
            except (psutil.Error, Exception):  # a process gone between listing and reading; a busy raylet
                continue

    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    loop = LoopConfig(data_dir=split, n_classes=2, input_shape=input_shape(split), model="tests.stream_data:tiny",
                      epochs=epochs, batch_size=batch_size, lr=3e-3, dropout=0.0, patience=None, loader=loader)
    t0 = time.perf_counter()
    result = fit(loop, scaling=Scaling(num_workers=workers), storage_path=storage, name=name, checkpoints_to_keep=1)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    end = _store_stats()
    return {"loader": loader + (" materialised" if materialise else ""), "workers": workers, "wall_s": round(wall, 1), "error": repr(result.error),
            "history": run_history(result) if result.error is None else [],
            "driver_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "driver_peak_rss_before_fit": rss_after_init,
            "driver_sampled_peak_rss": peak["driver_rss"], "driver_sampled_peak_at_s": peak["driver_rss_at_s"],
            "store_peak_used": peak["store_used"], "store_peak_fallback": peak["store_fallback"],
            "store_capacity": end["capacity"], "spilled": end["spilled"],
            "ray_process_peak_rss": peak["ray_process_rss"]}


def write_noise_photos(root: str | Path, *, n: int, side: int, stored_side: int, batch: int = 250) -> Path:
    """data/ingest of ``n`` PNG files of noise, ``side`` pixels square (incompressible: ~3 bytes a
    pixel on disk, in the object store and in the stream) and data/clean an extension keeping every
    row but every 7th (as clean sets rows aside), stored at ``stored_side`` (what readers decode to:
    small, so a model over them is cheap while the files are large); returns the clean folder. For
    the embed stage's stream."""
    root = Path(root)
    rng = np.random.default_rng(0)
    ids = [f"r{i:07d}" for i in range(n)]
    with DatasetWriter(root / "ingest", classes=CLASSES) as w:
        for k in range(0, n, batch):
            m = min(batch, n - k)
            w.write(pa.table({"id": ids[k:k + m], "label": pa.array(np.arange(k, k + m) % 2, pa.int64()),
                              "image": pa.array([_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
                                                 for _ in range(m)], pa.binary()),
                              "source": [f"img/{i}.png" for i in range(k, k + m)]}))
        w.close(rows_in=n, set_aside=SetAside())
    kept = [i for i in range(n) if i % 7]
    with DatasetWriter(root / "clean", classes=CLASSES, base=root / "ingest",
                       metadata={"image_shape": [stored_side, stored_side, 3], "payload_encoding": ENCODED}) as w:
        for k in range(0, len(kept), batch):
            rows = kept[k:k + batch]
            w.write(pa.table({"id": [ids[i] for i in rows], "label": pa.array([i % 2 for i in rows], pa.int64()),
                              "group": [ids[i] for i in rows]}))
        aside = SetAside()
        for i in range(0, n, 7):
            aside.add(ids[i], f"img/{i}.png", "duplicate")
        w.close(rows_in=n, set_aside=aside)
    return root / "clean"


def measured_embed(clean: str, *, object_store_mb: int = 100, batch_size: int = 32) -> dict:
    """Start Ray (2 CPUs, an object store of ``object_store_mb``), run the embed stage's Ray path
    (``embed_images``: EfficientNet-Lite0 on two one-CPU replicas) over ``clean``, sampling the
    object store every 0.2 s. In a process of its own, as :func:`measured_fit`."""
    import threading
    import time

    from trainwise.components.data.contract import read_manifest, read_table
    from trainwise.components.embedding.batch import embed_images
    from trainwise.components.ray_start import init_ray

    init_ray(num_cpus=2, object_store_memory=object_store_mb * 2**20)
    peak = {"used": 0}
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak["used"] = max(peak["used"], _store_stats()["used"])

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    ids = read_table(clean, columns=["id"]).column("id").to_pylist()
    out = embed_images(clean, image_shape=tuple(read_manifest(clean)["image_shape"]), name="efficientnet_lite0",
                       pretrained=True, seed=0, root=".", batch_size=batch_size, replicas=2, cpus_per_replica=1,
                       use_gpu=False, ids=ids)
    done.set()
    end = _store_stats()
    return {"rows": out.count, "ids": sorted(ids), "missing": out.missing(), "dims": list(out.matrix.shape[1:]),
            "nonzero_rows": int((np.abs(out.matrix).sum(axis=1) > 0).sum()),
            "wall_s": round(time.perf_counter() - t0, 1), "store_capacity": end["capacity"],
            "peak_used": peak["used"], "spilled": end["spilled"]}


if __name__ == "__main__":  # python -m tests.stream_data '{"split": ..., "loader": ..., ...}' (or '{"embed": clean}')
    import json
    import sys

    args = json.loads(sys.argv[1])
    if "embed" in args:
        print("RESULT " + json.dumps(measured_embed(args.pop("embed"), **args)), flush=True)
    else:
        print("RESULT " + json.dumps(measured_fit(args.pop("split"), **args)), flush=True)
