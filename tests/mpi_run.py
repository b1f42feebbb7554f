"""Running a command as ``mpiexec -n N`` from a test: a clean environment, a timeout that kills every rank.

Used by tests/distributed (collectives, DDP, SyncBatchNorm) and tests/train
(``minires train`` as a data-parallel run). ``needs_mpi`` skips, saying what
to install, only when mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from minires.distributed import is_available
from minires.distributed.launch import THREAD_VARIABLES, find_mpiexec

REPO = Path(__file__).resolve().parent.parent
MPIEXEC = find_mpiexec()
TIMEOUT_SECONDS = 180

needs_mpi = pytest.mark.skipif(
    not is_available() or MPIEXEC is None,
    reason="needs mpi4py and an mpiexec: pip install mpi4py mpich (or pip install -e '.[mpi]')",
)


def environment() -> dict:
    """This environment, one BLAS/kernel thread per rank, minires importable, not itself under mpiexec."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_", "HYDRA_"))}
    env.update({name: "1" for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")]))
    return env


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (started with ``start_new_session=True``); past ``timeout``, kill its group and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and its ranks: the session this test started
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, proc.args))} did not finish in {timeout} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start(nproc: int, command: list) -> subprocess.Popen:
    """``mpiexec -n nproc <command>`` started in its own session (so that all of it can be killed)."""
    return subprocess.Popen([MPIEXEC, "-n", str(nproc), *map(str, command)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment(), cwd=REPO,
                            start_new_session=True)


def run(nproc: int, command: list, timeout: float = TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
    """``mpiexec -n nproc <command>`` to its end; the test fails if it takes longer than ``timeout``."""
    return finish(start(nproc, command), timeout)
