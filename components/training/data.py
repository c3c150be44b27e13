"""Turn a split dataset (any modality of the cleaned contract) into tensors a model consumes.

Rows travel as they are stored (uint8 pixels, float32 lists, strings) and are decoded on the
training worker, batch by batch, by :func:`decode`: the same function serves the in-memory
loader, Ray Data's ``iter_torch_batches`` and inference. Shapes per modality (manifest keys
from docs/architecture.md): image -> float32 (C, H, W) in [0, 1] from ``image_shape`` [h, w, c];
sequence -> float32 (1, L) from ``sequence_length``; features -> float32 (F,) from
``feature_names``; text -> int64 token ids (T,) from a tokenizer fitted on the train split
(:mod:`trainwise.components.training.text`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from trainwise.components.data.contract import DataContractError, read_manifest, read_table
from trainwise.components.data.images import images_to_tensor
from trainwise.components.training.text import encode

MODALITIES = ("image", "text", "sequence", "features")


def modality(data_dir: str) -> str:
    manifest = read_manifest(data_dir)
    found = manifest.get("payload") or next((c for c in MODALITIES if c in manifest.get("schema", {})), None)
    if found not in MODALITIES:
        raise DataContractError(f"{data_dir}/manifest.json: no payload modality (expected one of {MODALITIES})")
    return found


def input_shape(data_dir: str, *, max_tokens: int = 64) -> tuple[int, ...]:
    """One example's shape as the model sees it (see the module docstring)."""
    manifest, kind = read_manifest(data_dir), modality(data_dir)
    try:
        if kind == "image":
            h, w, c = manifest["image_shape"]
            return int(c), int(h), int(w)
        if kind == "sequence":
            return 1, int(manifest["sequence_length"])
        if kind == "features":
            return (len(manifest["feature_names"]),)
    except KeyError as err:
        raise DataContractError(f"{data_dir}/manifest.json: a {kind} dataset needs the key {err}") from None
    return (int(max_tokens),)


def read_split(data_dir: str, split: str, *, ids: bool = False) -> pa.Table:
    """The ``label`` and payload columns (and ``id``) of one split, as stored."""
    kind = modality(data_dir)
    return read_table(data_dir, columns=[*(["id"] if ids else []), "label", kind], filter_split=split)


def to_numpy(table: pa.Table, kind: str) -> dict[str, np.ndarray]:
    """Arrow -> the dict of arrays Ray Data hands a ``collate_fn`` (fixed-size lists as 2-D)."""
    col = table.column(kind).combine_chunks()
    if kind == "text":
        payload = np.asarray(col.to_pylist(), dtype=object)
    else:
        width = col.type.list_size if pa.types.is_fixed_size_list(col.type) else None
        if width is None:
            raise DataContractError(f"column {kind!r} is {col.type}; the cleaned contract stores a fixed_size_list")
        payload = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return {"label": table.column("label").to_numpy().astype(np.int64), kind: payload}


def decode(batch: dict[str, np.ndarray], *, kind: str, shape: tuple[int, ...],
           tokenizer: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as stored -> (x, y) tensors (on the CPU)."""
    raw = batch[kind]
    if kind == "text":
        if tokenizer is None:
            raise ValueError("text needs the tokenizer fitted on the train split (model.json 'tokenizer')")
        x = torch.from_numpy(encode(raw, tokenizer))
    else:
        if kind == "image" and raw.dtype == object and len(raw) and isinstance(raw[0], bytes):
            from trainwise.components.data.images import decode_files  # files' bytes (a reader that did not decode)

            c, h, w = shape
            raw = decode_files(raw, shape=(h, w, c))
        elif raw.dtype == object:  # Ray Data may hand fixed-size lists as an array of arrays
            raw = np.stack(list(raw))
        elif not raw.flags.writeable:  # a zero-copy view of Arrow memory: torch wants its own
            raw = raw.copy()
        if kind == "image":
            c, h, w = shape
            x = images_to_tensor(raw.reshape(-1, h, w, c))
        else:
            x = torch.from_numpy(np.asarray(raw, dtype=np.float32).reshape(-1, *shape))
    return x, torch.from_numpy(np.asarray(batch["label"], dtype=np.int64))


def load_split(data_dir: str, split: str, *, tokenizer: dict | None = None,
               max_tokens: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x, y, ids) of one split, decoded; images as float32 (N, C, H, W) scaled to [0, 1]."""
    kind = modality(data_dir)
    table = read_split(data_dir, split, ids=True)
    x, y = decode(to_numpy(table, kind), kind=kind, tokenizer=tokenizer,
                  shape=input_shape(data_dir, max_tokens=(tokenizer or {}).get("max_tokens", max_tokens)))
    return x, y, table.column("id").to_pylist()


def augment(x: torch.Tensor, *, kind: str, strength: float, generator: torch.Generator,
            hflip: bool = False) -> torch.Tensor:
    """Training-time augmentation on the worker; ``strength`` 0 is off, 1 is strong.

    image: random translation of up to ``strength * side / 4`` pixels (zero fill);
    sequence / features: Gaussian noise of ``strength * 0.25`` x the batch's std per channel;
    text: each word replaced by ``<unk>`` with probability ``strength * 0.2``.
    """
    g = generator
    if hflip and kind == "image":  # a random half of the batch mirrored left-right (photos; not digits)
        flip = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if strength <= 0:
        return x
    if kind == "image":
        n, _, h, w = x.shape
        s = int(round(strength * min(h, w) / 4))
        if s == 0:
            return x
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=g)
        out = torch.empty_like(x)
        for oy in range(2 * s + 1):  # one slice per offset, not per example
            for ox in range(2 * s + 1):
                idx = ((dy == oy) & (dx == ox)).nonzero().flatten()
                if len(idx):
                    out[idx] = padded[idx, :, oy:oy + h, ox:ox + w]
        return out
    if kind in ("sequence", "features"):
        std = x.std(0, keepdim=True) if len(x) > 1 else torch.ones_like(x[:1])
        return x + torch.randn(x.shape, generator=g) * std * (0.25 * strength)
    if kind == "text":
        drop = (torch.rand(x.shape, generator=g) < 0.2 * strength) & (x > 1)
        return x.masked_fill(drop, 1)
    return x
