"""Shard-aware sampling for :class:`~catalog.dataset.TileDataset`: map-style and streaming.

A cube shard holds ``K`` consecutive tile positions in one set of Zarr shard files, so reading the
samples of one shard together reads each file in one pass (one object after another on object
storage). Both classes group dataset indices by shard (``position // K``,
:meth:`TileDataset.shard_ids`, the catalog's ``shard_id``).

:class:`ShardAwareSampler` (map-style, for ``DataLoader(sampler=...)``): each epoch it shuffles
the shard order and the order inside every shard (seeded by ``seed`` and the epoch,
:meth:`~ShardAwareSampler.set_epoch`), concatenates them and gives each DDP rank one contiguous
block of that order, so a rank reads few shards and no index goes to two ranks.

* ``drop_last=False`` (default), like :class:`torch.utils.data.DistributedSampler`: when the
  length is not a multiple of ``world_size``, the order is padded with its first
  ``world_size - n % world_size`` indices so every rank gets ``ceil(n / world_size)`` (equal
  lengths keep DDP collectives in step); those few indices are seen twice that epoch. With one
  rank nothing is padded. ``equal_lengths=False`` turns the padding off: every index exactly
  once, rank lengths differ by at most one (for loops that handle uneven inputs, e.g.
  ``torch.distributed.algorithms.Join``).
* ``drop_last=True``: the last ``n % world_size`` indices of the epoch's order are dropped
  (different ones each epoch), every rank gets ``n // world_size``.

:class:`TileStream` (an ``IterableDataset`` for sequential reads, e.g. from object storage):
whole shards in shard order (or a per-epoch shuffled shard order), positions ascending inside a
shard, shard ``j`` going to consumer ``j % (world_size * num_workers)`` where consumer =
``rank * num_workers + worker_id`` (:func:`torch.utils.data.get_worker_info`). Every sample is
yielded exactly once per epoch across all ranks and workers; consumers may get different
numbers of samples (no padding). With ``batch_size`` it yields batches instead: each
consumer's samples in runs of ``batch_size`` (the last run of a consumer may be shorter), each
read with the dataset's ``__getitems__`` (one decode into the batch, no per-sample copies) and
collated as :func:`torch.utils.data.default_collate` would; give it to
``DataLoader(stream, batch_size=None, ...)``.

Rank and world size come from the arguments, else from ``torch.distributed`` when it is
initialised, else from the environment variables ``RANK`` and ``WORLD_SIZE``, else 0 and 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import IterableDataset, Sampler, default_collate, get_worker_info

from schemas.errors import InvalidInputError

__all__ = ["ShardAwareSampler", "ShardedDataset", "TileStream", "distributed_context"]


class ShardedDataset(Protocol):
    """What the samplers need: a length, shard ids per index, and (for streaming) items."""

    def __len__(self) -> int: ...

    def shard_ids(self) -> npt.NDArray[np.int64]:
        """Shard index of every dataset index."""
        ...

    def __getitem__(self, index: int) -> Any: ...


def distributed_context(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else torch.distributed, else ``RANK``/``WORLD_SIZE``.

    Raises:
        InvalidInputError: ``world_size < 1`` or ``rank`` outside ``[0, world_size)``.
    """
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
            if rank is None:
                rank = torch.distributed.get_rank()
        else:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidInputError(
            f"rank {rank} is not within world size {world_size}",
            where="rank/world_size",
            fix="give 0 <= rank < world_size",
        )
    return int(rank), int(world_size)


def _groups(
    shard_ids: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], list[npt.NDArray[np.int64]]]:
    """Distinct shard ids (ascending) and the dataset indices of each (ascending)."""
    order = np.argsort(shard_ids, kind="stable")
    shards, starts = np.unique(shard_ids[order], return_index=True)
    return shards, [g.astype(np.int64) for g in np.split(order, starts[1:])]


