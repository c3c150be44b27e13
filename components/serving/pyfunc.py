"""The trained model as an MLflow pyfunc that takes raw inputs.

The logged model is a :class:`TrainwiseClassifier` (an ``mlflow.pyfunc.PythonModel``) with two
artifacts, the state dict (``model.pt``, loaded with ``weights_only=True``) and the spec
(``model.json``), so that ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` accept what a
user has: a DataFrame with an ``image`` column of encoded image bytes (or their base64, which
is what a JSON request carries; the scoring server decodes base64 itself for the ``binary``
column of the signature) and answer with ``predicted_class``, ``class_index``, ``probability``
and ``error`` per row.

It is logged as "models from code" (``model_code.py``, which MLflow runs at load time), so loading
it unpickles nothing; that code imports this module, so the environment that serves it needs
trainwise installed (``--env-manager local`` from the project's venv).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from components.serving.predictor import PREDICTION_COLUMNS, Predictor
from components.serving.preprocess import image_shape, payload_of
from components.training.export import SPEC, WEIGHTS, save_model

ARTIFACT_WEIGHTS, ARTIFACT_SPEC = "weights", "spec"


class TrainwiseClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.predictor = Predictor.from_files(context.artifacts[ARTIFACT_WEIGHTS], context.artifacts[ARTIFACT_SPEC])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        column = self.predictor.payload
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if column not in model_input.columns:
            raise ValueError(f"this model takes a DataFrame with a `{column}` column; "
                             f"got columns {list(model_input.columns)}")
        rows = self.predictor.predict(model_input[column].tolist())
        # With an error row in the batch, keep None as None (JSON null) instead of letting pandas
        # turn class_index into floats and missing values into NaN, which is not valid JSON.
        errors = any(r["error"] is not None for r in rows)
        return pd.DataFrame(rows, columns=PREDICTION_COLUMNS, index=model_input.index,
                            dtype=object if errors else None)


def signature_for(spec: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    payload = payload_of(spec)
    inputs = Schema([ColSpec("binary" if payload == "image" else "string", payload)])
    outputs = Schema([ColSpec("string", "predicted_class"), ColSpec("long", "class_index"),
                      ColSpec("double", "probability"), ColSpec("string", "error", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_input(spec: dict) -> pd.DataFrame | None:
    """One blank image of the model's size, encoded as PNG (None for payloads not served yet)."""
    if payload_of(spec) != "image":
        return None
    import numpy as np

    from components.data.sources import encode_png

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
    with tempfile.TemporaryDirectory(prefix="trainwise-pyfunc-") as tmp:
        model_dir = save_model(Path(tmp) / "model", state_dict, spec)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={ARTIFACT_WEIGHTS: str(model_dir / WEIGHTS), ARTIFACT_SPEC: str(model_dir / SPEC)},
            signature=signature_for(spec), input_example=example_input(spec),
            registered_model_name=registered_model_name, pip_requirements=reqs)
