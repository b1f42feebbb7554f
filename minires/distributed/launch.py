"""Starting N processes: ``mpiexec -n N <command>``, with the cores shared out first.

Each process of a data-parallel run computes a whole training step on its
part of the batch, so N processes on C cores should each use C / N threads.
NumPy's BLAS (OpenBLAS, MKL) and OpenMP read their thread counts from the
environment ONCE, when NumPy is imported, and start that many worker threads,
which spin on the cores for a while after every call. Two processes that
each start a full-size pool fight over the cores and can run several times
slower than one process alone. So the limits go into the environment of the
launched processes, before any of them imports NumPy:
:func:`limit_threads_env` computes them, :func:`launch` applies them.

The ``minires train --nproc N`` command re-executes itself through
:func:`launch`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from .comm import INSTALL_HINT, DistributedError, is_available, launched_world_size

__all__ = ["THREAD_VARIABLES", "usable_cores", "limit_threads_env", "find_mpiexec", "launch"]

# Read at start-up by OpenBLAS, OpenMP, MKL, Apple's Accelerate, numexpr, and minires' kernel pool.
THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "MINIRES_NUM_THREADS",
)


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


def find_mpiexec() -> str | None:
    """The ``mpiexec`` to use: the one installed next to this Python (a virtualenv's), else the first on PATH.

    The one next to ``sys.executable`` comes first because it belongs to the
    MPI library that this environment's mpi4py was built with (``pip install
    mpich`` puts it there); another MPI's mpiexec would start N unrelated
    single-process worlds.
    """
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def launch(argv: Sequence[str], nproc: int, env: Mapping[str, str] | None = None) -> int:
    """Run ``argv`` as ``nproc`` MPI processes and wait; returns the exit status (0: all succeeded).

    ``argv`` is a full command, e.g. ``[sys.executable, "-m", "minires", "train", ...]``.
    The thread limits of :func:`limit_threads_env` are added to ``env``
    (default: this process's environment) except for variables already set
    there, so a user's explicit ``OMP_NUM_THREADS=...`` wins. ``nproc=1``
    runs the command directly, without MPI.

    Raises:
        DistributedError: ``nproc > 1`` and mpi4py or mpiexec is missing, or
            this process is itself one of an ``mpiexec`` run (launching again
            from every rank would start nproc * nproc processes).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("launch needs a command to run")
    limits = limit_threads_env(nproc)
    full_env = {**limits, **(os.environ if env is None else env)}
    if nproc == 1:
        return subprocess.call(argv, env=full_env)
    if launched_world_size() > 1:
        raise DistributedError("launch() was called inside an mpiexec run; call it from a single process only")
    mpiexec = find_mpiexec()
    if mpiexec is None or not is_available():
        missing = "mpiexec" if mpiexec is None else "mpi4py"
        raise DistributedError(f"--nproc {nproc} needs MPI, but {missing} is not installed: {INSTALL_HINT}")
    return subprocess.call([mpiexec, "-n", str(nproc), *argv], env=full_env)
