"""``minires info``: versions, the active backend and, without a GPU, the reason why.

Run both as a real process (``python -m minires info`` and the installed
``minires`` console script: what a user types) and in-process through
``minires.cli.main`` for the cases that need a patched backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import backend
from minires.cli import main


def _run(argv, env_updates=None):
    env = dict(os.environ)
    env.pop("MINIRES_DEVICE", None)
    env.update(env_updates or {})
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _check_info_output(stdout: str) -> None:
    assert f"minires {minires.__version__}" in stdout
    assert f"numpy   {np.__version__}" in stdout
    if backend.cupy_available():
        assert "GPU backend: available" in stdout
        assert "active backend: cupy" in stdout
    else:
        # Not just "no GPU": the reason the probe found, word for word.
        state, message = backend.cuda_status()
        assert state in ("missing", "no-device", "compile-failed")
        assert f"GPU backend: unavailable ({state}): {message}" in stdout
        assert "active backend: numpy (default device cpu)" in stdout


def test_python_m_minires_info():
    result = _run([sys.executable, "-m", "minires", "info"])
    assert result.returncode == 0, result.stderr
    _check_info_output(result.stdout)
    assert "MINIRES_DEVICE = (unset: auto)" in result.stdout


def _console_script() -> str | None:
    beside_python = Path(sys.executable).with_name("minires")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("minires")


def test_console_script_info():
    script = _console_script()
    if script is None:
        pytest.skip("the `minires` console script is not installed (pip install -e . creates it)")
    result = _run([script, "info"])
    assert result.returncode == 0, result.stderr
    _check_info_output(result.stdout)


def test_info_reports_the_env_variable():
    result = _run([sys.executable, "-m", "minires", "info"], {"MINIRES_DEVICE": "cpu"})
    assert result.returncode == 0, result.stderr
    assert "MINIRES_DEVICE = cpu" in result.stdout
    assert "active backend: numpy (default device cpu)" in result.stdout


def test_info_in_process_without_gpu(monkeypatch, capsys):
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", None)
    monkeypatch.setitem(backend._cupy_state, "reason", "simulated: no CUDA driver on this box")
    monkeypatch.setitem(backend._cupy_state, "state", "no-device")
    monkeypatch.delenv("MINIRES_DEVICE", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "GPU backend: unavailable (no-device): simulated: no CUDA driver on this box" in out
    assert "device  cpu" in out


def test_info_with_cuda_requested_but_unusable_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", None)
    monkeypatch.setitem(backend._cupy_state, "reason", "simulated: no CUDA driver")
    monkeypatch.setenv("MINIRES_DEVICE", "cuda")
    assert main(["info"]) == 1
    out = capsys.readouterr().out
    assert "active backend: none:" in out and "simulated: no CUDA driver" in out


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_info_prints_the_kernel_set_and_where_it_was_chosen(kernels):
    # A real process: the set is read from the environment once per process.
    result = _run([sys.executable, "-m", "minires", "info"], {"MINIRES_KERNELS": kernels})
    assert result.returncode == 0, result.stderr
    assert f"kernels: {kernels} (MINIRES_KERNELS={kernels};" in result.stdout


def test_info_with_a_bad_kernel_set_fails_and_names_it():
    result = _run([sys.executable, "-m", "minires", "info"], {"MINIRES_KERNELS": "turbo"})
    assert result.returncode == 1
    assert "kernels: invalid: MINIRES_KERNELS='turbo' is not a kernel set" in result.stdout


def test_info_says_whether_data_parallel_runs_and_how_to_get_it(monkeypatch, capsys):
    from minires.distributed import comm

    assert main(["info"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("MPI (data parallel): "))
    assert ("mpi4py " in line) == comm.is_available()
    monkeypatch.setattr(comm, "is_available", lambda: False)
    assert main(["info"]) == 0
    assert f"MPI (data parallel): not installed ({comm.INSTALL_HINT})" in capsys.readouterr().out


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "info" in capsys.readouterr().out


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert minires.__version__ in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err
