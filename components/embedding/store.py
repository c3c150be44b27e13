"""data/embed: ``embeddings.parquet`` (id, embedding list<float32>) + ``manifest.json``.

Embed runs before split (the near-duplicate groups that decide the split are found on these
vectors), so the file holds no split: readers join by ``id``.

The manifest always exists (the embed stage always runs). With no backbone configured,
:func:`read_embeddings` returns None, so readers (audit, baseline, the frozen head) fall back to
the payload itself; the file may still hold features computed only to find near-duplicates
(``grouping`` in the manifest, ``embed.grouping``), which :func:`grouping_vectors` reads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainwise.components.atomic_io import recover_dir, replace_dir, write_json_atomic
from trainwise.components.data.contract import MANIFEST, DataContractError, read_json

EMBEDDINGS = "embeddings.parquet"


def read_embeddings(embed_dir: str | os.PathLike) -> tuple[list[str], np.ndarray] | None:
    """Row ids and their embeddings (float32, [n, d]) in file order; None when no backbone is set.

    A manifest that names a backbone but whose Parquet file is missing or disagrees with it is an
    error naming the fix (re-run embed).
    """
    embed_dir = Path(embed_dir)
    manifest = read_json(embed_dir / MANIFEST)
    if not manifest.get("backbone"):
        return None
    return _read(embed_dir, manifest)


def grouping_vectors(embed_dir: str | os.PathLike) -> tuple[str, list[str], np.ndarray] | None:
    """(model name, row ids, vectors) to find near-duplicates with: the backbone's embeddings, or the
    features embed computed only for grouping (``embed.grouping``); None when there are neither."""
    embed_dir = Path(embed_dir)
    manifest = read_json(embed_dir / MANIFEST)
    model = manifest.get("backbone") or manifest.get("grouping")
    if not model:
        return None
    return (model, *_read(embed_dir, manifest))


def iter_grouping_vectors(embed_dir: str | os.PathLike, *, batch_rows: int = 8192):
    """(model name, an iterator of (ids, float32 vectors) batches) as :func:`grouping_vectors`, streamed:
    memory holds one batch, not the whole file (200k rows of 1,280-d vectors are 1 GB)."""
    embed_dir = Path(embed_dir)
    manifest = read_json(embed_dir / MANIFEST)
    model = manifest.get("backbone") or manifest.get("grouping")
    if not model:
        return None
    path = embed_dir / EMBEDDINGS
    if not path.exists():
        _read(embed_dir, manifest)  # raises the error that names the fix

    def batches():
        for b in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["id", "embedding"]):
            col = b.column(1)
            ids = b.column(0).to_pylist()
            values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            yield ids, values.reshape(len(ids), -1) if ids else np.zeros((0, int(manifest.get("dim") or 0)))

    return model, batches()


def grouping_note(embed_dir: str | os.PathLike) -> str:
    """Why embed wrote no vectors to group near-duplicates with ('' when it wrote some)."""
    return read_json(Path(embed_dir) / MANIFEST).get("grouping_note") or ""


def _read(embed_dir: Path, manifest: dict) -> tuple[list[str], np.ndarray]:
    path = embed_dir / EMBEDDINGS
    if not path.exists():
        raise DataContractError(f"{path}: missing although {embed_dir / MANIFEST} names "
                                f"{manifest.get('backbone') or manifest.get('grouping')!r}; re-run the embed stage "
                                "(dvc repro embed)")
    try:
        table = pq.read_table(path, columns=["id", "embedding"])
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


def write_embeddings(out_dir: str | os.PathLike, *, ids: list[str], embeddings: np.ndarray,
                     manifest: dict) -> dict:
    """Write the Parquet file and the manifest to a temp dir, then swap it in (atomic for readers)."""
    out_dir = Path(out_dir)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(f"ids ({len(ids)}) and embeddings {embeddings.shape} disagree")
    n, d = embeddings.shape
    manifest = {**manifest, "rows": n, "dim": d}

    def fill(tmp: Path) -> None:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), d) if n else \
            pa.array([], pa.list_(pa.float32(), d))
        table = pa.table({"id": pa.array(ids, pa.string()), "embedding": emb.cast(pa.list_(pa.float32()))})
        # row groups of 8,192 rows: one row group of every vector was buffered whole (256 MB more at 50k)
        pq.write_table(table, tmp / EMBEDDINGS, row_group_size=8192)

    _publish_dir(out_dir, manifest, fill)
    return manifest


def write_no_backbone(out_dir: str | os.PathLike, *, note: str = "") -> dict:
    """The embed stage's output when there is nothing to embed: a manifest only (no Parquet);
    ``note`` says why no grouping features either (split quotes it)."""
    manifest = {"backbone": None, "rows": 0, "grouping": None, "grouping_note": note}
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
