"""What the training loop needs from a backbone run: the model name saved in model.json, the
embedding size, and (frozen) the train / val rows as embeddings instead of pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import DataContractError, read_json, read_table
from trainwise.components.models.backbone_names import is_text_backbone, mismatch
from trainwise.components.embedding.store import read_embeddings
from trainwise.components.models.networks import BACKBONE_PREFIX


def resolve_backbone(loop) -> dict:
    """LoopConfig updates for ``loop.backbone`` (a resolved config otherwise)."""
    updates: dict = {"model": f"{BACKBONE_PREFIX}{loop.backbone}"}
    if isinstance(loop.pretrained, str):  # workers may run elsewhere than the stage's working directory
        updates["pretrained"] = str(Path(loop.pretrained).resolve())
    why = mismatch(loop.backbone, loop.modality)
    if why:
        raise DataContractError(why)
    if is_text_backbone(loop.backbone):  # ids from the model's own tokenizer, not the word vocabulary
        from trainwise.components.models.text_backbones import build_text_backbone, tokenizer_spec

        manifest = read_json(Path(loop.embed_dir) / "manifest.json") if loop.embed_dir else {}
        max_tokens = manifest.get("max_tokens") if manifest.get("backbone") == loop.backbone else None
        if not max_tokens:  # no embed output to read it from: ask the model (a few seconds)
            max_tokens = build_text_backbone(loop.backbone, updates.get("pretrained", loop.pretrained)).info.max_tokens
        updates.update(tokenizer=tokenizer_spec(loop.backbone, max_tokens=max_tokens), input_shape=(max_tokens,))
    if loop.embed_dir and (Path(loop.embed_dir) / "manifest.json").is_file():
        from trainwise.components.models.backbones import weights_changed

        why = weights_changed(read_json(Path(loop.embed_dir) / "manifest.json"), loop.backbone,
                              updates.get("pretrained", loop.pretrained),
                              where=f"{loop.embed_dir}/manifest.json")
        if why:
            raise DataContractError(why)
    if loop.backbone_mode == "frozen":
        if not loop.embed_dir:
            raise ValueError("backbone_mode frozen needs embed_dir (the embed stage's output)")
        manifest = read_json(Path(loop.embed_dir) / "manifest.json")
        if manifest.get("backbone") != loop.backbone:
            raise DataContractError(f"{loop.embed_dir}/manifest.json holds embeddings of {manifest.get('backbone')!r}, "
                                    f"not train.backbone {loop.backbone!r}; re-run the embed stage (dvc repro)")
        updates.update(embed_dim=int(manifest["dim"]), loader="memory")  # vectors are small: memory loader
    return updates


def embedding_tables(loop) -> dict[str, pa.Table]:
    """train / val as (label, features) with features = the row's embedding, matched by id."""
    got = read_embeddings(loop.embed_dir)
    if got is None:
        raise DataContractError(f"{loop.embed_dir}: no embeddings (train.backbone was null when embed ran); "
                                "re-run the embed stage (dvc repro)")
    ids, x = got
    index = {i: k for k, i in enumerate(ids)}
    out = {}
    for split in ("train", "val"):
        t = read_table(loop.data_dir, columns=["id", "label"], filter_split=split)
        rows = [index.get(i) for i in t.column("id").to_pylist()]
        if any(r is None for r in rows):
            raise DataContractError(f"{loop.embed_dir}: {sum(r is None for r in rows)} {split} rows have no "
                                    "embedding; re-run the embed stage (dvc repro)")
        feats = x[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, x.shape[1]), np.float32)
        out[split] = pa.table({"label": t.column("label"),
                               "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)),
                                                                             x.shape[1])})
    return out


def network_error(train: dict, *, root: str | Path = ".") -> str | None:
    """Why the network ``train.*`` describes cannot be built (naming the param and the fix), or None.
    Checked by the stages before Ray starts, so a typo fails in a second with exit 2."""
    from trainwise.components.models.backbone_names import BackboneError
    from trainwise.components.models.backbones import build_backbone
    from trainwise.components.models.custom import CustomModelError, load_factory

    try:
        if train.get("backbone"):
            build_backbone(train["backbone"], train.get("pretrained", True), root=root)
        elif ":" in str(train.get("model", "")):
            load_factory(train["model"])
    except (BackboneError, CustomModelError) as err:
        return str(err)
    return None
