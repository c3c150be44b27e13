"""Clean on wide rows (224x224 RGB, a backbone's input): peak memory follows a batch, not the dataset.

Before the fix, clean on 2,000 real photos at 224 px peaked at 6.9 GB RSS for 300 MB of pixels:
every row of an input batch was decoded before staging, and Parquet writes and reads a
list<uint8> column with two 16-bit levels per pixel (~11x the pixels to write, ~17x to read),
the whole staging file was read back in 4096-row batches, the writer held a 50,000-row shard,
and one `iter_batches` over many row groups kept every row group it had passed.

Tiny encoded PNGs (a few hundred bytes) that decode to 147 KB each make a dataset of wide rows
cheaply; clean_dataset runs in a fresh process per size with a real DatasetWriter, and the peak
RSS it adds must not grow with 3x the rows. Measured (300 -> 900 rows, +86 MiB of pixels): the old
code's added peak went 1019 -> 3143 MiB, this code's 375 -> 401 MiB.
"""

import subprocess
import sys

from tests.project import REPO

SIDE = 224
SMALL, BIG = 300, 900              # ~2.5 and ~8 batches of BATCH_BYTES (16 MiB) at 224x224x3

# Runs clean_dataset on `rows` noise PNGs in ONE input batch (as a big ingest row group arrives),
# prints the peak RSS (the kernel's high-water mark) it added, in bytes.
PROBE = """
import io, sys, tempfile
from pathlib import Path
import numpy as np, pyarrow as pa
from PIL import Image
from trainwise.components.data.contract import DatasetWriter
from trainwise.components.quality.cleaning import clean_dataset
from tests.demo_data import clean_options

rows, side = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
def png():
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
batch = pa.record_batch({"id": [f"{k:06d}" for k in range(rows)], "label": np.arange(rows) % 2,
                         "image": pa.array([png() for _ in range(rows)], pa.binary()),
                         "source": [f"{k}.png" for k in range(rows)]})
import sklearn.neighbors  # the near-duplicate search's import, before the baseline is taken
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
before = hwm()
with tempfile.TemporaryDirectory() as d, DatasetWriter(Path(d) / "clean", classes=["a", "b"]) as w:
    stats = clean_dataset([batch], w, n_classes=2, modality="image",
                          options=clean_options(image_size=(side, side), channels=3, near_duplicate_distance=0.05))
    manifest = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
assert manifest["rows"] == rows and manifest["image_shape"] == [side, side, 3], manifest
print(hwm() - before)
"""


def _added_peak(rows: int) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(rows), str(SIDE)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[-1])


def test_clean_peak_memory_is_bounded_by_a_batch_on_224px_images():
    small, big = _added_peak(SMALL), _added_peak(BIG)
    extra_pixels = (BIG - SMALL) * SIDE * SIDE * 3
    print(f"clean at {SIDE}px: peak added {small / 2**20:.0f} MiB ({SMALL} rows) -> {big / 2**20:.0f} MiB ({BIG} rows); "
          f"{extra_pixels / 2**20:.0f} MiB more pixels")
    # 3x the rows: the peak grows by less than one copy of the extra pixels (the old code: ~25 copies)
    assert big - small < extra_pixels, (small, big, extra_pixels)
    # and one batch's work stays under what the old code added for the small set alone (1019 MiB)
    assert big < 800 * 2**20, big
