"""DistributedSampler and per_rank_batch_size: plain arithmetic, no MPI (every rank is instantiated here)."""

from __future__ import annotations

import numpy as np
import pytest

from minires.distributed import DistributedSampler, per_rank_batch_size


def all_ranks(n: int, world: int, epoch: int = 0, **kwargs) -> list:
    samplers = [DistributedSampler(n, num_replicas=world, rank=r, **kwargs) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return [s.indices() for s in samplers]


@pytest.mark.parametrize("n, world", [(100, 2), (96, 4), (7, 7), (10, 1)])
def test_every_index_exactly_once_per_epoch(n, world):
    for epoch in range(3):
        parts = all_ranks(n, world, epoch)
        assert len({len(p) for p in parts}) == 1
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize("n, world", [(101, 2), (10, 4), (3, 5)])
def test_padding_gives_equal_counts_and_covers_everything(n, world):
    parts = all_ranks(n, world, epoch=1)
    per_rank = -(-n // world)
    assert [len(p) for p in parts] == [per_rank] * world
    everything = np.concatenate(parts)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - n == per_rank * world - n < world  # only the padding repeats
    assert len(DistributedSampler(n, world, 0)) == per_rank


def test_drop_last_cuts_to_a_multiple_without_repeats():
    parts = all_ranks(103, 4, drop_last=True)
    assert [len(p) for p in parts] == [25] * 4
    everything = np.concatenate(parts)
    assert len(set(everything.tolist())) == 100 and everything.max() < 103


def test_epochs_differ_and_the_same_seed_repeats():
    a0, a1 = all_ranks(50, 2, epoch=0), all_ranks(50, 2, epoch=1)
    assert not np.array_equal(a0[0], a1[0])
    assert all(np.array_equal(x, y) for x, y in zip(a0, all_ranks(50, 2, epoch=0)))
    assert not np.array_equal(a0[0], all_ranks(50, 2, epoch=0, seed=1)[0])


def test_no_shuffle_is_strided_order_and_iteration_gives_ints():
    sampler = DistributedSampler(10, num_replicas=3, rank=1, shuffle=False)
    assert list(sampler) == [1, 4, 7, 0]  # padded with the start of the order
    assert all(type(i) is int for i in sampler)


def test_defaults_come_from_the_world_and_len_is_accepted():
    sampler = DistributedSampler(list(range(12)))  # a process without mpiexec: rank 0 of 1
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 12)
    assert sorted(sampler) == list(range(12))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset_len=10, num_replicas=2, rank=2), "rank must be in 0..1"),
    (dict(dataset_len=0, num_replicas=2, rank=0), "dataset_len"),
    (dict(dataset_len=10, num_replicas=0, rank=0), "num_replicas"),
    (dict(dataset_len=3, num_replicas=4, rank=0, drop_last=True), "leaves no example"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistributedSampler(**kwargs)


def test_per_rank_batch_size():
    assert per_rank_batch_size() == 128  # a world of one
    assert per_rank_batch_size(128, 2) == 64
    assert per_rank_batch_size(96, 3) == 32


def test_global_batch_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"global batch size 127 is not divisible by the 2 processes.*126 or 128"):
        per_rank_batch_size(127, 2)
    with pytest.raises(ValueError, match="global_batch_size"):
        per_rank_batch_size(0, 2)
