"""Starting N processes: ``mpiexec -n N <command>``, with the cores shared out first.

Each process of a data-parallel run computes a whole training step on its
part of the batch, so N processes on C cores should each use C / N threads,
set in their environment before they import NumPy (why:
:mod:`minires.process_threads`). :func:`launch` puts them there.

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

from ..process_threads import THREAD_VARIABLES, launched_world_size, limit_threads_env, usable_cores
from .comm import INSTALL_HINT, DistributedError, is_available

__all__ = ["THREAD_VARIABLES", "usable_cores", "limit_threads_env", "find_mpiexec", "launch"]

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
