"""GPU tests skip where no GPU works, unless ``MINIRES_REQUIRE_GPU=1`` says one must.

On a laptop or in CPU-only CI, the tests in this folder skip with the reason
(``backend.cuda_status()``: CuPy missing, no device, kernels that do not
compile). That is right there, and wrong on the machine lent to check the GPU
code: a broken driver or a missing NVRTC would turn the whole GPU check into
a green row of skips. With ``MINIRES_REQUIRE_GPU=1`` every skip of a test in
this folder, whatever raised it (a ``skipif`` mark, ``pytest.skip``,
``pytest.importorskip``, a module skipped while it is collected), is reported
as a failure carrying the skip's reason. Expected failures (``xfail``) stay
what they are.

Hooks in this file apply to the tests under ``tests/gpu`` only.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_GPU = "MINIRES_REQUIRE_GPU"


def _gpu_required() -> bool:
    """True when the environment says a usable GPU is required (anything but unset, empty or 0)."""
    return os.environ.get(REQUIRE_GPU, "").strip() not in ("", "0")


def _skip_reason(report: pytest.BaseReport) -> str:
    """The text of a skip: pytest stores (path, line, reason) for a skip."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _gpu_state() -> str:
    try:
        from minires import backend

        state, _ = backend.cuda_status()
        return state
    except Exception as exc:  # an import that fails is itself the answer
        return f"unknown ({type(exc).__name__}: {exc})"


def _fail_instead(report: pytest.BaseReport) -> None:
    """Turn a skip report into a failure that says why the test would have skipped."""
    report.outcome = "failed"
    report.longrepr = (
        f"{REQUIRE_GPU}=1 requires a usable GPU, but this test would have been skipped: "
        f"{_skip_reason(report)} (GPU backend: {_gpu_state()})"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _gpu_required() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module that skips itself while it is imported (importorskip at the top) never becomes a test item.
    outcome = yield
    report = outcome.get_result()
    if _gpu_required() and report.skipped:
        _fail_instead(report)
