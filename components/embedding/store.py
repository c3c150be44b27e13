"""data/embed: ``embeddings.parquet`` (id, split, embedding list<float32>) + ``manifest.json``.

The manifest always exists (the embed stage always runs); with no backbone configured it is
``{"backbone": null, "rows": 0}`` and :func:`read_embeddings` returns None, so readers
(audit, baseline, the frozen head) fall back to the payload itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.contract import (MANIFEST, DataContractError, read_json, recover_dir, replace_dir,
                                      write_json_atomic)

EMBEDDINGS = "embeddings.parquet"


def read_embeddings(embed_dir: str | os.PathLike, *, split: str | None = None
                    ) -> tuple[list[str], np.ndarray] | None:
    """Row ids and their embeddings (float32, [n, d]) in file order; None when no backbone is set.

    ``split`` keeps only that split's rows. A manifest that names a backbone but whose
    Parquet file is missing or disagrees with it is an error naming the fix (re-run embed).
    """
    embed_dir = Path(embed_dir)
    manifest = read_json(embed_dir / MANIFEST)
    if not manifest.get("backbone"):
        return None
    path = embed_dir / EMBEDDINGS
    if not path.exists():
        raise DataContractError(f"{path}: missing although {embed_dir / MANIFEST} names backbone "
                                f"{manifest['backbone']!r}; re-run the embed stage (dvc repro embed)")
    try:
        table = pq.read_table(path, columns=["id", "split", "embedding"],
                              filters=[("split", "=", split)] if split else None)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataContractError(f"{path}: unreadable Parquet ({str(err).splitlines()[0][:200]}); "
                                "re-run the embed stage (dvc repro --force embed)") from None
    ids = table.column("id").to_pylist()
    col = table.column("embedding").combine_chunks()
    dim = int(manifest.get("dim") or 0)
    if len(ids) == 0:
        return ids, np.zeros((0, dim), np.float32)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = values.reshape(len(ids), -1)
    if dim and x.shape[1] != dim:
        raise DataContractError(f"{path}: embeddings have {x.shape[1]} values per row, the manifest says {dim}; "
                                "re-run the embed stage (dvc repro --force embed)")
    return ids, x


def write_embeddings(out_dir: str | os.PathLike, *, ids: list[str], splits: list[str], embeddings: np.ndarray,
                     manifest: dict) -> dict:
    """Write the Parquet file and the manifest to a temp dir, then swap it in (atomic for readers)."""
    out_dir = Path(out_dir)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids) or len(ids) != len(splits):
        raise ValueError(f"ids ({len(ids)}), splits ({len(splits)}) and embeddings {embeddings.shape} disagree")
    n, d = embeddings.shape
    manifest = {**manifest, "rows": n, "dim": d}

    def fill(tmp: Path) -> None:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), d) if n else \
            pa.array([], pa.list_(pa.float32(), d))
        table = pa.table({"id": pa.array(ids, pa.string()), "split": pa.array(splits, pa.string()),
                          "embedding": emb.cast(pa.list_(pa.float32()))})
        pq.write_table(table, tmp / EMBEDDINGS)

    _publish_dir(out_dir, manifest, fill)
    return manifest


def write_no_backbone(out_dir: str | os.PathLike) -> dict:
    """The embed stage's output when ``train.backbone`` is null: a manifest only (no Parquet)."""
    manifest = {"backbone": None, "rows": 0}
    # The whole directory is replaced, so a previous backbone's embeddings.parquet does not linger.
    _publish_dir(out_dir, manifest, lambda tmp: None)
    return manifest


def _publish_dir(out_dir: Path, manifest: dict, fill) -> None:
    """``fill(tmp)`` writes a temp dir beside ``out_dir``, the manifest is added, and the dir replaces
    ``out_dir`` whole (readers never see a half-written one)."""
    out_dir = Path(out_dir)
    recover_dir(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        out_dir.unlink()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        fill(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
