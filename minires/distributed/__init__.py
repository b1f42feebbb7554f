"""Data-parallel training over MPI: the same model on W processes, each on 1/W of the batch.

He et al. trained the CIFAR ResNets with mini-batch 128 on two GPUs. Here
the workers are CPU processes started by ``mpiexec -n W``; separate
processes, unlike threads, each have their own Python interpreter and
therefore their own GIL. One step on every rank::

    x_r, y_r = my part of the global batch        (DistributedSampler)
    loss_r = cross_entropy(model(x_r), y_r)       (model = DistributedDataParallel(net))
    loss_r.backward()                             (gradients averaged over the ranks on the way)
    optimizer.step()                              (identical on every rank)

The files, one idea each:

* :mod:`.comm`  -- ranks, world size, and the collectives (all_reduce, broadcast, barrier)
* :mod:`.nccl`  -- the same collectives on GPU arrays, GPU to GPU through NCCL (used by :mod:`.comm`)
* :mod:`.launch` -- ``mpiexec -n N``, with the CPU threads shared out among the processes
  (``minires.distributed.launch.launch(argv, nproc)``; the module keeps the name)
* :mod:`.sampler` -- which examples each rank takes; the per-rank batch size
* :mod:`.bucket` -- gradients packed into flat arrays for fewer, larger all-reduces
* :mod:`.ddp` -- DistributedDataParallel: broadcast at the start, averaged gradients after backward
* :mod:`.sync_batch_norm` -- batch norm with the statistics of the global batch

Run alone (no ``mpiexec``), a process is rank 0 of a world of 1: everything
here works, communicates nothing, and needs no MPI. More than one process
needs ``pip install mpi4py mpich`` (or ``pip install -e ".[mpi]"``).
"""

from .comm import (
    DistributedError,
    ProcessGroup,
    ReduceOp,
    Work,
    all_reduce,
    barrier,
    broadcast,
    default_group,
    destroy_process_group,
    get_rank,
    get_world_size,
    init_process_group,
    is_available,
    is_initialized,
    launched_world_size,
    mpi_status,
    new_group,
)
from .ddp import DistributedDataParallel
from .launch import limit_threads_env
from .sampler import DistributedSampler, per_rank_batch_size
from .sync_batch_norm import SyncBatchNorm

__all__ = [
    "DistributedError", "ProcessGroup", "ReduceOp", "Work",
    "init_process_group", "is_initialized", "is_available", "destroy_process_group", "launched_world_size",
    "default_group", "get_rank", "get_world_size", "new_group", "all_reduce", "broadcast", "barrier", "mpi_status",
    "DistributedDataParallel", "DistributedSampler", "per_rank_batch_size", "SyncBatchNorm",
    "limit_threads_env",
]