class ShardAwareSampler(Sampler[int]):
    """Dataset indices grouped by shard, shuffled per epoch and split across DDP ranks.

    Args:
        dataset: A :class:`~catalog.dataset.TileDataset` (anything with ``__len__`` and
            ``shard_ids()``).
        shuffle: Shuffle the shard order and the order within shards each epoch; ``False`` keeps
            shard order and dataset order inside shards.
        seed: Base seed; the epoch's generator is seeded with ``(seed, epoch)``, the same on
            every rank.
        rank: This process's rank (module docstring for the default).
        world_size: Number of ranks.
        drop_last: Drop the tail instead of padding (module docstring).
        equal_lengths: With ``drop_last=False``, pad so every rank has the same length.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        equal_lengths: bool = True,
    ) -> None:
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.equal_lengths = equal_lengths
        self.epoch = 0
        self._n = len(dataset)
        self._shards, self._groups = _groups(np.asarray(dataset.shard_ids(), dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration (call it before each epoch)."""
        self.epoch = int(epoch)

    def epoch_order(self) -> npt.NDArray[np.int64]:
        """Every dataset index once, in this epoch's order (before the rank split)."""
        if not self._groups:
            return np.zeros(0, dtype=np.int64)
        if not self.shuffle:
            return np.concatenate(self._groups)
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = [rng.permutation(self._groups[int(j)]) for j in rng.permutation(len(self._groups))]
        return np.concatenate(parts)

    def _bounds(self) -> tuple[int, int, int]:
        """``(length per rank, start, stop)`` of this rank in the (padded) epoch order."""
        n, w, r = self._n, self.world_size, self.rank
        if self.drop_last:
            per = n // w
            return per, r * per, (r + 1) * per
        if self.equal_lengths:
            per = -(-n // w)
            return per, r * per, (r + 1) * per
        base, extra = divmod(n, w)
        start = r * base + min(r, extra)
        stop = start + base + (1 if r < extra else 0)
        return stop - start, start, stop

    def __len__(self) -> int:
        return self._bounds()[0]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        _, start, stop = self._bounds()
        if stop > order.size and order.size:
            reps = -(-stop // order.size)
            order = np.tile(order, reps)
        return iter(int(i) for i in order[start:stop])


class TileStream(IterableDataset[Any]):
    """Stream a dataset's samples shard by shard, split over DDP ranks and DataLoader workers.

    Args:
        dataset: A :class:`~catalog.dataset.TileDataset` (``__getitem__`` and ``shard_ids()``).
        shuffle: Shuffle the shard order each epoch (samples inside a shard stay in position
            order, for sequential reads).
        seed: Seed of the shard shuffle (with the epoch).
        rank: This process's rank (module docstring for the default).
        world_size: Number of ranks.
        batch_size: Yield batches of this many samples (module docstring) instead of samples;
            use the stream with ``DataLoader(batch_size=None)``.

    Raises:
        InvalidInputError: A bad rank, world size or batch size.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.rank, self.world_size = distributed_context(rank, world_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        if batch_size is not None and int(batch_size) < 1:
            raise InvalidInputError(
                f"batch_size must be >= 1, got {batch_size}",
                where="batch_size",
                fix="give a positive batch size, or None for single samples",
            )
        self.batch_size = None if batch_size is None else int(batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the shard order of ``epoch`` next (before iterating; workers get a copy)."""
        self.epoch = int(epoch)

    def consumer_indices(self, consumer: int, n_consumers: int) -> list[int]:
        """Dataset indices that consumer ``consumer`` of ``n_consumers`` yields, in order."""
        _, groups = _groups(np.asarray(self.dataset.shard_ids(), dtype=np.int64))
        order = np.arange(len(groups))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(groups))
        positions = getattr(self.dataset, "positions", None)
        out: list[int] = []
        for j in order[consumer::n_consumers]:
            group = groups[int(j)]
            if positions is not None:
                group = group[np.argsort(np.asarray(positions)[group], kind="stable")]
            out.extend(int(i) for i in group)
        return out

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        consumer = self.rank * workers + worker
        indices = self.consumer_indices(consumer, self.world_size * workers)
        size = self.batch_size
        if size is None:
            for index in indices:
                yield self.dataset[index]
            return
        getitems = getattr(self.dataset, "__getitems__", None)
        for start in range(0, len(indices), size):
            run = indices[start : start + size]
            samples = getitems(run) if getitems is not None else [self.dataset[i] for i in run]
            yield default_collate(samples)
