"""The two ways rows reach a training worker (``LoopConfig.loader``), as per-epoch batch iterators.

``memory``: the driver reads the split once and puts the raw Arrow table in Ray's object store;
each worker decodes it once and shuffles per epoch with a seeded ``DistributedSampler``
(:class:`MemoryBatches`). ``ray_data``: a Ray Data stream per split, read from the Parquet shards
each epoch and never materialised, the train one split equally across workers, val unequally,
iterated with ``iter_torch_batches`` (:class:`RayDataBatches`; components/training/streaming.py
builds the streams). Either way decoding and augmentation run on the worker, and no worker opens
the driver's files.
"""

from __future__ import annotations


class MemoryBatches:
    """The memory loader: this rank's decoded split, reshuffled each epoch (seeded)."""

    def __init__(self, x, y, *, batch_size: int, rank: int, world: int, seed: int, shuffle: bool):
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        data = TensorDataset(x, y)
        if shuffle:
            self.sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
            self.loader = DataLoader(data, batch_size=batch_size, sampler=self.sampler)
        else:  # validation: a disjoint slice per rank, sums all-reduced: exact, no padding
            self.sampler = None
            self.loader = DataLoader(TensorDataset(x[rank::world], y[rank::world]), batch_size=batch_size)

    def epoch(self, epoch: int):
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return self.loader


class RayDataBatches:
    """The ray_data loader: ``iter_torch_batches`` of a Ray Data shard, decoded on the worker."""

    def __init__(self, it, decode_fn, *, batch_size: int, rank: int, world: int, seed: int, train: bool):
        self.it = it
        self.decode_fn, self.batch_size, self.seed, self.train = decode_fn, batch_size, seed, train
        self.rank, self.world = rank, world

    def epoch(self, epoch: int):
        kw = {"local_shuffle_buffer_size": 4 * self.batch_size, "local_shuffle_seed": self.seed + epoch} \
            if self.train else {}
        batches = self.it.iter_torch_batches(batch_size=self.batch_size, collate_fn=self.decode_fn, device="cpu",
                                             **kw)
        # validation is split across ranks too, unequally (streaming.StreamingDataConfig): each rank
        # scores all of its share, every row exactly once
        return batches
