"""Embed every row of a cleaned dataset with a backbone: Ray Data ``map_batches`` batch inference.

Each replica is a Ray Data actor that builds the backbone once and embeds batches of stored
images (the files' bytes, decoded in the replica by the one decoder, or uint8 pixels where a dataset
stores them) or texts (tokenized by the backbone's own tokenizer); replicas run on as many CPUs / GPUs as the cluster
gives. Photos reach the replicas as a stream (zero-CPU read tasks, a row group at a time), never
the whole folder in the object store. Rows come back keyed by id and are put back in the dataset's order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np


class _Embedder:
    """One Ray Data actor: a backbone in eval mode, reused for every batch it is handed."""

    def __init__(self, *, name: str, pretrained, seed: int, root: str, image_shape: tuple[int, int, int] | None,
                 threads: int, use_gpu: bool, payload: str = "image", batch_size: int | None = None):
        import torch

        from trainwise.components.models.backbones import build_backbone

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = build_backbone(name, pretrained, seed=seed, root=root).to(self.device)
        self.shape = tuple(image_shape) if image_shape else None
        self.payload = payload
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        from trainwise.components.data.images import images_to_tensor

        raw = batch[self.payload]
        if self.payload == "text":  # the tokenizer serving and evaluate use too (components/training/text.py)
            from trainwise.components.models.text_backbones import tokenize, tokenizer_spec

            spec = tokenizer_spec(self.model.info.name, max_tokens=self.model.info.max_tokens)
            x = torch.from_numpy(tokenize([str(t) if t is not None else "" for t in raw], spec)).to(self.device)
        else:
            h, w, c = self.shape
            if raw.dtype == object and len(raw) and isinstance(raw[0], bytes):  # encoded files: decoded here
                from trainwise.components.data.images import decode_files

                raw = decode_files(raw, shape=(h, w, c))
            elif raw.dtype == object:  # fixed-size lists may arrive as an array of arrays
                raw = np.stack(list(raw))
            x = images_to_tensor(np.ascontiguousarray(raw).reshape(-1, h, w, c))
            n = len(x)
            if self.batch_size and 0 < n < self.batch_size:
                # a short batch (the end of a read task) padded to the one shape the model sees: on CPU
                # oneDNN keeps a plan per input shape, and RSS grew with every new one
                x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
            x = x.to(self.device)
        with torch.inference_mode():
            emb = self.model(x).float().cpu().numpy()
        return {"id": batch["id"], "embedding": list(emb[:len(batch["id"])])}


class Embedded:
    """Vectors put straight into one (rows, dim) float32 matrix, in the order of ``ids``, as batches
    come back: the stage writes that matrix as it is. (A dict of id -> vector, stacked at the end, held
    every vector twice: 2 x 256 MB at 50,000 photos of a 1,280-d backbone, on top of the driver.)"""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self._row = {i: k for k, i in enumerate(ids)}
        self.matrix: np.ndarray | None = None
        self._seen = np.zeros(len(ids), bool)

    def add(self, ids, vectors) -> None:
        vectors = np.stack(list(vectors)) if getattr(vectors, "dtype", None) == object else np.asarray(vectors)
        if self.matrix is None:
            self.matrix = np.zeros((len(self.ids), vectors.shape[1]), np.float32)
        rows = np.fromiter((self._row[str(i)] for i in ids), np.int64, len(ids))
        self.matrix[rows] = vectors
        self._seen[rows] = True

    @property
    def count(self) -> int:
        return int(self._seen.sum())

    def missing(self) -> list[str]:
        """Ids that came back without a vector (none, when every batch came back)."""
        return [self.ids[k] for k in np.flatnonzero(~self._seen)]


def embed_images(data_dir: str | Path, *, image_shape: tuple[int, int, int] | None, name: str, pretrained,
                 seed: int, root: str, batch_size: int, replicas: int, cpus_per_replica: int, use_gpu: bool,
                 log: Callable[..., None] = lambda *a: None, payload: str = "image", ids: list[str]) -> Embedded:
    """The embedding (float32) of every row of the dataset ``data_dir`` (its id and ``payload``
    column: ``image``, or ``text`` for a text backbone), in the order of ``ids`` (its rows' ids); the
    batches go to ``replicas`` Ray Data actors.

    Photos are streamed (:func:`image_stream`): zero-CPU read tasks read the files' bytes a row group
    at a time while the replicas embed, so the object store holds a few blocks, not the folder (it held
    every file's bytes before the first batch: ~1.2 GB at 50,000 photos). Texts (small, and sorted
    longest first over all of them) are read on the driver through the contract and put whole."""
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the stage logs its own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if payload == "text":
        ds = ray.data.from_arrow_refs([ray.put(t) for t in _tables(data_dir, payload=payload, batch_size=batch_size)])
    else:
        ds = image_stream(data_dir, batch_size=batch_size)
    ds = ds.map_batches(
        _Embedder, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=cpus_per_replica, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs=dict(name=name, pretrained=pretrained, seed=seed, root=str(root),
                                   image_shape=tuple(image_shape) if image_shape else None,
                                   threads=cpus_per_replica, use_gpu=use_gpu, payload=payload,
                                   batch_size=batch_size))
    out = Embedded(ids)
    t0, last = time.perf_counter(), 0.0
    for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        out.add(b["id"], b["embedding"])
        now = time.perf_counter() - t0
        if now - last > 15:  # progress on long runs; Ray Data's own bars are off without verbose
            last = now
            log("embedded %d rows (%.1f rows/s)", out.count, out.count / now)
    return out


def image_stream(data_dir: str | Path, *, batch_size: int) -> "ray.data.Dataset":
    """The rows of ``data_dir`` as a lazy Ray Data stream of (id, image) blocks (the ``ray_data``
    training loader's reader, components/data/ray_stream.py): one read task per Parquet row group
    of the dataset holding the photos (data/ingest at the end of the chain), cut on the driver to the
    rows ``data_dir`` keeps by position (the ids are read once here, not matched again in every task).
    Photos travel as their files' bytes and are decoded by the replicas."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from trainwise.components.data.contract import payload_dir, read_manifest, read_table
    from trainwise.components.data.ray_stream import open_parquet, read_stream, row_group_pieces

    data_dir = Path(data_dir).resolve()
    root = Path(payload_dir(data_dir)).resolve()
    pieces = row_group_pieces([str(root / s) for s in read_manifest(root)["shards"]])
    if root != data_dir:   # an extension (data/clean of photos): the rows it kept, by position in each row group
        kept = read_table(data_dir, columns=["id"]).column("id")
        for piece in pieces:
            ids = open_parquet(piece["path"]).read_row_group(piece["row_group"], columns=["id"]).column("id")
            piece["take"] = np.flatnonzero(pc.is_in(ids, value_set=kept).to_numpy(zero_copy_only=False)).tolist()
        pieces = [p for p in pieces if p["take"]]
    return read_stream(pieces, read_image_pieces, {"batch_size": batch_size})


def read_image_pieces(batch, *, batch_size: int):
    """A batch of pieces -> (id, image) tables in whole batches of ``batch_size`` rows (the last one of
    the task excepted), ~``BLOCK_BYTES`` each."""
    import pyarrow as pa

    from trainwise.components.data.contract import rows_within
    from trainwise.components.data.ray_stream import BLOCK_BYTES, open_parquet

    paths, groups = batch.column("path").to_pylist(), batch.column("row_group").to_pylist()
    takes = batch.column("take").to_pylist() if "take" in batch.column_names else [None] * len(paths)
    if not paths:
        return
    per_block = rows_within(open_parquet(paths[0]), batch_rows=8192, batch_bytes=BLOCK_BYTES, columns=["id", "image"])

    def kept_rows():
        for path, k, take in zip(paths, groups, takes):
            t = open_parquet(path).read_row_group(k, columns=["id", "image"])
            yield t if take is None else t.take(pa.array(take, pa.int64()))

    yield from _equal_tables(kept_rows(), max(1, per_block // batch_size) * batch_size)


def _equal_tables(tables, size: int):
    """Tables of exactly ``size`` rows (the last one excepted), whatever sizes ``tables`` come in: every
    batch the model sees then has the same shape. Batches of many sizes made the CPU's kernels (oneDNN)
    cache a plan per shape: RSS grew with the rows (measured, EfficientNet-Lite0 in-process: 1,732 MB
    after 1,500 photos, 1,222 MB with equal batches)."""
    import pyarrow as pa

    pending: list[pa.Table] = []
    held = 0
    for t in tables:
        pending.append(t)
        held += t.num_rows
        while held >= size:
            joined = pa.concat_tables(pending).combine_chunks()
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def _tables(data_dir: str | Path, *, payload: str, batch_size: int):
    """The rows to embed, as Arrow tables of ``id`` and ``payload``, 4 batches each (so every replica
    gets work; one block per shard would feed one).

    Read on the driver through the contract rather than by Ray Data's read_parquet: its 1-CPU
    list/read tasks never start while the replicas hold every CPU (seen here: 2 replicas on 2 CPUs
    waited forever), and a replica is worth more than a reader. A batch at a time: pq.read_table of a
    whole shard of 224 px photos peaked at 2x the memory of these bounded batches. Photos travel as
    their files' bytes (decode=False) and are decoded by the embedder (in the replicas, in parallel).
    Texts: longest first, as SentenceTransformer.encode orders them (a batch is as wide as its
    longest text, so batches of mixed lengths pad every short text to a long one); rows come back
    keyed by id. Texts are small: all of them at once is what the object store held anyway."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from trainwise.components.data.contract import iter_batches

    step = 4 * batch_size
    if payload != "text":
        # one size of table, whatever sizes the join yields (see _equal_tables)
        batches = iter_batches(data_dir, batch_rows=step, columns=["id", payload], decode=False)
        yield from _equal_tables((pa.Table.from_batches([b]).select(["id", payload]) for b in batches), step)
        return
    parts = [pa.Table.from_batches([b]).select(["id", payload])
             for b in iter_batches(data_dir, batch_rows=step, columns=["id", payload])]
    table = pa.concat_tables(parts) if parts else pa.table({"id": pa.array([], pa.string()),
                                                            payload: pa.array([], pa.string())})
    lengths = pc.fill_null(pc.utf8_length(table.column(payload)), 0).to_numpy()
    table = table.take(pa.array(np.argsort(-lengths, kind="stable")))
    for k in range(0, table.num_rows, step):
        yield table.slice(k, step)


def embed_in_process(data_dir: str | Path, *, image_shape: tuple[int, int, int] | None, name: str, pretrained,
                     seed: int, root: str, batch_size: int, threads: int, use_gpu: bool,
                     log: Callable[..., None] = lambda *a: None, payload: str = "image", ids: list[str]) -> Embedded:
    """:func:`embed_images` without Ray: one model in this process on ``threads`` torch threads (what a
    plain ``no_grad`` loop does), for a dataset too small to repay Ray's start-up and a model per
    replica. The same embedder and batches, so the same vectors."""
    import pyarrow as pa

    model = _Embedder(name=name, pretrained=pretrained, seed=seed, root=str(root),
                      image_shape=tuple(image_shape) if image_shape else None, threads=threads, use_gpu=use_gpu,
                      payload=payload, batch_size=batch_size)
    out = Embedded(ids)
    t0, last = time.perf_counter(), 0.0
    for table in _tables(data_dir, payload=payload, batch_size=batch_size):
        for k in range(0, table.num_rows, batch_size):
            part = table.slice(k, batch_size)
            col = part.column(payload).combine_chunks()
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):   # stored pixels
                raw = col.flatten().to_numpy(zero_copy_only=False).reshape(part.num_rows, -1)
            else:   # files' bytes or texts, as Ray Data hands them to a replica
                raw = np.empty(part.num_rows, dtype=object)
                raw[:] = col.to_pylist()
            got = model({"id": part.column("id").to_pylist(), payload: raw})
            out.add(got["id"], got["embedding"])
        now = time.perf_counter() - t0
        if now - last > 15:  # progress on long runs
            last = now
            log("embedded %d rows (%.1f rows/s)", out.count, out.count / now)
    return out
