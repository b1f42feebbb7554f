"""Data parallelism in two real processes: each test launches ``mpiexec -n 2`` on one check of ``mpi_checks.py``.

The checks assert inside both ranks and abort both on the first failure, so
a non-zero exit status is a failed check; its output is shown. Skipped (with
the reason) only when mpi4py or mpiexec is not installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from minires.distributed import is_available
from minires.distributed.launch import THREAD_VARIABLES, find_mpiexec, launch, usable_cores

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCRIPT = HERE / "mpi_checks.py"
MPIEXEC = find_mpiexec()
TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(
    not is_available() or MPIEXEC is None,
    reason="needs mpi4py and an mpiexec: pip install mpi4py mpich (or pip install -e '.[mpi]')",
)


def _environment() -> dict:
    """This environment, one BLAS/kernel thread per rank, minires importable, not itself under mpiexec."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_", "HYDRA_"))}
    env.update({name: "1" for name in THREAD_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_two_processes(command: list) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 <command>``; on timeout the whole process group (mpiexec and its ranks) is killed."""
    proc = subprocess.Popen([MPIEXEC, "-n", "2", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_environment(), cwd=REPO, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (start_new_session)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec -n 2 {' '.join(command)} did not finish in {TIMEOUT_SECONDS} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
    code = ("import minires.distributed as d, mpi4py.MPI as M, sys\n"
            "if d.get_rank() == 1:\n    print('failing', flush=True); M.COMM_WORLD.Abort(3)\n"
            "d.barrier()\n")
    result = run_two_processes([sys.executable, "-c", code])
    assert result.returncode != 0 and "failing" in result.stdout


def test_launch_runs_nproc_processes_with_thread_limits():
    """launch(argv, 2): two ranks of one world, each with half the cores' threads in its environment."""
    threads = str(max(1, usable_cores() // 2))
    code = ("import os, minires.distributed as d\n"
            "assert d.get_world_size() == 2, d.get_world_size()\n"
            f"assert os.environ['OPENBLAS_NUM_THREADS'] == os.environ['MINIRES_NUM_THREADS'] == {threads!r}\n")
    env = {k: v for k, v in _environment().items() if k not in THREAD_VARIABLES}
    assert launch([sys.executable, "-c", code], nproc=2, env=env) == 0
