"""GPU arrays between GPUs: NCCL's all-reduce and broadcast, set up over MPI.

MPI moves host memory, so a CuPy array would have to travel GPU -> host ->
MPI -> host -> GPU, and the host would wait for the GPU at the first copy.
NCCL (NVIDIA's collective library, reached through CuPy's ``cupy.cuda.nccl``)
reads and writes GPU memory directly (NVLink or PCIe) and runs as a kernel
on a CUDA stream. On the stream that computed the gradients, the all-reduce
starts after them and the optimiser's kernels start after it: the order is
kept by the GPU, with no host synchronisation.

Setting up is collective: rank 0 asks NCCL for a unique id (128 bytes), MPI
broadcasts it, and every rank builds its communicator from (world size, id,
rank). A :class:`~.comm.ProcessGroup` builds one the first time it reduces
an array on a GPU; without NCCL (a CuPy built without it) the group falls
back to the host copy through MPI.
"""

from __future__ import annotations

from typing import Any

from .. import backend

__all__ = ["nccl_module", "NcclChannel"]

# NumPy dtype name -> the name of NCCL's data type constant in cupy.cuda.nccl.
_DTYPES = {
    "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
    "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "uint32": "NCCL_UINT32",
    "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
}
# minires' ReduceOp value -> NCCL's operation constant. An average is a sum, then a division.
_OPS = {"sum": "NCCL_SUM", "avg": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


def nccl_module() -> Any:
    """CuPy's ``cuda.nccl`` module, or None where CuPy or its NCCL support is missing."""
    if not backend.cupy_available():
        return None
    cp = backend.device("cuda").xp
    try:
        nccl = cp.cuda.nccl
    except AttributeError:
        try:
            from cupy.cuda import nccl
        except ImportError:
            return None
    return nccl if getattr(nccl, "available", True) else None


class NcclChannel:
    """One NCCL communicator for one process group on one GPU.

    Args:
        nccl: CuPy's ``cuda.nccl`` module.
        mpi_comm: the group's MPI communicator (only to broadcast the unique id).
        rank, size: this process's rank and the group's size.
        device_index: the GPU this rank uses.
    """

    def __init__(self, nccl: Any, mpi_comm: Any, rank: int, size: int, device_index: int) -> None:
        self.nccl = nccl
        self.size = size
        unique_id = nccl.get_unique_id() if rank == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)
        cp = backend.device(f"cuda:{device_index}").xp
        with cp.cuda.Device(device_index):
            self.comm = nccl.NcclCommunicator(size, unique_id, rank)
        self._cp = cp

    def _dtype(self, array: Any) -> int:
        name = _DTYPES.get(array.dtype.name)
        if name is None:
            raise TypeError(f"NCCL cannot reduce arrays of dtype {array.dtype}")
        return getattr(self.nccl, name)

    def all_reduce(self, array: Any, op: str) -> None:
        """``array`` (contiguous, on this GPU) becomes the sum / mean / max / min over the ranks, in place."""
        stream = self._cp.cuda.get_current_stream().ptr
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._dtype(array),
                            getattr(self.nccl, _OPS[op]), stream)
        if op == "avg":
            array /= self.size  # queued on the same stream, after the sum

    def broadcast(self, array: Any, src: int) -> None:
        """``array`` on every rank becomes rank ``src``'s, in place."""
        stream = self._cp.cuda.get_current_stream().ptr
        self.comm.bcast(array.data.ptr, array.size, self._dtype(array), src, stream)
