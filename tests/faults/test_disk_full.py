"""A stage that runs out of disk says so, naming the output and what to do, and leaves its
previous output intact (issue 29).

The real test fills a real filesystem: a 1 MiB tmpfs mounted in a private mount namespace
(``unshare --user --map-root-user --mount``: no root needed where user namespaces are allowed;
skipped where they are not), the stage writing there through the real DatasetWriter and pyarrow,
the kernel answering ENOSPC. The in-process test injects the same OSError at the Parquet writer.
"""

import errno
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainwise.components.data.contract import DatasetWriter, SetAside, read_manifest, read_table
from trainwise.pipelines.stage import run_stage

# One stage-like program: writes `rows` rows of 4 KiB random features to OUT through DatasetWriter,
# as a stage does, under run_stage's error handling.
STAGE = r'''
import sys
import numpy as np, pyarrow as pa
from trainwise.components.data.contract import DatasetWriter, SetAside
from trainwise.pipelines.stage import run_stage
out, rows = sys.argv[1], int(sys.argv[2])
def main():
    rng = np.random.default_rng(rows)
    with DatasetWriter(out, classes=["a", "b"], shard_rows=200) as w:
        for i in range(0, rows, 100):
            x = rng.random((100, 1024), dtype=np.float32)
            w.write(pa.table({"id": [f"{i + j}" for j in range(100)], "label": np.arange(100) % 2,
                              "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 1024)}))
        w.close(rows_in=w.rows, set_aside=SetAside())
run_stage(main, exit_process=False)
'''

SCRIPT = r'''
set -e
mount -t tmpfs -o size=1m tmpfs "$1"
"$2" -c "$STAGE" "$1/clean" 100 || exit 10        # 400 KiB of floats: fits
cp -r "$1/clean" "$3/before"
set +e
"$2" -c "$STAGE" "$1/clean" 2000 2> "$3/stderr"  # 8 MiB: the disk fills
echo $? > "$3/rc"
cp -r "$1" "$3/after"
'''


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespaces_work(), reason="cannot mount a tmpfs here (no user/mount namespaces)")
def test_full_tmpfs_clear_error_previous_output_intact(tmp_path):
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", SCRIPT, "x",
                           str(disk), sys.executable, str(keep)],
                          env={**__import__("os").environ, "STAGE": STAGE}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stderr = (keep / "stderr").read_text()
    assert (keep / "rc").read_text().strip() == "2", stderr          # the stage's user-error exit, not a crash
    assert "Traceback" not in stderr, stderr
    assert "no space left on the device" in stderr and f"{disk}/clean" in stderr, stderr
    assert "previous outputs are unchanged" in stderr and "df --human-readable" in stderr, stderr
    # the previous output, byte for byte; the partial new one gone (nothing but `clean` on the disk)
    after = keep / "after"
    assert sorted(p.name for p in after.iterdir()) == ["clean"]
    for f in (keep / "before").iterdir():
        assert (after / "clean" / f.name).read_bytes() == f.read_bytes(), f.name
    assert read_manifest(after / "clean")["rows"] == 100 and read_table(after / "clean").num_rows == 100


def test_disk_full_at_the_writer_names_the_output(tmp_path, monkeypatch, capsys):
    """The same failure injected at the Parquet writer (where the real one surfaces), in process."""
    out = tmp_path / "data" / "clean"

    def write(rows):
        with DatasetWriter(out, classes=["a", "b"]) as w:
            w.write(pa.table({"id": [str(i) for i in range(rows)], "label": np.arange(rows) % 2,
                              "features": [[float(i)] for i in range(rows)]}))
            w.close(rows_in=rows, set_aside=SetAside())

    write(10)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(SystemExit) as stop:
        run_stage(lambda: write(20), exit_process=False)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"no space left on the device while writing {out}" in err and "previous outputs are unchanged" in err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["clean"]   # the partial temp folder is gone


def test_other_os_errors_still_raise(tmp_path):
    """Only a full disk / quota / size limit becomes the message: other OSErrors keep their traceback."""
    def main():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        run_stage(main, exit_process=False)
