"""The ``ray_data`` loader's datasets: the split's Parquet shards streamed to the training workers.

Nothing is materialised: each epoch, Ray Data reads the shards again, one Parquet row group
per task, in blocks of ~``BLOCK_BYTES``, and the workers pull batches from the stream
(``iter_torch_batches``), so neither the driver nor the object store ever holds the split; memory
is bounded by Ray Data's object-store budget (backpressure: reads wait while the consumers lag),
not by the data.

CPUs. Ray Train reserves its workers' CPUs, and a task that asks for a CPU waits until one is
free: with two one-CPU workers on a two-CPU Ray none ever is. The read and decode tasks here ask
for **no CPU** (``num_cpus=0``): they always schedule and share the cores with the workers, which
wait for their batches anyway. How many run at once is capped (``TaskPoolStrategy``: one per CPU
of the node that reads, or of the cluster for URLs), and the memory they hold by the object-store
budget.

Why not ``ray.data.read_parquet``: in Ray 2.60 (Parquet datasource V2, the default) it plans a
``ListFiles`` task before the reads, always at 1 CPU (its remote args are fixed; ``num_cpus`` and
``ray_remote_args`` reach only the read tasks). On a two-CPU Ray with two one-CPU training
workers that task never started and the fit hung before its first batch (seen here, 10 min,
Ray Data's log: ``ListFiles - Tasks: 1 ... 1.0 CPU``); that hang is why this loader used to
materialise the split up front. So the pieces (file, row group) are listed here, on the driver,
from the Parquet footers, and a zero-CPU ``map_batches`` reads them. Local files are read on the
driver's node (other nodes may not see them; a ``ray.io/node-id`` label selector), URLs wherever
tasks run.

An extension dataset (data/audit -> data/split -> data/clean -> data/ingest for photos) holds no
payload: the payload row groups are read from the end of the chain (``payload_dir``) and each is cut
to the rows the chain kept, with their label, by ``id``; photos stored as their files' bytes are then
decoded in the read task (the one decoder, at the manifest's ``image_shape``) (a small (id, label) table per split travels to the tasks
through the object store).

The pieces and the zero-CPU read tasks are ``components/data/ray_stream.py``; the embed stage's Ray
path streams the photos to its replicas through them too (``components/embedding/batch.py``).

Splitting across ranks (:class:`StreamingDataConfig`): the train stream is split equally (DDP
ranks step in lockstep); the validation stream is split too, unequally, so every row is scored
exactly once and read once per epoch (not once per rank).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.train

from trainwise.components.data.ray_stream import BLOCK_BYTES, open_parquet, read_stream, row_group_pieces

SPLITS = ("train", "val")
def read_pieces(batch: pa.Table, *, columns: list[str], kind: str, rows=None, split: str | None = None,
                shape: tuple[int, int, int] | None = None):
    """A batch of pieces -> tables of ``label`` and ``kind``, about ``BLOCK_BYTES`` each (a
    generator: Ray Data makes each a block as it comes). ``rows``: (id, label) of the rows to keep
    (an extension); else ``split``: keep the rows of that split. ``shape``: the payload is encoded
    image files, decoded here (in the read task, after the rows are chosen) to (h, w, c) pixels."""
    from trainwise.components.data.contract import decode_images_in, rows_within

    if isinstance(rows, ray.ObjectRef):  # Ray Data passes fn_kwargs as they are: fetch it (zero-copy)
        rows = ray.get(rows)
    for path, k in zip(batch.column("path").to_pylist(), batch.column("row_group").to_pylist()):
        f = open_parquet(path)
        size = rows_within(f, batch_rows=8192, batch_bytes=BLOCK_BYTES)
        if shape is not None:  # blocks of about BLOCK_BYTES of pixels, not of the files' bytes
            size = max(1, min(size, BLOCK_BYTES // (shape[0] * shape[1] * shape[2])))
        for b in f.iter_batches(batch_size=size, row_groups=[k], columns=columns):
            t = pa.Table.from_batches([b])
            if rows is not None:
                t = join_rows(t, rows)
            else:
                t = t.filter(pc.equal(t.column("split"), split)).select(["label", kind])
            if t.num_rows:
                yield decode_images_in(t, shape, path) if shape is not None and kind == "image" else t


def stream_datasets(data_dir: str, kind: str) -> dict:
    """{"train": Dataset, "val": Dataset} of ``label`` and the ``kind`` payload column, lazy (not executed)."""
    from trainwise.components.data.contract import encoded_image_shape, payload_dir, read_manifest, read_table

    base = data_dir
    local = "://" not in base
    root = str(payload_dir(base)) if local else base
    shards = [f"{root.rstrip('/')}/{s}" for s in read_manifest(root)["shards"]]
    if local:
        shards = [os.path.abspath(p) for p in shards]
    pieces = row_group_pieces(shards)
    shape = encoded_image_shape(base) if local and kind == "image" else None

    def stream(**kw):
        return read_stream(pieces, read_pieces, {"kind": kind, "shape": shape, **kw}, local=local)

    if root == base:  # the payload is in this dataset: rows of one split by its split column
        return {s: stream(columns=["label", kind, "split"], split=s) for s in SPLITS}
    # data/audit extends data/split extends data/clean: payload from clean, rows from the chain
    rows = read_table(base, columns=["id", "label", "split"])  # no payload read: a few bytes a row
    return {s: stream(columns=["id", kind],
                      rows=ray.put(rows.filter(pc.equal(rows.column("split"), s)).select(["id", "label"])))
            for s in SPLITS}


def join_rows(batch: pa.Table, rows: pa.Table) -> pa.Table:
    """A batch of payloads (id, payload) -> the batch's rows that ``rows`` (id, label) holds, in
    the batch's order, as (label, payload). Order-preserving (not a hash join, whose output order
    may vary), so the same data gives the same batches."""
    at = pc.index_in(batch.column("id"), value_set=rows.column("id"))
    keep = pc.is_valid(at)
    kept = batch.filter(keep)
    label = rows.column("label").take(at.filter(keep))
    return pa.table({"label": label, **{c: kept.column(c) for c in kept.column_names if c != "id"}})


class StreamingDataConfig(ray.train.DataConfig):
    """``train`` split equally across ranks (Ray's default for a split dataset); ``val`` split
    with ``equal=False``: every row to exactly one rank, none dropped, so the loop's summed
    validation counts are exact and the stream is read once per epoch."""

    def __init__(self):
        # both "split": Train then creates them at a barrier of all ranks and ends their
        # coordinator actors with the run
        super().__init__(datasets_to_split=["train", "val"])

    def configure(self, datasets: dict, world_size: int, worker_handles, worker_node_ids, **kwargs):
        if "val" not in datasets:
            return super().configure(datasets, world_size, worker_handles, worker_node_ids, **kwargs)
        ds = datasets["val"].copy(datasets["val"])
        if ds.name is None:
            ds.set_name("val")
        ds.context.execution_options = self._resolve_execution_options("val")
        return [{"val": it} for it in ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)]
