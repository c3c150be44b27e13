"""The trained model as an MLflow pyfunc that takes raw inputs.

The logged model is a :class:`TrainwiseClassifier` (an ``mlflow.pyfunc.PythonModel``) with two
artifacts, the state dict (``model.pt``, loaded with ``weights_only=True``) and the spec
(``model.json``), so that ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` accept what a
user has: a DataFrame with an ``image`` column of encoded image bytes (or their base64, which
is what a JSON request carries; the scoring server decodes base64 itself for the ``binary``
column of the signature), a ``text`` column of raw strings (tokenized by the vocabulary saved
with the model), a ``sequence`` column of number lists, or one column per feature for tabular
models; and answer with ``predicted_class``, ``class_index``, ``probability`` and ``error`` per row.

It is logged as "models from code" (``model_code.py``, which MLflow runs at load time), so loading
it unpickles nothing; that code imports this module, so the environment that serves it needs
trainwise installed (``--env-manager local`` from the project's venv).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from trainwise.components.serving.predictor import PREDICTION_COLUMNS, Predictor
from trainwise.components.serving.preprocess import feature_names, image_shape, payload_of
from trainwise.components.training.export import SPEC, WEIGHTS, save_model

ARTIFACT_WEIGHTS, ARTIFACT_SPEC = "weights", "spec"


class TrainwiseClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.predictor = Predictor.from_files(context.artifacts[ARTIFACT_WEIGHTS], context.artifacts[ARTIFACT_SPEC])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        rows = self.predictor.predict(input_values(model_input, self.predictor.spec))
        # With an error row in the batch, keep None as None (JSON null) instead of letting pandas
        # turn class_index into floats and missing values into NaN, which is not valid JSON.
        errors = any(r["error"] is not None for r in rows)
        return pd.DataFrame(rows, columns=PREDICTION_COLUMNS, index=model_input.index,
                            dtype=object if errors else None)


def input_columns(spec: dict) -> list[str]:
    """The DataFrame columns the served model takes: ``image`` (encoded bytes or base64), ``text``,
    ``sequence`` (a list of numbers per row), or one column per feature for tabular models."""
    payload = payload_of(spec)
    return feature_names(spec) if payload == "features" else [payload]


def input_values(frame: pd.DataFrame, spec: dict) -> list:
    """One raw input per row of ``frame`` (see :func:`input_columns`); a tabular model also takes
    a single ``features`` column of lists."""
    payload, columns = payload_of(spec), input_columns(spec)
    if all(c in frame.columns for c in columns):
        if payload == "features":
            return frame[columns].to_dict("records")
        return frame[columns[0]].tolist()
    if payload == "features" and "features" in frame.columns:
        return frame["features"].tolist()
    missing = [c for c in columns if c not in frame.columns]
    raise ValueError(f"this model takes a DataFrame with the column(s) {columns}; missing {missing[:5]}, "
                     f"got columns {list(frame.columns)}")


def signature_for(spec: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    payload = payload_of(spec)
    if payload == "features":
        cols = [ColSpec("double", name) for name in input_columns(spec)]
    elif payload == "sequence":
        cols = [ColSpec(Array("double"), "sequence")]
    else:
        cols = [ColSpec("binary" if payload == "image" else "string", payload)]
    outputs = Schema([ColSpec("string", "predicted_class"), ColSpec("long", "class_index"),
                      ColSpec("double", "probability"), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=Schema(cols), outputs=outputs)


def example_input(spec: dict) -> pd.DataFrame:
    """One input of the model's kind (a blank image encoded as PNG, a short text, zeros)."""
    import numpy as np

    payload = payload_of(spec)
    if payload == "text":
        return pd.DataFrame({"text": ["an example text"]})
    if payload == "sequence":
        return pd.DataFrame({"sequence": [[0.0] * int(np.prod(spec["input_shape"]))]})
    if payload == "features":
        return pd.DataFrame({name: [0.0] for name in input_columns(spec)})
    from trainwise.components.data.sources import encode_png

    h, w, c = image_shape(spec)
    blank = np.zeros((h, w, c), np.uint8)
    png = encode_png(blank[..., 0] if c == 1 else blank)
    return pd.DataFrame({"image": [png]})


def log_classifier(state_dict: dict, spec: dict, *, name: str = "model", registered_model_name: str | None = None,
                   pip_requirements: list[str] | None = None):
    """Log (and register) the model under the active MLflow run; returns MLflow's ``ModelInfo``."""
    import torch

    reqs = pip_requirements or [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                                "pillow", "numpy", "pandas"]
    if not pip_requirements and str(spec.get("model", "")).startswith("backbone:"):
        # a train.backbone model: its architecture's package (the weights travel in the state dict)
        from trainwise.components.models.backbone_names import TEXT_BUILTIN, is_text_backbone

        name = spec["model"].split(":", 1)[1]
        if is_text_backbone(name):  # the architecture and the tokenizer come from the model's package / hub
            reqs += ["sentence-transformers", *([TEXT_BUILTIN[name].replace("_", "-")] if name in TEXT_BUILTIN else [])]
        else:
            reqs.append("efficientnet-lite-pytorch" if name == "efficientnet_lite0" else "timm")
    with tempfile.TemporaryDirectory(prefix="trainwise-pyfunc-") as tmp:
        model_dir = save_model(Path(tmp) / "model", state_dict, spec)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={ARTIFACT_WEIGHTS: str(model_dir / WEIGHTS), ARTIFACT_SPEC: str(model_dir / SPEC)},
            signature=signature_for(spec), input_example=example_input(spec),
            registered_model_name=registered_model_name, pip_requirements=reqs)
