"""``minires train`` on several processes: ``--nproc N`` starts them, and each rank exits cleanly or takes all down.

Two ways to start a data-parallel run, the same run either way::

    mpiexec -n 2 minires train ...      # the MPI launcher starts 2 ranks
    minires train --nproc 2 ...         # minires starts itself under that mpiexec

:func:`launch_nproc` is the second: it checks the arguments first (a usage
error must not become N copies of it), then re-executes the same command
line through :func:`minires.distributed.launch.launch`, which gives each
rank ``cores / N`` BLAS and kernel threads.

:func:`run_rank` wraps each rank's work. Only rank 0 prints; ranks read the
same inputs, so an expected error (bad flag, damaged checkpoint, diverged
loss) is printed once, by rank 0. A Ctrl-C that every rank agreed on
(:class:`~minires.train.interrupt.StoppedTogether`) ends each rank normally
with status 130. A rank that fails in any other way, expected or not, ends
the whole MPI run (``MPI_Abort``): the others would otherwise wait for it
forever in their next collective. An unexpected exception is printed
with its rank and traceback first. A rank killed outright (``kill -9``) is
mpiexec's to handle: it ends the other ranks when one dies.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback
from typing import Callable

from ..distributed import DistributedError, launched_world_size
from ..distributed.comm import INSTALL_HINT
from ..distributed.launch import launch
from ..train.distributed import DataParallel, abort_world
from ..train.interrupt import StoppedTogether
from .common import fail

__all__ = ["CHILD_MARKER", "launch_nproc", "nproc_mismatch", "run_rank"]

# How long a failing rank other than 0 leaves rank 0 to report (and abort) first.
RANK_0_FIRST_SECONDS = 2.0

# The exit status after Ctrl-C (a shell's 128 + SIGINT).
INTERRUPTED = 130

# Set in the environment of the processes that --nproc starts, so that they never start more.
CHILD_MARKER = "MINIRES_STARTED_BY_NPROC"


def nproc_mismatch(nproc: int | None) -> str | None:
    """Why ``--nproc`` cannot be honoured in this process, or None.

    Under ``mpiexec -n W`` the flag may only repeat W. A process that
    ``--nproc`` started but that sees no MPI world means mpiexec and mpi4py
    belong to different MPI libraries (starting again would never end).
    """
    world = launched_world_size()
    if nproc is None or (world > 1 and nproc == world):
        return None
    if world > 1:
        return f"--nproc {nproc} under an mpiexec of {world} processes: drop --nproc (mpiexec -n sets the number)"
    if nproc > 1 and os.environ.get(CHILD_MARKER):
        return (f"--nproc {nproc} started this process with mpiexec, but it sees no MPI world: mpiexec and "
                f"mpi4py belong to different MPI libraries; reinstall: {INSTALL_HINT}")
    return None


def launch_nproc(argv: list[str], nproc: int) -> int:
    """Run ``minires <argv>`` as ``nproc`` MPI processes and wait; returns their exit status.

    Missing MPI gives a one-line error (exit 1) saying what to install.
    """
    command = [sys.executable, "-m", "minires", *argv]
    env = {**os.environ, CHILD_MARKER: "1"}
    try:
        return launch(command, nproc, env=env)
    except DistributedError as exc:
        return fail("train", str(exc), code=1)


def run_rank(work: Callable[[], int]) -> int:
    """Run ``work()`` (one rank's share of ``minires train``) and return its exit code.

    One process: just ``work()``. Under ``mpiexec``: ranks other than 0 keep
    their output back; an agreed stop (``StoppedTogether``) ends this rank
    alone, as every rank does the same; any other failure (non-zero code or
    exception) ends every rank. A failing rank other than 0 first waits a
    moment: if rank 0 failed the same way, rank 0's message comes out once
    and its abort ends this rank; if not, this rank's own message is
    printed, then it aborts.
    """
    if launched_world_size() == 1:
        try:
            return work()
        except StoppedTogether:
            return INTERRUPTED
    try:
        parallel = DataParallel()
    except DistributedError as exc:  # every rank has the same broken MPI: each says so, before any rank is known
        return fail("train", str(exc), code=1)
    held = io.StringIO()  # what a rank other than 0 would have printed to standard error
    try:
        with _quiet_unless(parallel.is_main, held):
            code = work()
    except StoppedTogether:
        return INTERRUPTED  # the checkpoint is saved and no rank waits for another
    except BaseException as exc:  # noqa: BLE001 - reported, then every rank is ended
        code = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else 1
        if code == 1:
            trace = f"minires train: rank {parallel.rank} of {parallel.world_size} failed:\n{traceback.format_exc()}"
            (sys.stderr if parallel.is_main else held).write(trace)
    if code != 0:
        if not parallel.is_main:
            time.sleep(RANK_0_FIRST_SECONDS)
            sys.stderr.write("".join(f"[rank {parallel.rank}] {line}\n" for line in held.getvalue().splitlines()))
        abort_world(code)
    return code


@contextlib.contextmanager
def _quiet_unless(main: bool, held: io.StringIO):
    """On ranks other than 0: discard standard output, keep standard error in ``held`` (rank 0 prints both)."""
    if main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(held):
        yield
