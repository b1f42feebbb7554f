"""GPU collectives through NCCL (minires/distributed/nccl.py), with the CuPy stand-in and a NumPy NCCL.

Two ranks run as two threads of this process, each with its own
ProcessGroup. Their "MPI" only broadcasts NCCL's unique id; their NCCL
(``FakeNccl``) reads and writes the memory behind the pointers it is handed,
with the element count and the data type code it is told, so a wrong
pointer, count or dtype gives wrong numbers. What is checked: a GPU array
goes GPU to GPU (no host read, no host copy), sum / average / max and
broadcast are right on both ranks, and the call is queued on the current
stream.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest
from fake_cupy import install
from fake_cupy import ndarray as device_array

from minires import backend
from minires.distributed.comm import ProcessGroup
from minires.distributed.nccl import nccl_module

WORLD = 2
# ncclDataType_t values (nccl.h) and the ctypes element each stands for.
NCCL_TYPES = {7: ctypes.c_float, 8: ctypes.c_double, 4: ctypes.c_int64, 2: ctypes.c_int32}


class FakeNccl:
    """``cupy.cuda.nccl`` for ranks that are threads: collectives meet at a barrier."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64, NCCL_INT32 = 7, 8, 4, 2
    NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
    NCCL_FLOAT16, NCCL_INT8, NCCL_UINT8, NCCL_UINT32, NCCL_UINT64 = 6, 0, 1, 3, 5

    def __init__(self) -> None:
        self.barrier = threading.Barrier(WORLD)
        self.slots: list = [None] * WORLD
        self.streams: list = []

    def get_unique_id(self) -> tuple:
        return tuple(range(128))

    def NcclCommunicator(self, size, unique_id, rank):  # noqa: N802 (CuPy's name)
        assert size == WORLD and unique_id == tuple(range(128))
        return _FakeCommunicator(self, rank)


def _view(ptr: int, count: int, dtype_code: int) -> np.ndarray:
    """The ``count`` elements of type ``dtype_code`` at address ``ptr``, as a NumPy array (no copy)."""
    return np.ctypeslib.as_array((NCCL_TYPES[dtype_code] * count).from_address(ptr))


class _FakeCommunicator:
    def __init__(self, nccl: FakeNccl, rank: int) -> None:
        self.nccl, self.rank = nccl, rank

    def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: N802
        self.nccl.streams.append(stream)
        self.nccl.slots[self.rank] = _view(send, count, dtype).copy()
        self.nccl.barrier.wait()
        combine = {FakeNccl.NCCL_SUM: np.sum, FakeNccl.NCCL_MAX: np.max, FakeNccl.NCCL_MIN: np.min}[op]
        result = combine(np.stack(self.nccl.slots), axis=0)
        self.nccl.barrier.wait()
        _view(recv, count, dtype)[...] = result

    def bcast(self, buff, count, dtype, root, stream):
        if self.rank == root:
            self.nccl.slots[root] = _view(buff, count, dtype).copy()
        self.nccl.barrier.wait()
        _view(buff, count, dtype)[...] = self.nccl.slots[root]
        self.nccl.barrier.wait()


class ThreadMpi:
    """The part of an MPI communicator NCCL's set-up uses: ``bcast`` of a Python object."""

    box: dict = {}
    barrier = threading.Barrier(WORLD)

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def bcast(self, value, root=0):
        if self.rank == root:
            ThreadMpi.box["value"] = value
        ThreadMpi.barrier.wait()
        return ThreadMpi.box["value"]


@pytest.fixture
def fake(monkeypatch):
    cupy = install(monkeypatch)
    nccl = FakeNccl()
    monkeypatch.setattr(cupy.cuda, "nccl", nccl)
    return cupy, nccl


def on_two_ranks(work):
    """Run ``work(group, rank)`` in two threads, each rank with its own group; return the results by rank."""
    results, errors = [None] * WORLD, []

    def run(rank):
        try:
            results[rank] = work(ProcessGroup(ThreadMpi(rank), rank, WORLD), rank)
        except BaseException as exc:  # shown by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return results


def rank_array(rank: int, dtype) -> np.ndarray:
    return (np.arange(12, dtype=dtype).reshape(3, 4) + 100 * rank) * (1 if rank == 0 else -1)


# An average needs floating point (an integer one is refused: tests/distributed).
CASES = [(dtype, op) for dtype in (np.float32, np.float64, np.int64) for op in ("sum", "avg", "max", "min")
         if op != "avg" or np.dtype(dtype).kind == "f"]


@pytest.mark.parametrize("dtype, op", CASES)
def test_all_reduce_of_gpu_arrays_goes_through_nccl(fake, dtype, op):
    cupy, nccl = fake
    transfers = backend._transfer_count[0]

    def work(group, rank):
        a = device_array(rank_array(rank, dtype))
        group.all_reduce(a, op)
        return a

    results = on_two_ranks(work)
    stacked = np.stack([rank_array(r, dtype) for r in range(WORLD)])
    expected = {"sum": stacked.sum(0), "avg": stacked.mean(0), "max": stacked.max(0), "min": stacked.min(0)}[op]
    for a in results:
        np.testing.assert_array_equal(a._a, expected.astype(dtype))
    assert cupy.host_reads == 0 and backend._transfer_count[0] == transfers  # GPU to GPU
    assert nccl.streams == [cupy.cuda.get_current_stream().ptr] * WORLD


def test_broadcast_of_gpu_arrays_goes_through_nccl(fake):
    cupy, _ = fake

    def work(group, rank):
        a = device_array(rank_array(rank, np.float32))
        group.broadcast(a, src=1)
        return a

    for a in on_two_ranks(work):
        np.testing.assert_array_equal(a._a, rank_array(1, np.float32))
    assert cupy.host_reads == 0


def test_one_channel_per_group_and_gpu_built_once(fake):
    def work(group, rank):
        for _ in range(3):
            group.all_reduce(device_array(rank_array(rank, np.float32)))
        return group._nccl

    for channels in on_two_ranks(work):
        assert list(channels) == [0] and channels[0] is not None


def test_host_arrays_and_a_cupy_without_nccl_do_not_use_it(fake, monkeypatch):
    cupy, _ = fake
    group = ProcessGroup(ThreadMpi(0), 0, WORLD)
    assert group._gpu_channel(np.zeros(3, np.float32)) is None  # host memory: MPI
    monkeypatch.setattr(cupy.cuda, "nccl", None)
    assert nccl_module() is None
    assert group._gpu_channel(device_array(np.zeros(3, np.float32))) is None  # falls back to a host copy


def test_an_unsupported_dtype_is_refused_by_name(fake):
    def work(group, rank):
        with pytest.raises(TypeError, match="NCCL cannot reduce arrays of dtype bool"):
            group.all_reduce(device_array(np.zeros(3, bool)), "max")
        return True

    assert on_two_ranks(work) == [True, True]
