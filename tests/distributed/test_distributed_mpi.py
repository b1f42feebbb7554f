"""Data parallelism in two real processes: each test launches ``mpiexec -n 2`` on one check of ``mpi_checks.py``.

The checks assert inside both ranks and abort both on the first failure, so
a non-zero exit status is a failed check; its output is shown. Skipped (with
the reason) only when mpi4py or mpiexec is not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mpi_run import MPIEXEC, environment, needs_mpi, run

from minires.distributed.launch import THREAD_VARIABLES, launch, usable_cores

SCRIPT = Path(__file__).resolve().parent / "mpi_checks.py"

pytestmark = needs_mpi


def run_two_processes(command: list):
    """``mpiexec -n 2 <command>``; on timeout the whole process group (mpiexec and its ranks) is killed."""
    return run(2, command)


@pytest.mark.parametrize("check", [
    "collectives",
    "sync_bn_step_matches_one_process",
    "ddp_gradient_is_mean_of_halves",
    "overlap_equals_after_backward",
    "parameters_identical_after_steps",
    "sync_bn_matches_whole_batch",
    "sync_bn_gradcheck",
])
def test_two_processes(check):
    result = run_two_processes([sys.executable, str(SCRIPT), check])
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"mpiexec -n 2 ... {check} failed (exit {result.returncode})\n{output}"
    for rank in (0, 1):  # both ranks ran it, in a world of 2 (not two worlds of 1)
        assert f"rank {rank}/2 {check} ok" in result.stdout, output


def test_a_failing_check_fails_the_run():
    """The harness itself: an assertion on one rank makes mpiexec exit non-zero (and does not hang)."""
    code = ("import minires.distributed as d, mpi4py.MPI as M, time\n"
            "if d.get_rank() == 1:\n    print('failing', flush=True); time.sleep(0.5); M.COMM_WORLD.Abort(3)\n"
            "d.barrier()\n")
    result = run_two_processes([sys.executable, "-c", code])
    assert result.returncode != 0 and "failing" in result.stdout


def test_launch_runs_nproc_processes_with_thread_limits():
    """launch(argv, 2): two ranks of one world, each with half the cores' threads in its environment."""
    threads = str(max(1, usable_cores() // 2))
    code = ("import os, minires.distributed as d\n"
            "assert d.get_world_size() == 2, d.get_world_size()\n"
            f"assert os.environ['OPENBLAS_NUM_THREADS'] == os.environ['MINIRES_NUM_THREADS'] == {threads!r}\n")
    env = {k: v for k, v in environment().items() if k not in THREAD_VARIABLES}
    assert launch([sys.executable, "-c", code], nproc=2, env=env) == 0


def test_ranks_started_by_mpiexec_directly_limit_their_threads_before_numpy_loads():
    """``mpiexec -n 2 python -c 'import minires'``: no limits in the environment, yet each rank's BLAS has cores / 2."""
    threads = max(1, usable_cores() // 2)
    code = ("import os, minires, threadpoolctl\n"
            f"assert os.environ['MINIRES_NUM_THREADS'] == '{threads}', os.environ['MINIRES_NUM_THREADS']\n"
            "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
            f"assert blas and all(n == {threads} for n in blas), blas\n"
            "print('limited', flush=True)\n")
    env = {k: v for k, v in environment().items() if k not in THREAD_VARIABLES}
    result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.count("limited") == 2, result.stdout + result.stderr
