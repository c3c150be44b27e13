"""`trainwise predict`: folders, CSV lists, bad files as error rows, and which model it uses."""

from __future__ import annotations

import csv
import io

import pytest

from trainwise.components.data.contract import content_id
from trainwise.pipelines import cli
from trainwise.pipelines.config import load_params
from tests.conftest import REPO, experiment_in
from tests.serving_helpers import digit_pngs, train_tiny_digits_model


@pytest.fixture(scope="module")
def tiny_model(digits_split, tmp_path_factory):
    return train_tiny_digits_model(digits_split, tmp_path_factory.mktemp("tiny") / "model")[0]


@pytest.fixture()
def inputs(digits_split, tmp_path):
    """A folder with 3 digits (one in a sub-folder), a zero-byte file, a text file and a hidden
    file; plus a CSV list of paths naming a digit, a missing file and the text file."""
    folder = tmp_path / "incoming"
    (folder / "more").mkdir(parents=True)
    truth = {}
    for i, (png, label) in enumerate(digit_pngs(digits_split, 3)):
        f = folder / ("more" if i == 2 else "") / f"digit{i}.png"
        f.write_bytes(png)
        truth[str(f)] = label
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".DS_Store").write_bytes(b"\0junk")
    listing = tmp_path / "list.csv"
    listing.write_text("path\nincoming/digit0.png\nincoming/missing.png\nincoming/notes.txt\n")
    return folder, listing, truth


def _run(args, capsys, monkeypatch) -> tuple[int, list[dict], str]:
    monkeypatch.chdir(REPO)
    rc = cli.main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, list(csv.DictReader(io.StringIO(out))), err


def test_predict_folder_and_csv_gives_predictions_and_per_file_errors(inputs, tiny_model, capsys, monkeypatch):
    folder, listing, truth = inputs
    rc, rows, err = _run([folder, listing, "--model-dir", tiny_model], capsys, monkeypatch)
    assert rc == 0
    assert list(rows[0]) == ["id", "source", "predicted_class", "class_index", "probability", "error"]
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    # folder: 5 visible files (hidden one skipped); CSV: 3 rows, relative to the CSV's folder
    assert len(rows) == 8 and not any(".DS_Store" in s for s in by_source)
    for source, label in truth.items():
        r = by_source[source][0]
        assert r["predicted_class"] == label and not r["error"] and 0.5 < float(r["probability"]) <= 1
        assert r["id"] == content_id(open(source, "rb").read(), source)  # the id ingest would give it
    assert len(by_source[str(folder / "digit0.png")]) == 2  # listed in the folder and the CSV
    assert "empty" in by_source[str(folder / "empty.png")][0]["error"]
    assert all("not a readable image" in r["error"] for r in by_source[str(folder / "notes.txt")])
    assert by_source[str(folder / "missing.png")][0]["error"] == "not found"
    assert all(r["predicted_class"] == "" for r in rows if r["error"])
    assert "4 of 8 input(s) predicted" in err and "4 could not be" in err


def test_predict_writes_out_file_and_fails_only_when_nothing_is_predicted(inputs, tiny_model, tmp_path,
                                                                          capsys, monkeypatch):
    folder, _, _ = inputs
    out = tmp_path / "pred.csv"
    rc, _, err = _run([folder / "digit0.png", "--model-dir", tiny_model, "--out", out], capsys, monkeypatch)
    assert rc == 0 and f"table in {out}" in err
    assert [r["error"] for r in csv.DictReader(out.open())] == [""]
    rc, rows, err = _run([folder / "empty.png", folder / "notes.txt", "--model-dir", tiny_model],
                         capsys, monkeypatch)
    assert rc == 1 and len(rows) == 2 and all(r["error"] for r in rows)
    assert "0 of 2 input(s) predicted" in err


