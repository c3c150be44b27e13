"""An output path cannot delete what is not its own (issue 28 item 1).

Before: `paths.ingest: /some/folder` passed `trainwise check` and ingest deleted the folder's files;
`paths.ingest: data/raw` with `ingest.path: data/raw/pets` deleted the images just read; `paths.split`
set to the project root deleted the project, exit 0.
"""

import json
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml

from trainwise.components.atomic_io import MARKER_TEXT, OUTPUT_MARKER, NotOurFolder, check_replaceable, replace_dir
from trainwise.components.data.contract import DatasetWriter, SetAside
from trainwise.pipelines.config import ConfigError, load_params, parse_params
from tests.conftest import REPO


def _params_file(tmp_path, **sections):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sections))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("sections, says", [
    ({"paths": {"split": "."}}, "paths.split: '.' is the project folder itself"),
    ({"paths": {"model": "models/.."}}, "paths.model: 'models/..' is the project folder itself"),
    ({"paths": {"ingest": "/some/folder"}}, "paths.ingest: '/some/folder' lies outside the project"),
    ({"paths": {"reports": "../site"}}, "paths.reports: '../site' lies outside the project"),
    ({"paths": {"ingest": "data/raw"}, "ingest": {"source": "image_folder", "path": "data/raw/pets"}},
     "paths.ingest (data/raw) overlaps ingest.path (data/raw/pets)"),
    ({"ingest": {"source": "image_folder", "path": "data"}}, "paths.ingest (data/ingest) overlaps ingest.path (data)"),
    ({"paths": {"clean": "data/ingest/clean"}}, "paths.ingest (data/ingest) and paths.clean (data/ingest/clean) overlap"),
    ({"paths": {"tune": "models"}}, "paths.tune (models) and paths.model (models/model) overlap"),
    ({"ingest": {"cache_dir": "data/split"}}, "paths.split (data/split) and ingest.cache_dir (data/split) overlap"),
    ({"train": {"pretrained": "models/model/w.safetensors"}},
     "paths.model (models/model) overlaps train.pretrained (models/model/w.safetensors)"),
])
def test_an_output_path_that_could_delete_others_is_refused_at_load(tmp_path, sections, says):
    with pytest.raises(ConfigError) as err:
        load_params(_params_file(tmp_path, **sections))
    assert says in str(err.value)
    assert "give each output a folder of its own inside the project" in str(err.value)


def test_ordinary_paths_pass(tmp_path):
    assert load_params(REPO / "params.yaml").paths.ingest == "data/ingest"
    ok = {"paths": {"ingest": str(tmp_path / "out" / "ingest"), "split": "data/split/"},
          "ingest": {"source": "image_folder", "path": "s3://bucket/data"}}  # a URL is no local input
    assert load_params(_params_file(tmp_path, **ok)).paths.split == "data/split/"
    # without a project folder (a dict checked on its own) the paths are not placed anywhere
    assert parse_params({"paths": {"split": "."}}).paths.split == "."


def test_trainwise_check_refuses_the_project_root_as_an_output(tmp_path):
    _params_file(tmp_path, paths={"split": "."})
    proc = subprocess.run([sys.executable, "-m", "trainwise.pipelines.cli", "check"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "paths.split: '.' is the project folder itself" in proc.stderr


def _shard(tmp):
    tmp.mkdir()
    (tmp / "part-00000.parquet").write_bytes(b"new")
    return tmp


def test_a_folder_no_stage_wrote_is_not_replaced(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "manifest.json").write_text("{}")
    src = _shard(tmp_path / ".notes.tmp-1")
    with pytest.raises(NotOurFolder) as err:
        replace_dir(src, mine)
    assert str(mine) in str(err.value) and "thesis.tex" in str(err.value) and OUTPUT_MARKER in str(err.value)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert not src.exists()  # the new output is dropped, not left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    # a sub-folder is nothing a stage writes either, even next to a stage's files only
    (mine / "thesis.tex").unlink()
    (mine / "chapters").mkdir()
    with pytest.raises(NotOurFolder, match="chapters/"):
        check_replaceable(mine)
    # nor a file where a folder should be
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotOurFolder, match="is a file"):
        check_replaceable(tmp_path / "a_file")


def test_a_stage_folder_carries_the_marker_and_is_replaced(tmp_path):
    out = tmp_path / "data" / "clean"
    out.parent.mkdir()
    replace_dir(_shard(tmp_path / "a"), out)
    assert (out / OUTPUT_MARKER).read_text() == MARKER_TEXT
    (out / "stale.txt").write_text("from an older run")  # anything, once the marker says the folder is ours
    replace_dir(_shard(tmp_path / "b"), out)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "part-00000.parquet"]


