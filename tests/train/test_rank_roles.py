"""What a rank of a data-parallel run does differently (minires.train.distributed), checked without MPI.

A DataParallel for rank r of W is built by hand here; the two-process runs
themselves are in test_data_parallel.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from minires import backend
from minires.train import ConfigError
from minires.train.distributed import DataParallel
from minires.train.state import EpochProgress


def rank(r: int, world: int) -> DataParallel:
    parallel = DataParallel.__new__(DataParallel)  # no process group: only rank and world size matter here
    parallel.rank, parallel.world_size = r, world
    return parallel


@pytest.fixture
def four_gpus(monkeypatch):
    """backend.device accepts cuda:0..3, and cuda_device_count() says 4 (no CuPy needed)."""
    def fake_device(spec):
        if isinstance(spec, backend.Device):
            return spec
        text = "cuda:0" if spec in ("cuda", "auto") else spec
        kind, _, index = text.partition(":")
        return backend.Device(kind, int(index)) if kind == "cuda" else backend.Device(kind)

    monkeypatch.setattr(backend, "device", fake_device)
    monkeypatch.setattr(backend, "cuda_device_count", lambda: 4)


@pytest.mark.parametrize("spec", ["cuda", "auto"])
def test_each_rank_takes_its_own_gpu_unless_one_is_named(four_gpus, spec):
    assert [rank(r, 6).device(spec) for r in range(6)] == [backend.Device("cuda", r % 4) for r in range(6)]
    assert rank(1, 2).device("cuda:3") == backend.Device("cuda", 3)  # explicit: obeyed
    assert rank(0, 1).device("cuda") == backend.Device("cuda", 0)
    assert rank(1, 2).device("cpu") == backend.cpu


def test_the_global_batch_must_split_evenly():
    assert rank(0, 2).per_rank_batch(128) == 64
    with pytest.raises(ConfigError, match="128"):
        rank(0, 3).per_rank_batch(128)


def test_evaluation_shards_cover_the_set_once():
    images, labels = np.arange(11 * 2).reshape(11, 2), np.arange(11)
    shards = [rank(r, 3).shard(images, labels) for r in range(3)]
    assert sorted(np.concatenate([s[1] for s in shards]).tolist()) == list(range(11))
    for shard_images, shard_labels in shards:
        np.testing.assert_array_equal(shard_images[:, 0], 2 * shard_labels)
    with pytest.raises(ConfigError, match="2 evaluation images"):
        rank(0, 3).shard(images[:2], labels[:2])


def test_checkpointed_loader_state_is_global_and_resumes_on_another_world_size():
    state = {"batch_size": 64, "epoch": 3, "batch": 17, "seed": 0}
    saved = rank(0, 2).global_loader_state(state)
    assert saved == {**state, "batch_size": 128}
    assert rank(2, 4).local_loader_state(saved) == {**state, "batch_size": 32}


def test_saved_epoch_sums_enter_the_total_once():
    saved = EpochProgress(batch=5, loss_sum=12.5, correct=300, seen=640, train_seconds=9.0)
    assert rank(0, 2).local_progress(saved) is saved
    other = rank(1, 2).local_progress(saved)
    assert (other.batch, other.loss_sum, other.correct, other.seen, other.train_seconds) == (5, 0.0, 0, 0, 9.0)
    assert rank(1, 2).local_progress(None) is None
