"""Threads per process: how many BLAS and kernel threads each of N processes may start.

NumPy's BLAS (OpenBLAS, MKL) and OpenMP read their thread counts from the
environment ONCE, when NumPy is imported, and start that many worker threads,
which spin on the cores for a while after every call. N processes that each
start a pool as large as the machine fight over the cores and can run several
times slower than one process alone. So each of N processes on C cores gets
C / N threads, and the limit must be in its environment before NumPy loads:

* ``minires train --nproc N`` puts it in the environment of the processes
  it starts (:func:`minires.distributed.launch.launch`);
* a process started by ``mpiexec -n N`` directly sets it for itself when
  ``minires`` is imported (:func:`limit_threads_if_launched`, called first
  thing by ``minires/__init__.py``, before anything imports NumPy).

A variable the user set explicitly (``OMP_NUM_THREADS=4 mpiexec ...``) is kept.
This module imports nothing but the standard library, for that reason.
"""

from __future__ import annotations

import os

__all__ = ["THREAD_VARIABLES", "launched_world_size", "usable_cores", "limit_threads_env",
           "limit_threads_if_launched"]

# Read at start-up by OpenBLAS, OpenMP, MKL, Apple's Accelerate, numexpr, and minires' kernel pool.
THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "MINIRES_NUM_THREADS",
)

# Where MPICH (Hydra), Open MPI and MVAPICH tell each process how many were started.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when not run under ``mpiexec``)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def limit_threads_env(nproc: int, cores: int | None = None) -> dict[str, str]:
    """The environment variables that give each of ``nproc`` processes ``cores // nproc`` threads (at least 1).

    >>> limit_threads_env(2, cores=8)["OPENBLAS_NUM_THREADS"]
    '4'
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    threads = max(1, (cores or usable_cores()) // nproc)
    return {name: str(threads) for name in THREAD_VARIABLES}


def limit_threads_if_launched() -> None:
    """Under ``mpiexec -n N`` (N > 1): set this process's thread limits, except those already set."""
    world = launched_world_size()
    if world > 1:
        for name, value in limit_threads_env(world).items():
            os.environ.setdefault(name, value)
