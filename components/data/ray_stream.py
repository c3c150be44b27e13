"""Parquet row groups read as a Ray Data stream by zero-CPU tasks: what the ``ray_data`` training
loader (components/training/streaming.py, whose docstring says why: Ray 2.60's read_parquet plans a
1-CPU task that never starts while training workers hold every CPU) and the embed stage's Ray path
(components/embedding/batch.py) read their inputs with. ray is imported by the callers' processes
only: nothing on the data floor that clean or split import pulls it in."""

from __future__ import annotations

import pyarrow.parquet as pq

# Blocks of about this size: Ray Data budgets the object store in blocks, and with 16 MiB row-group
# blocks a 100 MB store overran its budget (89 MiB held by the read, 376 MB spilled in one epoch).
BLOCK_BYTES = 4 * 2**20


def read_concurrency(node_id: str | None = None) -> int:
    """Read tasks at once per stream: one per CPU of the node they are pinned to (``node_id``), else
    of the cluster."""
    import ray

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


def read_stream(pieces: list[dict], fn, fn_kwargs: dict, *, local: bool = True) -> "ray.data.Dataset":
    """A lazy dataset of what ``fn`` (a generator of tables) yields for each piece: zero-CPU read tasks,
    at most one per CPU of the node that reads at once, blocks of about ``BLOCK_BYTES``. ``local``: the pieces are files on this (the driver's) node, so the tasks run here."""
    import ray
    import ray.data
    from ray.util.placement_group import NODE_ID_LABEL_KEY

    # Ray's node-id label: Ray 2.60 deprecates scheduling_strategy through (ray_)remote_args
    node = ray.get_runtime_context().get_node_id() if local else None
    place = {"label_selector": {NODE_ID_LABEL_KEY: node}} if local else {}
    ds = ray.data.from_items(pieces, override_num_blocks=max(1, len(pieces))).map_batches(
        fn, fn_kwargs=fn_kwargs, batch_size=1, batch_format="pyarrow", num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=read_concurrency(node)), **place)
    ds.context.target_max_block_size = BLOCK_BYTES  # this dataset's (a copy of the driver's context)
    return ds
