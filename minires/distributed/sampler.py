"""Which examples each rank trains on: DistributedSampler, and the per-rank batch size.

An epoch visits the N examples of the dataset in a random order. With W
ranks every rank must draw the SAME order (the same seeded permutation), and
then take its own share of it, so that together they visit every example
once and no two ranks take the same one::

    order = permutation(N)           # seed + epoch: the same on every rank (and the
                                     # order of a one-process DataLoader with that seed)
    pad order to T = W * ceil(N / W) # repeat its first T - N entries
                                     # (or, with drop_last, cut it to W * floor(N / W))
    rank r takes order[r], order[r + W], order[r + 2W], ...   (order[r::W])

Every rank gets T / W indices: equal counts, so every rank runs the same
number of steps and their all-reduces pair up. Padding repeats at most W - 1
examples per epoch. ``set_epoch(e)`` before each epoch changes the order;
forgetting it gives every epoch the same one (PyTorch's semantics).

The batch: He et al. train CIFAR with mini-batch 128; on W ranks each rank's
loader takes 128 / W of it (:func:`per_rank_batch_size`), and the
gradient averaging of DistributedDataParallel makes the update that of the
whole 128.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ..data.loader import epoch_order
from .comm import get_rank, get_world_size

__all__ = ["DistributedSampler", "per_rank_batch_size"]


def _check_count(name: str, value: Any, smallest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
        raise ValueError(f"{name} must be an integer >= {smallest}, got {value!r}")
    return int(value)


class DistributedSampler:
    """The example indices of one rank, epoch after epoch (PyTorch's ``DistributedSampler``).

    Args:
        dataset_len: N, the number of examples (or anything with ``len()``).
        num_replicas: W, the number of ranks (default: the world size).
        rank: this rank, 0..W-1 (default: this process's rank).
        shuffle: a new seeded permutation every epoch (else 0..N-1 in order).
        seed: the same on every rank; with the epoch it fixes the order.
        drop_last: drop the tail so that N is cut to a multiple of W, instead
            of padding with repeated examples.

    ``iter(sampler)`` yields ``len(sampler)`` indices (Python ints);
    :meth:`indices` returns them as an array.
    """

    def __init__(self, dataset_len: Any, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        n = len(dataset_len) if hasattr(dataset_len, "__len__") else dataset_len
        self.dataset_len = _check_count("dataset_len", n, 1)
        self.num_replicas = _check_count("num_replicas", get_world_size() if num_replicas is None else num_replicas, 1)
        self.rank = _check_count("rank", get_rank() if rank is None else rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in 0..{self.num_replicas - 1} for num_replicas={self.num_replicas}, "
                             f"got {self.rank}")
        if drop_last and self.dataset_len < self.num_replicas:
            raise ValueError(f"drop_last with {self.dataset_len} examples on {self.num_replicas} ranks "
                             "leaves no example for some rank")
        self.shuffle = bool(shuffle)
        self.seed = _check_count("seed", seed, 0)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        share = self.dataset_len / self.num_replicas
        self.num_samples = math.floor(share) if self.drop_last else math.ceil(share)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next ``iter()`` on (call it on every rank, every epoch)."""
        self.epoch = _check_count("epoch", epoch, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, ``(num_samples,)`` int64."""
        if self.shuffle:
            order = epoch_order(self.dataset_len, self.seed, self.epoch)
        else:
            order = np.arange(self.dataset_len)
        if self.total_size > len(order):  # pad with the start of the order, repeated if need be
            order = np.resize(order, self.total_size)
        order = order[:self.total_size]
        return order[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedSampler(dataset_len={self.dataset_len}, num_replicas={self.num_replicas}, "
                f"rank={self.rank}, shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")


def per_rank_batch_size(global_batch_size: int = 128, world_size: int | None = None) -> int:
    """The batch each rank computes so that together they form ``global_batch_size``: 128 on 2 ranks is 64.

    Raises:
        ValueError: the global batch does not divide evenly (every rank must
            take the same number of examples, or the average is not the mean
            over the global batch).
    """
    batch = _check_count("global_batch_size", global_batch_size, 1)
    world = _check_count("world_size", get_world_size() if world_size is None else world_size, 1)
    if batch % world:
        lower, upper = batch - batch % world, batch - batch % world + world
        raise ValueError(
            f"global batch size {batch} is not divisible by the {world} processes; choose a multiple of "
            f"{world} (e.g. {lower or upper} or {upper})"
        )
    return batch // world
