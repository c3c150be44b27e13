"""Raw inputs -> model tensors, through the very functions training used.

Serving must not carry its own copy of preprocessing: an image is decoded by the function
``clean`` uses (resize, channel conversion) and scaled by the one training uses. This module
is the one place serving imports them from; if they move, only these imports change.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from components.quality.cleaning import decode_image
from components.training.data import images_to_tensor

__all__ = ["DECODE_ERRORS", "PreprocessError", "as_bytes", "batch_tensor", "decode_image", "image_shape",
           "images_to_tensor", "payload_of", "preprocess_image"]

# What a corrupt or non-image payload raises inside decode_image (the same set clean catches).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


class PreprocessError(ValueError):
    """One input cannot be turned into a model input; the message says why (per row, not fatal)."""


def payload_of(spec: dict) -> str:
    """The modality a saved model takes: ``spec["payload"]`` when recorded, else inferred.

    Models trained before the field existed are image models; a spec carrying a vocabulary
    (text models, issue 5) is a text model.
    """
    if "payload" in spec:
        return spec["payload"]
    return "text" if "vocabulary" in spec or "tokenizer" in spec else "image"


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


def preprocess_image(value, *, spec: dict) -> np.ndarray:
    """One raw image (bytes or base64) -> uint8 (H, W, C) exactly as clean decodes it."""
    h, w, c = image_shape(spec)
    data = as_bytes(value)
    try:
        return decode_image(data, size=(h, w), channels=c)
    except UnidentifiedImageError:
        raise PreprocessError("not a readable image (unknown or unsupported format)") from None
    except DECODE_ERRORS as err:
        raise PreprocessError(f"not a readable image ({type(err).__name__}: {err})") from None


def batch_tensor(pixels: list[np.ndarray]) -> torch.Tensor:
    """Decoded images (each H, W, C uint8) -> one model input batch, scaled as in training."""
    return images_to_tensor(np.stack(pixels))
