"""Which model to predict with: a registered version, a run's model, or a model directory."""

from __future__ import annotations

import os
from pathlib import Path

from trainwise.components.serving.predictor import Predictor


class ModelNotFound(FileNotFoundError):
    """No model where the user pointed (or nothing registered yet); the message says what to do."""


def resolve_registered(name: str, *, alias: str | None = "champion") -> str:
    """``models:/name@alias`` when that alias is set, else ``models:/name/<latest version>``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        versions = []  # no store yet: say so instead of creating an empty one
    else:
        client = mlflow.MlflowClient()
        if alias:
            try:
                client.get_model_version_by_alias(name, alias)
                return f"models:/{name}@{alias}"
            except MlflowException:
                pass  # alias not set (or model not registered): fall back to the latest version
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            versions = []
    if not versions:
        raise ModelNotFound(
            f"no registered model {name!r} in {uri} (params.yaml mlflow.registered_model): "
            "run the pipeline first (`trainwise run`), or pass --model-dir models/model / --run RUN_ID")
    return f"models:/{name}/{max(int(v.version) for v in versions)}"


def load_predictor(uri: str, **kwargs) -> Predictor:
    """The Predictor inside a logged trainwise pyfunc model (``models:/...``, ``runs:/...``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        raise ModelNotFound(f"cannot load model {uri}: {err}") from None
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:
        python_model = None
    predictor = getattr(python_model, "predictor", None)
    if not isinstance(predictor, Predictor):
        raise ModelNotFound(
            f"{uri} is not a trainwise raw-input model (it was logged before `trainwise predict` existed, "
            "as a plain mlflow.pytorch model); retrain it, or pass --model-dir with the model directory")
    for k, v in kwargs.items():
        setattr(predictor, k, v)
    return predictor


def open_predictor(*, model_uri: str | None = None, run_id: str | None = None,
                   model_dir: str | os.PathLike | None = None, registered_model: str,
                   alias: str | None = "champion", batch_size: int = 256,
                   max_image_pixels: int | None = None) -> tuple[Predictor, str]:
    """(predictor, what it is) from at most one of the three; none: the registered model."""
    if sum(x is not None for x in (model_uri, run_id, model_dir)) > 1:
        raise ValueError("give at most one of model_uri, run_id, model_dir")
    if model_dir is not None:
        if not (Path(model_dir) / "model.json").exists():
            raise ModelNotFound(f"{model_dir}: no model.json there; give the directory the train stage writes "
                                "(models/model)")
        return Predictor.from_dir(model_dir, batch_size=batch_size, max_image_pixels=max_image_pixels), str(model_dir)
    uri = model_uri or (f"runs:/{run_id}/model" if run_id else resolve_registered(registered_model, alias=alias))
    return load_predictor(uri, batch_size=batch_size, max_image_pixels=max_image_pixels), uri