def test_an_output_of_an_older_version_without_the_marker_is_replaced(tmp_path):
    """Outputs written before the marker existed hold only what a stage writes: they are taken as ours."""
    old = tmp_path / "data" / "ingest"
    old.mkdir(parents=True)
    for name in ("manifest.json", "set_aside.jsonl", "part-00000.parquet", "part-00001.parquet"):
        (old / name).write_text("old")
    replace_dir(_shard(tmp_path / "new"), old)
    assert sorted(p.name for p in old.iterdir()) == [OUTPUT_MARKER, "part-00000.parquet"]
    empty = tmp_path / "models" / "model"
    empty.mkdir(parents=True)  # an empty folder loses nothing either
    replace_dir(_shard(tmp_path / "new2"), empty)
    assert (empty / OUTPUT_MARKER).exists()


def test_the_dataset_writer_refuses_before_it_works(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(NotOurFolder, match="cat.jpg"):
        DatasetWriter(mine, classes=["a"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir begun
    out = tmp_path / "data" / "ingest"
    with DatasetWriter(out, classes=["a"]) as w:
        w.write(pa.table({"id": ["x"], "label": [0], "text": ["t"], "source": ["s"]}))
        manifest = w.close(rows_in=1, set_aside=SetAside())
    assert manifest["rows"] == 1 and (out / OUTPUT_MARKER).exists()
    assert json.loads((out / "manifest.json").read_text())["rows"] == 1


def _stage(root, env, *args):
    return subprocess.run([sys.executable, "-m", "trainwise.pipelines.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.timeout(900)
def test_the_ingest_stage_leaves_a_users_folder_alone(tmp_path):
    """`paths.ingest` names a folder of the user's inside the project: no params check can know it is
    not an output, the marker check does: `trainwise check`, `trainwise run` and the stage refuse,
    the files stay. Pointed at its default again, the stage writes its output with the marker."""
    from tests.project import copy_project

    root = tmp_path / "proj"
    env = copy_project(root, params={"paths": {"ingest": "notes"}, "mlflow": {"enabled": False}})
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("mine")
    for args in (("check",), ("run", "ingest"), ("stage", "ingest")):
        proc = _stage(root, env, *args)
        assert proc.returncode == 2, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert f"{root / 'notes'}: not replaced" in proc.stderr or "notes: not replaced" in proc.stderr, proc.stderr
        assert "todo.txt" in proc.stderr
        assert (root / "notes" / "todo.txt").read_text() == "mine"
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["paths"]["ingest"] = "data/ingest"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _stage(root, env, "stage", "ingest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "data" / "ingest" / OUTPUT_MARKER).read_text() == MARKER_TEXT


def test_recovery_removes_only_leftovers_a_stage_wrote(tmp_path):
    """recover_dir clears `.NAME.old-PID` folders of dead writers: only those that are a stage's own."""
    from trainwise.components.atomic_io import recover_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "data"
    out.mkdir()
    ours, theirs = tmp_path / f".data.old-{dead.pid}", tmp_path / f".data.old-{dead.pid}-x"
    for d in (ours, theirs):
        d.mkdir()
    (ours / OUTPUT_MARKER).write_text(MARKER_TEXT)
    (theirs / "diary.txt").write_text("mine")
    recover_dir(out)
    assert not ours.exists()
    assert (theirs / "diary.txt").read_text() == "mine"
