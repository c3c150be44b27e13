"""DVC's cache holds no second copy of the stage outputs (issue 29): with the committed
``cache.type`` the outputs are links to the cache objects, and the things that must keep working
with links do: a forced re-run, a stage killed while writing, ``dvc checkout``.

Links are only safe because no stage writes into an existing output file: each replaces its
output folder (or file) whole, by rename (components/data/contract.py), and DVC deletes a stage's
outputs before running it. These tests run that for real and check that every cache object still
hashes to its name afterwards: a write through a link would change the object and fail it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from benchmarks.dvc_cache import disk_bytes  # a hard-linked file counted once, as `du` does
from tests.project import REPO, copy_project, sh

OUTPUTS = ("ingest", "clean", "embed", "split")  # data/<stage>: the stages `dvc repro split` runs


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cache_object(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _output_files(root: Path) -> list[Path]:
    files = [p for name in OUTPUTS for p in (root / "data" / name).rglob("*") if p.is_file()]
    assert files, "dvc repro wrote no outputs"
    return files


def assert_outputs_are_links(root: Path) -> None:
    """Every non-empty output file is the cache object itself (a hard link: the same inode; or a
    symlink to it): one copy on disk. Empty files are left out: DVC copies them (nothing to save)."""
    copies = []
    for f in _output_files(root):
        if f.stat().st_size == 0:
            continue
        obj = _cache_object(root, _md5(f))
        assert obj.exists(), f"{f}: its content is not in DVC's cache"
        if not os.path.samefile(f, obj):
            copies.append(str(f.relative_to(root)))
    assert not copies, f"outputs that are a second copy of their cache object, not a link to it: {copies}"


def assert_cache_intact(root: Path) -> None:
    """Every object in the cache still hashes to its name (``<md5[:2]>/<md5[2:]>[.dir]``)."""
    objects = [p for p in (root / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]
    assert objects
    bad = [str(p) for p in objects if _md5(p) != p.parent.name + p.name.removesuffix(".dir")]
    assert not bad, f"cache objects whose content no longer matches their name (written through a link): {bad}"


def assert_status_clean(root: Path, env: dict) -> None:
    out = sh(["dvc", "status", "split"], root, env)
    assert "changed" not in out and "deleted" not in out and "modified" not in out, out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One `dvc repro split` of the demo with the project's committed .dvc/config."""
    root = tmp_path_factory.mktemp("cache_links") / "project"
    env = copy_project(root)
    sh(["dvc", "repro", "split"], root, env)
    return root, env


def test_committed_cache_type_links_and_never_copies():
    """Links only: with `copy` in the list DVC takes a copy as good enough, and an output whose
    object was already cached (a forced re-run, two stages writing the same bytes) stays a copy."""
    from dvc.config import Config

    committed = Config(dvc_dir=str(REPO / ".dvc")).load_one("repo")["cache"].get("type", "")  # not config.local
    types = [t.strip() for t in committed.split(",") if t.strip()]
    assert types and set(types) <= {"reflink", "hardlink", "symlink"}, types
    assert types[0] == "hardlink", "DVC commits a new output by hard link only when hardlink is listed first"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_outputs_are_links_into_the_cache(project):
    root, env = project
    assert_outputs_are_links(root)
    assert_cache_intact(root)
    data = disk_bytes(*(root / "data" / n for n in OUTPUTS))
    total = disk_bytes(root / "data", root / ".dvc" / "cache")
    assert total < 1.1 * data, f"data/ + .dvc/cache hold {total} bytes for {data} bytes of outputs: a second copy"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_forced_rerun_keeps_links_and_cache(project):
    root, env = project
    before = {str(f): _md5(f) for f in _output_files(root)}
    sh(["dvc", "repro", "-f", "-s", "split"], root, env)  # DVC deletes the linked output, the stage writes anew
    assert {str(f): _md5(f) for f in _output_files(root)} == before  # the split is deterministic
    assert_outputs_are_links(root)  # the re-written output is linked again, not left as a copy
    assert_cache_intact(root)
    assert_status_clean(root, env)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checkout_restores_deleted_outputs_as_links(project):
    root, env = project
    shard = next((root / "data" / "clean").glob("*.parquet"))
    want = _md5(shard)
    shard.unlink()
    subprocess.run(["rm", "-rf", str(root / "data" / "split")], check=True)
    out = sh(["dvc", "checkout", *OUTPUTS], root, env)  # the stages this project ran (not audit, train, ...)
    assert "data/split" in out and "data/clean" in out, out
    assert _md5(shard) == want
    assert (root / "data" / "split" / "manifest.json").is_file()
    assert_outputs_are_links(root)
    assert_cache_intact(root)
    assert_status_clean(root, env)


def _stage_procs(root: Path, stage: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if f"trainwise.pipelines.{stage}" in " ".join(p.info["cmdline"] or []) and p.info["cwd"] == str(root):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stage_killed_while_writing_then_repro(project, tmp_path):
    """ingest is re-run (a changed param) and SIGKILLed once it has written shards of its new
    output: the cache, whose objects the old output was linked to, is intact, and the next
    `dvc repro` completes with the outputs linked and `dvc status` clean."""
    root, env = project
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # 5 rows a shard: ~360 shards of digits, so the writer is mid-way for long enough to be caught there
    params["ingest"]["shard_rows"] = 5
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    log = open(tmp_path / "repro.log", "w")
    dvc = subprocess.Popen(["dvc", "repro", "split"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not [d for d in (root / "data").glob(".ingest.tmp-*") if len(list(d.glob("*.parquet"))) >= 3]:
            assert dvc.poll() is None, "ingest finished before it could be killed:\n" + (
                tmp_path / "repro.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ingest never started writing"
            time.sleep(0.01)
        victims = _stage_procs(root, "ingest")
        assert victims, "no ingest process to kill"
        for p in victims:
            p.send_signal(signal.SIGKILL)
        assert dvc.wait(timeout=120) != 0  # the stage died: dvc repro fails, records nothing
    finally:
        if dvc.poll() is None:
            dvc.kill()
        log.close()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["ingest"]["params"]["params.yaml"]["ingest"]["shard_rows"] != 5
    assert not (root / "data" / "ingest" / "manifest.json").exists()  # DVC removed the old output; no partial one
    assert_cache_intact(root)

    sh(["dvc", "repro", "split"], root, env)  # runs ingest to the end (and what follows it)
    assert len(list((root / "data" / "ingest").glob("*.parquet"))) > 300
    assert not list((root / "data").glob(".ingest.tmp-*"))  # the killed writer's temp dir was cleaned up
    assert_outputs_are_links(root)
    assert_cache_intact(root)
    assert_status_clean(root, env)
