"""tests/gpu/conftest.py: GPU tests skip by default and FAIL under MINIRES_REQUIRE_GPU=1.

Each case runs pytest in a subprocess on a small folder holding a copy of the
real conftest and test files that skip the ways a GPU test can (a ``skipif``
mark, ``pytest.skip`` in the body, ``importorskip`` at import), beside a test
that passes and one that is an expected failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "gpu" / "conftest.py"

SKIPPING_TESTS = '''
import pytest

pytestmark = pytest.mark.skipif(True, reason="simulated: no usable CUDA device")


def test_kernel_matches_reference():
    pass
'''

MIXED_TESTS = '''
import pytest


def test_passes():
    pass


def test_skips_in_the_body():
    pytest.skip("simulated: NVRTC is missing")


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False
'''

SKIPPED_AT_IMPORT = '''
import pytest

pytest.importorskip("a_module_that_is_not_installed", reason="simulated: CuPy is not installed")


def test_never_collected():
    pass
'''


def _run(tmp_path: Path, require: str | None, files: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest, in a subprocess, on a folder with the real conftest and ``files`` (name -> source)."""
    folder = tmp_path / "gpu"
    folder.mkdir(exist_ok=True)
    shutil.copy(CONFTEST, folder / "conftest.py")
    for name, source in files.items():
        (folder / name).write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "MINIRES_REQUIRE_GPU"}
    if require is not None:
        env["MINIRES_REQUIRE_GPU"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(folder)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


TESTS = {"test_skipping.py": SKIPPING_TESTS, "test_mixed.py": MIXED_TESTS}
FAILURE = "MINIRES_REQUIRE_GPU=1 requires a usable GPU, but this test would have been skipped"


@pytest.mark.parametrize("require", [None, "", "0"])
def test_without_the_variable_gpu_tests_skip(tmp_path, require):
    result = _run(tmp_path, require, {**TESTS, "test_import_skip.py": SKIPPED_AT_IMPORT})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout, result.stdout
    assert FAILURE not in result.stdout


def test_with_the_variable_every_skip_fails_with_its_reason(tmp_path):
    result = _run(tmp_path, "1", TESTS)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    # The skipif mark fires in setup, so that one is reported as an error; the xfail stays an xfail.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out, out
    assert "simulated: no usable CUDA device" in out and "simulated: NVRTC is missing" in out
    assert out.count(FAILURE) >= 2 and "(GPU backend: " in out
    assert "skipped" not in out.splitlines()[-1]


def test_with_the_variable_a_module_skipped_at_import_is_a_collection_error(tmp_path):
    result = _run(tmp_path, "1", {"test_import_skip.py": SKIPPED_AT_IMPORT})
    assert result.returncode != 0, result.stdout
    assert FAILURE in result.stdout and "simulated: CuPy is not installed" in result.stdout
