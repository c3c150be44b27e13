"""Serving: the Predictor (shared preprocessing), the logged pyfunc model, the registry lookup,
and the model served by `mlflow models serve` answering a JSON request."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainwise.components.serving.predictor import Predictor
from trainwise.components.serving.preprocess import preprocess_image
from trainwise.components.serving.registry import ModelNotFound, load_predictor, resolve_registered
from trainwise.components.data.images import images_to_tensor
from trainwise.components.training.data import load_split
from tests.conftest import experiment_in
from tests.serving_helpers import digit_pngs, train_tiny_digits_model, train_tiny_model

NAME = "tiny-digits"


@pytest.fixture(scope="module")
def tiny(digits_split, tmp_path_factory):
    model_dir, spec = train_tiny_digits_model(digits_split, tmp_path_factory.mktemp("tiny") / "model")
    return model_dir, spec


@pytest.fixture(scope="module")
def registry(tiny, tmp_path_factory):
    """A fresh SQLite MLflow store holding two registered versions of the tiny model."""
    import mlflow

    from trainwise.components.serving.pyfunc import log_classifier
    from trainwise.components.training.export import SPEC, WEIGHTS

    model_dir, spec = tiny
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    state = torch.load(model_dir / WEIGHTS, weights_only=True)
    assert json.loads((model_dir / SPEC).read_text()) == spec
    try:
        # An experiment of this store: another test may have left a different one active.
        with mlflow.start_run(experiment_id=experiment_in(store, "serving-test")):
            info = log_classifier(state, spec, registered_model_name=NAME)
        assert info.registered_model_version == 1
        assert int(mlflow.register_model(info.model_uri, NAME).version) == 2  # a second version, no re-logging
        yield uri
    finally:
        mlflow.set_tracking_uri(old)


def test_serving_preprocessing_is_training_preprocessing(digits_split, tiny):
    # PNGs re-encoded from cleaned test pixels must come back as exactly the tensors training used.
    _, spec = tiny
    x, _, _ = load_split(str(digits_split), "test")
    pngs = digit_pngs(digits_split, 20)
    served = images_to_tensor(np.stack([preprocess_image(png, spec=spec) for png, _ in pngs]))
    assert torch.equal(served, x[:20])


def test_predictor_predicts_digits_and_gives_an_error_row_per_bad_input(digits_split, tiny):
    predictor = Predictor.from_dir(tiny[0], batch_size=16)  # several batches
    pngs = digit_pngs(digits_split, 40)
    rows = predictor.predict([png for png, _ in pngs])
    acc = np.mean([r["predicted_class"] == label for r, (_, label) in zip(rows, pngs)])
    assert acc >= 0.9, acc
    assert all(0 < r["probability"] <= 1 and r["error"] is None for r in rows)

    good = pngs[0][0]
    rows = predictor.predict([good, b"", b"not an image", base64.b64encode(good).decode(), "%%%", None])
    assert rows[0]["predicted_class"] == rows[3]["predicted_class"] == pngs[0][1]  # bytes and base64 agree
    assert rows[3]["probability"] == pytest.approx(rows[0]["probability"])
    errors = [r["error"] for r in rows]
    assert errors[0] is None and errors[3] is None
    assert "empty" in errors[1] and "not a readable image" in errors[2]
    assert "base64" in errors[4] and "no image" in errors[5]
    assert all(rows[i]["predicted_class"] is None for i in (1, 2, 4, 5))


_TRAINED: dict[str, tuple] = {}


def _tiny_other(kind: str, tmp_path_factory) -> tuple:
    """A small model of a non-image modality trained on its synthetic split: (split dir, model dir,
    spec); trained once per test session."""
    from tests.demo_data import write_synthetic_split

    if kind not in _TRAINED:
        root = tmp_path_factory.mktemp(kind)
        split = write_synthetic_split(root, kind, n_per_class=60)
        _TRAINED[kind] = (split, *train_tiny_model(split, root / "model", epochs=25))
    return _TRAINED[kind]


@pytest.fixture(scope="module", params=["text", "features", "sequence"])
def other(request, tmp_path_factory):
    return _tiny_other(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    return _tiny_other("features", tmp_path_factory)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return _tiny_other("text", tmp_path_factory)


def _raw_test_rows(split) -> tuple[list, list[str]]:
    """The test split as a user would send it: texts as strings, vectors as plain lists."""
    from trainwise.components.data.contract import read_manifest
    from trainwise.components.training.data import modality, read_split

    kind, classes = modality(str(split)), read_manifest(split)["classes"]
    table = read_split(str(split), "test")
    raw = table.column(kind).to_pylist()
    return raw, [classes[k] for k in table.column("label").to_pylist()]


def test_text_sequence_and_tabular_models_are_served_with_training_preprocessing(other):
    split, model_dir, spec = other
    predictor = Predictor.from_dir(model_dir, batch_size=7)
    assert predictor.payload == spec["modality"]
    raw, truth = _raw_test_rows(split)
    x, _, _ = load_split(str(split), "test", tokenizer=spec.get("tokenizer"))
    served = torch.from_numpy(np.stack([predictor._prepare(v) for v in raw]))
    assert torch.equal(served, x)  # same tensors as training/evaluate built (same tokenizer, same shape)
    rows = predictor.predict(raw)
    with torch.inference_mode():
        expected = predictor.model(x).argmax(1).tolist()
    assert [r["class_index"] for r in rows] == expected
    acc = np.mean([r["predicted_class"] == t for r, t in zip(rows, truth)])
    assert acc >= 0.8, acc


def test_bad_inputs_of_other_modalities_get_an_error_row_each(other):
    split, model_dir, spec = other
    predictor = Predictor.from_dir(model_dir)
    good = _raw_test_rows(split)[0][0]
    if spec["modality"] == "text":
        cases = {b"\xff\xfe\x00": "not UTF-8", None: "no text", "   ": "empty text", 42: "must be a string"}
        rows = predictor.predict([good, good.encode(), *cases])
        assert rows[0]["class_index"] == rows[1]["class_index"]  # a .txt file's bytes = the string
    else:
        n = int(np.prod(spec["input_shape"]))
        as_text = " ".join(map(str, good))
        cases = {json.dumps(good[:-1]): f"{n - 1} value(s) given; this model takes {n}",
                 json.dumps([float("nan")] * n).replace("NaN", "NaN"): "NaN or infinite",
                 "1, 2, three": "not a list of numbers", None: "no values"}
        rows = predictor.predict([good, as_text, *cases])
        assert rows[0]["class_index"] == rows[1]["class_index"]  # a list and "a b c" text agree
        assert rows[1]["probability"] == pytest.approx(rows[0]["probability"])
    for row, (value, message) in zip(rows[2:], cases.items()):
        assert row["predicted_class"] is None and message in row["error"], (value, row)
    assert rows[0]["error"] is None and rows[1]["error"] is None


def test_a_tabular_model_takes_named_columns_in_any_order(tabular):
    split, model_dir, spec = tabular
    predictor = Predictor.from_dir(model_dir)
    good = _raw_test_rows(split)[0][0]
    names = spec["feature_names"]
    as_dict = dict(reversed(list(zip(names, good))))
    rows = predictor.predict([good, as_dict, {k: v for k, v in as_dict.items() if k != names[0]}])
    assert rows[0]["class_index"] == rows[1]["class_index"]
    assert rows[1]["probability"] == pytest.approx(rows[0]["probability"])
    assert f"missing feature(s) ['{names[0]}']" in rows[2]["error"]


def test_a_text_model_without_its_tokenizer_is_refused_at_load(text_model):
    _, model_dir, spec = text_model
    model = Predictor.from_dir(model_dir).model
    with pytest.raises(ValueError, match="no `tokenizer`.*re-run the train stage"):
        Predictor(model, {k: v for k, v in spec.items() if k != "tokenizer"})


def test_logged_pyfunc_of_other_modalities_takes_raw_columns(other, tmp_path):
    import mlflow

    from trainwise.components.serving.pyfunc import input_columns, log_classifier
    from trainwise.components.training.export import WEIGHTS

    split, model_dir, spec = other
    raw, _ = _raw_test_rows(split)
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=experiment_in(tmp_path, "serving-other")):
            info = log_classifier(torch.load(model_dir / WEIGHTS, weights_only=True), spec)
        model = mlflow.pyfunc.load_model(info.model_uri)
        columns = [c.name for c in model.metadata.get_input_schema().inputs]
        assert columns == input_columns(spec)
        if spec["modality"] == "features":
            assert columns == spec["feature_names"]
            frame = pd.DataFrame([dict(zip(columns, map(float, v))) for v in raw[:5]])
        else:
            frame = pd.DataFrame({columns[0]: raw[:5]})
        out = model.predict(frame)
        expected = Predictor.from_dir(model_dir).predict(raw[:5])
        assert out["class_index"].tolist() == [r["class_index"] for r in expected]
        with pytest.raises(Exception, match="missing inputs"):  # MLflow's schema check names them
            model.predict(pd.DataFrame({"pixels": [1.0]}))
    finally:
        mlflow.set_tracking_uri(old)


def test_logged_pyfunc_takes_raw_bytes_or_base64(registry, digits_split):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]
    png, label = digit_pngs(digits_split, 1)[0]
    out = model.predict(pd.DataFrame({"image": [png, base64.b64encode(png).decode(), b""]}))
    assert list(out.columns) == ["predicted_class", "class_index", "probability", "error"]
    assert out["predicted_class"].tolist()[:2] == [label, label]
    assert out["error"].tolist()[:2] == [None, None] and "empty" in out["error"][2]
    with pytest.raises(Exception, match="image"):
        model.predict(pd.DataFrame({"pixels": [png]}))


def test_registry_lookup_prefers_the_champion_alias_then_the_latest(registry):
    import mlflow

    assert resolve_registered(NAME, alias="champion") == f"models:/{NAME}/2"  # no alias yet: latest
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    assert resolve_registered(NAME, alias="champion") == f"models:/{NAME}@champion"
    assert resolve_registered(NAME, alias=None) == f"models:/{NAME}/2"
    assert isinstance(load_predictor(f"models:/{NAME}@champion"), Predictor)
    with pytest.raises(ModelNotFound, match="no registered model 'nope'.*--model-dir"):
        resolve_registered("nope")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # `mlflow models serve` takes 15-30 s to answer /ping on 2 busy cores
def test_mlflow_models_serve_answers_a_json_request_with_a_base64_png(registry, digits_split, tmp_path):
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # uvicorn and mlflow live beside this interpreter
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, f"server exited:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no /ping answer in 180 s"
                time.sleep(0.5)
        pngs = digit_pngs(digits_split, 10)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(png).decode()] for png, _ in pngs]
                                    + [[base64.b64encode(b"not an image").decode()]]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:  # the server runs uvicorn as a child: stop the whole process group we started
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert len(predictions) == 11
    correct = sum(p["predicted_class"] == label for p, (_, label) in zip(predictions, pngs))
    assert correct >= 9, predictions
    assert all(p["error"] is None and 0 < p["probability"] <= 1 for p in predictions[:10])
    assert predictions[10]["predicted_class"] is None and "not a readable image" in predictions[10]["error"]
