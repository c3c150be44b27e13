"""Raw inputs -> model tensors, through the very functions training used.

Serving must not carry its own copy of preprocessing: an image is decoded by the function
``clean`` uses (resize, channel conversion) and scaled by the one training uses. This module
is the one place serving imports them from; if they move, only these imports change.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainwise.components.data.images import decode_image
from trainwise.components.data.sources.imagecheck import NOT_IMAGE, TOO_MANY_PIXELS, Rejected, check_image
from trainwise.components.data.images import images_to_tensor

__all__ = ["DECODE_ERRORS", "PreprocessError", "as_bytes", "batch_tensor", "decode_image", "feature_names",
           "image_shape", "images_to_tensor", "max_image_pixels", "payload_of", "preprocess", "preprocess_image", "preprocess_text",
           "preprocess_vector"]

# What a corrupt or non-image payload raises inside decode_image (the same set clean catches).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


class PreprocessError(ValueError):
    """One input cannot be turned into a model input; the message says why (per row, not fatal)."""


def payload_of(spec: dict) -> str:
    """The modality a saved model takes: ``spec["payload"]`` or ``spec["modality"]`` (what the
    train stage records) when present, else inferred: a spec with a tokenizer is a text model,
    and models trained before the field existed are image models."""
    for key in ("payload", "modality"):
        if spec.get(key):
            return spec[key]
    return "text" if "vocabulary" in spec or "tokenizer" in spec else "image"


def feature_names(spec: dict) -> list[str]:
    """Names of a tabular model's inputs, in the order the network takes them."""
    n = int(np.prod(spec["input_shape"]))
    names = list(spec.get("feature_names") or [])
    return names if len(names) == n else [f"f{i}" for i in range(n)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def preprocess_text(value, *, spec: dict) -> np.ndarray:
    """One raw text (str, or UTF-8 bytes such as a .txt file) -> int64 token ids (max_tokens,),
    through the tokenizer fitted on the train split and saved in ``model.json``."""
    from trainwise.components.training.text import encode

    tokenizer = spec.get("tokenizer")
    if not tokenizer:
        raise ValueError("model.json of this text model has no `tokenizer`; re-run the train stage to save it")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise PreprocessError(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if _missing(value):
        raise PreprocessError("no text given (empty cell)")
    if not isinstance(value, str):
        raise PreprocessError(f"a text must be a string or UTF-8 bytes, got {type(value).__name__}")
    if not value.strip():
        raise PreprocessError("empty text")
    return encode([value], tokenizer)[0]


def preprocess_vector(value, *, spec: dict) -> np.ndarray:
    """One sequence or feature vector -> float32 of the network's ``input_shape``.

    Accepted: a list / array of numbers; a mapping of feature name -> number (tabular models);
    or text (str / UTF-8 bytes, e.g. a file) holding a JSON list or comma/space-separated numbers.
    The length must be the one the model was trained on, and every value finite.
    """
    shape = tuple(int(d) for d in spec["input_shape"])
    n = int(np.prod(shape))
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise PreprocessError("not a list of numbers (binary content)") from None
    if _missing(value):
        raise PreprocessError("no values given (empty cell)")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [float(v) for v in text.replace(",", " ").split()]
        except ValueError as err:
            raise PreprocessError(f"not a list of numbers ({err})") from None
    elif isinstance(value, dict):
        names = feature_names(spec)
        missing = [k for k in names if k not in value]
        if missing:
            raise PreprocessError(f"missing feature(s) {missing[:5]} (the model takes {names})")
        value = [value[k] for k in names]
    try:
        x = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise PreprocessError(f"not a list of numbers ({err})") from None
    if x.size != n:
        raise PreprocessError(f"{x.size} value(s) given; this model takes {n}")
    if not np.isfinite(x).all():
        raise PreprocessError("NaN or infinite value(s): the model was trained on finite values only")
    return x.reshape(shape)


def image_shape(spec: dict) -> tuple[int, int, int]:
    """(height, width, channels) every input image is decoded to: what clean produced for training.

    ``spec["image_shape"]`` when recorded, else derived from the network's ``input_shape`` (C, H, W).
    """
    if "image_shape" in spec:
        h, w, c = spec["image_shape"]
    else:
        c, h, w = spec["input_shape"]
    return int(h), int(w), int(c)


def as_bytes(value) -> bytes:
    """Raw image bytes from bytes or a base64 string (JSON requests can only carry text)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise PreprocessError("not base64: an `image` string must be the base64 of the file's bytes") from None
    elif value is None or (isinstance(value, float) and value != value):
        raise PreprocessError("no image given (empty cell)")
    else:
        raise PreprocessError(f"an image must be bytes or a base64 string, got {type(value).__name__}")
    if not data:
        raise PreprocessError("empty file (0 bytes)")
    return data


def max_image_pixels(spec: dict) -> int:
    """The decompression-bomb limit for one input image: ``spec["max_image_pixels"]`` when the
    model records ingest's, else Pillow's default (which is also ingest.max_image_pixels' default)."""
    return int(spec.get("max_image_pixels") or Image.MAX_IMAGE_PIXELS)


def _refusal(rej: Rejected) -> str:
    if rej.reason == TOO_MANY_PIXELS:
        d = rej.detail
        return (f"image too large: {d['width']}x{d['height']} pixels, over the limit of {d['max_pixels']} "
                "(ingest.max_image_pixels); nothing was decoded")
    if rej.reason == NOT_IMAGE:
        return f"not a readable image (not a format ingest accepts: {rej.detail.get('error', '')})"
    return f"not a readable image ({rej.reason.replace('_', ' ')}: {rej.detail.get('error', '')})"


def preprocess_image(value, *, spec: dict, max_pixels: int | None = None) -> np.ndarray:
    """One raw image (bytes or base64) -> uint8 (H, W, C) exactly as clean decodes it.

    First the checks ingest makes on the bytes (signature, header size, end marker; see
    ``imagecheck``), so predict and serving refuse what ingest refuses and never decode a
    decompression bomb: ``max_pixels`` (default :func:`max_image_pixels`) bounds the header's size.
    """
    h, w, c = image_shape(spec)
    data = as_bytes(value)
    try:
        check_image(data, max_pixels=max_pixels or max_image_pixels(spec))
    except Rejected as rej:
        raise PreprocessError(_refusal(rej)) from None
    try:
        return decode_image(data, size=(h, w), channels=c)
    except UnidentifiedImageError:
        raise PreprocessError("not a readable image (unknown or unsupported format)") from None
    except DECODE_ERRORS as err:
        raise PreprocessError(f"not a readable image ({type(err).__name__}: {err})") from None


def batch_tensor(inputs: list[np.ndarray], payload: str = "image") -> torch.Tensor:
    """Preprocessed inputs -> one model input batch, as training builds it: decoded images
    (each H, W, C uint8) scaled by ``images_to_tensor``; token ids and vectors stacked."""
    if payload == "image":
        return images_to_tensor(np.stack(inputs))
    return torch.from_numpy(np.stack(inputs))


def preprocess(value, *, spec: dict, payload: str | None = None, max_image_pixels: int | None = None) -> np.ndarray:
    """One raw input of any modality -> what :func:`batch_tensor` stacks."""
    payload = payload or payload_of(spec)
    if payload == "image":
        return preprocess_image(value, spec=spec, max_pixels=max_image_pixels)
    if payload == "text":
        return preprocess_text(value, spec=spec)
    if payload in ("sequence", "features"):
        return preprocess_vector(value, spec=spec)
    raise ValueError(f"model.json: unknown payload {payload!r} (image | text | sequence | features)")
