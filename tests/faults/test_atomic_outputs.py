"""Promise 3: a stage killed while writing its output leaves the previous output intact, and
the next run cleans up what the killed one left behind."""

import os
import signal
import subprocess
import sys
import time

from trainwise.components.atomic_io import recover_dir
from trainwise.components.data.contract import read_manifest, read_table

WRITER = r'''
import sys, time
import numpy as np, pyarrow as pa
from trainwise.components.data.contract import DatasetWriter, SetAside
out, rows, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with DatasetWriter(out, classes=["a", "b"], shard_rows=100) as w:
    for i in range(0, rows, 100):
        w.write(pa.table({"id": [f"{i}-{j}" for j in range(100)], "label": np.arange(100) % 2,
                          "features": [[float(j)] for j in range(100)]}))
        print("shard", i, flush=True)
        time.sleep(delay)
    w.close(rows_in=w.rows, set_aside=SetAside())
print("closed", flush=True)
'''


def _write(out, rows, delay=0.0):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(rows), str(delay)],
                            stdout=subprocess.PIPE, text=True)


def test_killed_writer_leaves_previous_output(tmp_path):
    out = tmp_path / "data" / "clean"
    first = _write(out, 300)
    assert first.wait() == 0
    before = read_manifest(out)
    assert before["rows"] == 300

    # 0.5 s per shard: after the 5th shard it has ~20 s of writing left, so however slowly this
    # process gets to the kill on a busy machine, the writer is still mid-way.
    victim = _write(out, 5000, delay=0.5)
    for _ in range(5):  # let it write a few shards of the new version
        assert victim.stdout.readline().startswith("shard")
    assert victim.poll() is None, "the writer finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert read_manifest(out) == before and read_table(out).num_rows == 300
    litter = [p.name for p in out.parent.iterdir() if p.name.startswith(".clean.tmp-")]
    assert litter, "the killed writer's temp dir should be there for the next run to clean"

    assert _write(out, 200).wait() == 0  # the next run: replaces, and removes the dead writer's temp dir
    assert read_manifest(out)["rows"] == 200
    assert [p.name for p in out.parent.iterdir()] == ["clean"]


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    os.replace(out, tmp_path / f".split.old-{pid}")  # the state replace_dir leaves if killed mid-way
    time.sleep(0.1)
    recover_dir(out)
    assert (out / "manifest.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_live_writers_temp_dirs_are_left_alone(tmp_path):
    out = tmp_path / "ingest"
    mine = tmp_path / f".ingest.tmp-{os.getpid()}-abc"
    mine.mkdir()
    recover_dir(out)
    assert mine.exists()
