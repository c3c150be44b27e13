"""Security promises: checkpoints are data not code, no unsafe deserialisation or eval in the
source, servers bind 127.0.0.1 unless configured."""

import json
import re
import subprocess

import pytest
import torch

from trainwise.components.data.contract import DataContractError
from trainwise.components.training.export import WEIGHTS, load_model, save_model
from tests.conftest import REPO

SOURCE_DIRS = ("components", "pipelines", "benchmarks", "scripts")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious "checkpoint" does: run code when unpickled
        return (subprocess.call, (["touch", str(self.marker)],))


def _tiny_model(tmp_path):
    from trainwise.components.models import build_model

    spec = {"model": "mlp", "input_shape": [1, 8, 8], "classes": ["a", "b"], "dropout": 0.0}
    model = build_model("mlp", input_shape=(1, 8, 8), n_classes=2, dropout=0.0)
    return save_model(tmp_path / "model", model.state_dict(), spec)


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    model_dir = _tiny_model(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"weights": _Exploit(marker)}, model_dir / WEIGHTS)
    with pytest.raises(DataContractError, match=re.escape(str(model_dir / WEIGHTS))):
        load_model(model_dir)
    assert not marker.exists()  # the payload never ran


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path):
    model_dir = _tiny_model(tmp_path)
    data = (model_dir / WEIGHTS).read_bytes()
    (model_dir / WEIGHTS).write_bytes(data[: len(data) // 2])  # truncated by a full disk
    with pytest.raises(DataContractError, match="re-run the train stage"):
        load_model(model_dir)


def test_checkpoint_of_another_model_shape(tmp_path):
    model_dir = _tiny_model(tmp_path)
    spec = json.loads((model_dir / "model.json").read_text())
    spec["classes"] = ["a", "b", "c"]  # the spec now says 3 classes; the weights have 2
    (model_dir / "model.json").write_text(json.dumps(spec))
    with pytest.raises(DataContractError, match="different runs"):
        load_model(model_dir)


def _source_files():
    for d in SOURCE_DIRS:
        yield from (REPO / d).rglob("*.py")
        yield from (REPO / d).rglob("*.sh")


def test_no_unsafe_deserialisation_or_eval_in_the_source():
    bad = {
        r"\bpickle\.loads?\(": "pickle.load on data",
        r"(?<![\w.])eval\(": "eval",
        r"(?<![\w.])exec\(": "exec",
        r"\byaml\.load\(": "yaml.load (use safe_load)",
        r"\bshell=True": "shell=True",
        r"\bextractall\(": "extractall (extract member by member, checking paths)",
        r"\bcloudpickle\.loads?\(": "cloudpickle.load",
    }
    found = []
    for path in _source_files():
        text = path.read_text()
        for pattern, what in bad.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert not found, "\n".join(found)


def test_every_torch_load_is_weights_only():
    calls = []
    for path in _source_files():
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            call = text[m.start():i]
            if "weights_only=True" not in call:
                calls.append(f"{path.relative_to(REPO)}: {call}")
    assert not calls, "\n".join(calls)


def test_servers_we_start_bind_localhost():
    """Every server command in code, scripts, tests, README and docs/ binds 127.0.0.1 (infra/ documents
    cluster set-ups, where binding other interfaces is the point, behind explicit settings)."""
    files = [*_source_files(), *(REPO / "tests").rglob("*.py"), REPO / "README.md", *(REPO / "docs").glob("*.md")]
    offenders = []
    for path in files:
        text = path.read_text()
        for m in re.finditer(r"0\.0\.0\.0|--host[= ]+(?!127\.0\.0\.1)\S+|-h [^1\s-]\S*", text):
            if path.name == "test_security.py":
                continue
            offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not offenders, "\n".join(offenders)


# -- untrusted images sent to predict / serving (issue 28.6) --------------------------------------

def _image_bytes(fmt: str, side: int = 8) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_predict_checks_image_size_before_decoding(tmp_path):
    from trainwise.components.serving.predictor import Predictor

    model_dir = _tiny_model(tmp_path)
    big = _image_bytes("PNG", side=64)    # 4,096 pixels
    ok, refused = Predictor.from_dir(model_dir, max_image_pixels=5000).predict([big]), \
        Predictor.from_dir(model_dir, max_image_pixels=4000).predict([big])
    assert ok[0]["error"] is None
    assert refused[0]["predicted_class"] is None
    assert "image too large: 64x64 pixels, over the limit of 4000" in refused[0]["error"]


def test_predict_refuses_formats_ingest_refuses(tmp_path):
    from trainwise.components.serving.predictor import Predictor

    rows = Predictor.from_dir(_tiny_model(tmp_path)).predict([_image_bytes("TIFF"), _image_bytes("PNG")])
    assert "not a format ingest accepts" in rows[0]["error"]     # Pillow alone decodes TIFF (and EPS, PSD...)
    assert rows[1]["error"] is None


# -- FIFOs and devices: ingest and predict read regular files only (issue 28.6) --------------------

def _fifo_tree(tmp_path):
    """Two class folders with one real image each, a FIFO in one and a link to a FIFO inside the source."""
    import os

    root = tmp_path / "src"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "ok.png").write_bytes(_image_bytes("PNG"))
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink(root / "a" / "pipe.png", root / "b" / "link-to-pipe.png")
    return root


def _within(seconds, fn, *, fifos):
    """fn() in a thread; fails instead of hanging the test run when fn blocks on one of ``fifos``
    (a FIFO with no writer: opening it for writing lets the reader see EOF)."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        import os

        for fifo in fifos:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"blocked for {seconds} s reading a FIFO")
    finally:
        pool.shutdown(wait=False)


def test_ingest_sets_fifos_aside_without_reading_them(tmp_path):
    from trainwise.components.data.sources import ingest, open_source

    root = _fifo_tree(tmp_path)
    source = open_source("image_folder", path=str(root), max_image_pixels=10**8, max_file_bytes=1 << 20)
    manifest = _within(20, lambda: ingest(source, tmp_path / "out", shard_rows=100, shard_bytes=1 << 20,
                                          progress=False), fifos=[root / "a" / "pipe.png"])
    assert manifest["rows"] == 2
    assert manifest["set_aside"] == {"not_a_regular_file": 2}   # the FIFO and the link to it


def test_predict_gives_fifos_and_devices_an_error_row(tmp_path):
    from trainwise.components.serving.batch import iter_items, predict_items
    from trainwise.components.serving.predictor import Predictor

    root = _fifo_tree(tmp_path)
    predictor = Predictor.from_dir(_tiny_model(tmp_path))
    rows = _within(20, lambda: list(predict_items(predictor, iter_items([str(root), "/dev/zero"]))),
                   fifos=[root / "a" / "pipe.png"])
    by_source = {r["source"]: r for r in rows}
    assert len(rows) == 5
    for bad in (root / "a" / "pipe.png", root / "b" / "link-to-pipe.png", "/dev/zero"):
        assert "not a regular file" in by_source[str(bad)]["error"]
    assert by_source[str(root / "a" / "ok.png")]["error"] is None


@pytest.mark.parametrize("name,source", [("table.csv", "table"), ("pets.tar.gz", "image_folder")])
def test_ingest_path_that_is_a_fifo_is_refused_unread(tmp_path, name, source):
    import os

    from trainwise.components.data.sources import SourceError, open_source

    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=f"ingest.path: {fifo} is not a regular file"):
        _within(20, lambda: open_source(source, path=str(fifo), label_column="label", max_image_pixels=10**8,
                                        max_file_bytes=1 << 20), fifos=[fifo])


# -- CSV outputs opened in a spreadsheet (issue 28.9) -----------------------------------------------

def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path):
    import csv as csv_module

    from trainwise.components.atomic_io import write_csv_atomic

    rows = [{"class": "=HYPERLINK(\"http://x\")", "n": -3}, {"class": "+cmd", "n": -0.5},
            {"class": "-2+3", "n": 1}, {"class": "@SUM(A1)", "n": 2}, {"class": "\tx", "n": 3},
            {"class": "\rx", "n": 4}, {"class": "-1", "n": 5}, {"class": "cats", "n": 6}]
    write_csv_atomic(tmp_path / "per_class.csv", rows, ["class", "n"])
    back = list(csv_module.DictReader(open(tmp_path / "per_class.csv", newline="")))
    assert [r["class"] for r in back] == ["'=HYPERLINK(\"http://x\")", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx",
                                          "'\rx", "-1", "cats"]   # a class named "-1" is a number: kept
    assert [r["n"] for r in back][:2] == ["-3", "-0.5"]            # negative numbers stay numbers


def test_predict_table_neutralises_class_names(tmp_path, monkeypatch, capsys):
    import csv as csv_module
    import io

    from trainwise.pipelines import cli

    model_dir = _tiny_model(tmp_path)
    spec = json.loads((model_dir / "model.json").read_text())
    spec["classes"] = ["=cmd|'/C calc'!A0", "@evil"]
    (model_dir / "model.json").write_text(json.dumps(spec))
    image = tmp_path / "x.png"
    image.write_bytes(_image_bytes("PNG"))
    monkeypatch.chdir(REPO)
    assert cli.main(["predict", str(image), "--model-dir", str(model_dir), "--out", str(tmp_path / "o.csv")]) == 0
    assert cli.main(["predict", str(image), "--model-dir", str(model_dir)]) == 0
    for text in (open(tmp_path / "o.csv", newline="").read(), capsys.readouterr().out):
        cls = next(csv_module.DictReader(io.StringIO(text)))["predicted_class"]
        assert cls in ("'=cmd|'/C calc'!A0", "'@evil")
