"""A trained model plus its preprocessing: raw inputs in, one prediction row per input out.

Both ``trainwise predict`` and the logged MLflow pyfunc model use this class, so the command
line and a served model answer the same way for the same bytes. A bad input gives a row
with ``error`` set; the other inputs of the batch are still predicted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from trainwise.components.serving.preprocess import PreprocessError, batch_tensor, payload_of, preprocess
from trainwise.components.training.export import load_model, load_model_from_state

# Columns of every prediction row (the CLI adds id and source in front).
PREDICTION_COLUMNS = ["predicted_class", "class_index", "probability", "error"]
PAYLOADS = ("image", "text", "sequence", "features")


class Predictor:
    def __init__(self, model: torch.nn.Module, spec: dict, *, batch_size: int = 256,
                 max_image_pixels: int | None = None):
        """``max_image_pixels``: images whose header declares more are refused (a row with
        ``error``), as ingest sets them aside; None: the model's record, else Pillow's default."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.model = model.eval()
        self.spec = spec
        self.classes = list(spec["classes"])
        self.payload = payload_of(spec)
        if self.payload not in PAYLOADS:
            raise ValueError(f"model.json: unknown payload {self.payload!r} ({' | '.join(PAYLOADS)})")
        if self.payload == "text" and not spec.get("tokenizer"):
            raise ValueError("model.json of this text model has no `tokenizer` (the vocabulary fitted on the "
                             "train split); re-run the train stage, which saves it")
        self.batch_size = batch_size
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, **kwargs) -> "Predictor":
        """A model directory written by ``trainwise.components.training.export.save_model``."""
        model, spec = load_model(model_dir)
        return cls(model, spec, **kwargs)

    @classmethod
    def from_files(cls, weights: str | os.PathLike, spec_file: str | os.PathLike, **kwargs) -> "Predictor":
        spec = json.loads(Path(spec_file).read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model, spec = load_model_from_state(state, spec)
        return cls(model, spec, **kwargs)

    def _prepare(self, value):
        return preprocess(value, spec=self.spec, payload=self.payload, max_image_pixels=self.max_image_pixels)

    def predict(self, values: Iterable) -> list[dict]:
        """One row (PREDICTION_COLUMNS) per raw input, in order."""
        rows: list[dict] = []
        chunk: list = []
        for value in values:
            chunk.append(value)
            if len(chunk) == self.batch_size:
                rows.extend(self._predict_chunk(chunk))
                chunk = []
        if chunk:
            rows.extend(self._predict_chunk(chunk))
        return rows

    def _predict_chunk(self, values: Sequence) -> list[dict]:
        rows: list[dict] = [{}] * len(values)
        good, inputs = [], []
        for i, value in enumerate(values):
            try:
                inputs.append(self._prepare(value))
                good.append(i)
            except PreprocessError as err:
                rows[i] = {"predicted_class": None, "class_index": None, "probability": None, "error": str(err)}
        if good:
            with torch.inference_mode():
                proba = torch.softmax(self.model(batch_tensor(inputs, self.payload)), dim=1).numpy()
            top = proba.argmax(1)
            for i, k, p in zip(good, top, proba[np.arange(len(top)), top]):
                rows[i] = {"predicted_class": self.classes[int(k)], "class_index": int(k),
                           "probability": float(p), "error": None}
        return rows
