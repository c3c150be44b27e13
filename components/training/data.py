"""Turn a split dataset into tensors a model consumes."""

from __future__ import annotations

import numpy as np
import torch

from components.data.contract import read_manifest, read_table


def load_split(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x, y, ids) of one split; images as float32 (N, C, H, W) scaled to [0, 1]."""
    manifest = read_manifest(data_dir)
    table = read_table(data_dir, columns=["id", "label", "image"], filter_split=split)
    h, w, c = manifest["image_shape"]
    flat = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    x = images_to_tensor(flat.reshape(-1, h, w, c))
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return x, y, table.column("id").to_pylist()


def input_shape(data_dir: str) -> tuple[int, int, int]:
    h, w, c = read_manifest(data_dir)["image_shape"]
    return c, h, w


def images_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Decoded uint8 images (N, H, W, C) -> the float32 (N, C, H, W) in [0, 1] that models take.

    The one place this scaling lives: training and serving (components/serving) both call it.
    """
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0)