def test_predict_with_nothing_registered_says_what_to_do(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    import mlflow

    old = mlflow.get_tracking_uri()
    try:
        rc, rows, err = _run([inputs[0]], capsys, monkeypatch)
    finally:
        mlflow.set_tracking_uri(old)
    name = load_params(REPO / "params.yaml").mlflow.registered_model
    assert rc == 2 and not rows
    assert f"no registered model {name!r}" in err and "--model-dir" in err
    rc, _, err = _run([inputs[0], "--model-dir", tmp_path / "nowhere"], capsys, monkeypatch)
    assert rc == 2 and "no model.json" in err


def test_predict_uses_the_registered_model_by_default_or_a_given_run(inputs, tiny_model, tmp_path,
                                                                      capsys, monkeypatch):
    import json

    import mlflow
    import torch

    from trainwise.components.serving.pyfunc import log_classifier

    name = load_params(REPO / "params.yaml").mlflow.registered_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment_in(tmp_path, "predict-test")) as run:
            log_classifier(torch.load(tiny_model / "model.pt", weights_only=True),
                           json.loads((tiny_model / "model.json").read_text()), registered_model_name=name)
        folder, _, truth = inputs
        rc, rows, err = _run([folder], capsys, monkeypatch)
        assert rc == 0 and f"with models:/{name}/1" in err
        assert {r["source"]: r["predicted_class"] for r in rows if not r["error"]} == truth
        rc, rows, err = _run([folder, "--run", run.info.run_id], capsys, monkeypatch)
        assert rc == 0 and f"runs:/{run.info.run_id}/model" in err and len(rows) == 5
    finally:
        mlflow.set_tracking_uri(old)


def test_predict_text_files_and_a_csv_of_feature_columns(tmp_path, capsys, monkeypatch):
    """Text models read .txt files (and a CSV's `text` column); tabular models read a CSV whose
    columns are the features the model was trained on, in any order; bad rows get an error each."""
    from tests.demo_data import write_synthetic_split
    from trainwise.components.training.data import read_split
    from tests.serving_helpers import train_tiny_model

    models, truth = {}, {}
    for kind in ("text", "features"):
        split = write_synthetic_split(tmp_path / kind, kind, n_per_class=60)
        models[kind], spec = train_tiny_model(split, tmp_path / kind / "model", epochs=25)
        table = read_split(str(split), "test")
        labels = [spec["classes"][k] for k in table.column("label").to_pylist()[:6]]
        truth[kind] = (table.column(kind).to_pylist()[:6], labels, spec.get("feature_names"))

    texts, labels, _ = truth["text"]
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, t in enumerate(texts):
        (folder / f"doc{i}.txt").write_text(t)
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    rc, rows, err = _run([folder, "--model-dir", models["text"]], capsys, monkeypatch)
    assert rc == 0 and len(rows) == 7
    predicted = {r["source"]: r for r in rows}
    hits = sum(predicted[str(folder / f"doc{i}.txt")]["predicted_class"] == label for i, label in enumerate(labels))
    assert hits >= 5, rows
    assert "not UTF-8" in predicted[str(folder / "latin1.txt")]["error"]
    assert "6 of 7 input(s) predicted" in err

    vectors, labels, names = truth["features"]
    listing = tmp_path / "rows.csv"
    with listing.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row_id", *reversed(names)])  # extra column, features in another order
        for i, v in enumerate(vectors):
            w.writerow([i, *reversed(v)])
        w.writerow([99, "", *([1.0] * (len(names) - 1))])  # an empty cell
        w.writerow([100, "abc", *([1.0] * (len(names) - 1))])  # not a number
    rc, rows, err = _run([listing, "--model-dir", models["features"]], capsys, monkeypatch)
    assert rc == 0 and len(rows) == 8
    assert sum(r["predicted_class"] == label for r, label in zip(rows, labels)) >= 5, rows
    assert rows[0]["source"] == f"{listing}:2"
    assert "NaN or infinite" in rows[6]["error"] and "not a list of numbers" in rows[7]["error"]
    assert "6 of 8 input(s) predicted" in err
