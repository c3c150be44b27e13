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

The embed stage's Ray path streams the photos to its replicas through :func:`read_stream` too
(``components/embedding/batch.py``: ``image_stream``).

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

SPLITS = ("train", "val")
# Blocks of about this size: Ray Data budgets the object store in blocks, and with 16 MiB row-group
# blocks a 100 MB store overran its budget (89 MiB held by the read, 376 MB spilled in one epoch).
BLOCK_BYTES = 4 * 2**20


def read_concurrency(node_id: str | None = None) -> int:
    """Read tasks at once per stream: one per CPU of the node they are pinned to (``node_id``), else
    of the cluster (see the module docstring)."""
    if node_id is not None:
        for node in ray.nodes():
            if node["NodeID"] == node_id and node["Alive"]:
                return max(1, int(node["Resources"].get("CPU", 1)))
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def open_parquet(path: str) -> pq.ParquetFile:
    if "://" in path:
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        return pq.ParquetFile(fs.open_input_file(inner))
    return pq.ParquetFile(path)


def row_group_pieces(paths: list[str]) -> list[dict]:
    """One item per (shard, row group): the unit a read task reads."""
    return [{"path": p, "row_group": k} for p in paths for k in range(open_parquet(p).metadata.num_row_groups)]


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


def read_stream(pieces: list[dict], fn, fn_kwargs: dict, *, local: bool = True) -> "ray.data.Dataset":
    """A lazy dataset of what ``fn`` (a generator of tables) yields for each piece: zero-CPU read tasks,
    at most one per CPU of the node that reads at once, blocks of about ``BLOCK_BYTES`` (see the module
    docstring). ``local``: the pieces are files on this (the driver's) node, so the tasks run here."""
    from ray.util.placement_group import NODE_ID_LABEL_KEY

    # Ray's node-id label: Ray 2.60 deprecates scheduling_strategy through (ray_)remote_args
    node = ray.get_runtime_context().get_node_id() if local else None
    place = {"label_selector": {NODE_ID_LABEL_KEY: node}} if local else {}
    ds = ray.data.from_items(pieces, override_num_blocks=max(1, len(pieces))).map_batches(
        fn, fn_kwargs=fn_kwargs, batch_size=1, batch_format="pyarrow", num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=read_concurrency(node)), **place)
    ds.context.target_max_block_size = BLOCK_BYTES  # this dataset's (a copy of the driver's context)
    return ds


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
