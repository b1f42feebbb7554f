"""minires.fast.allocator: keep_freed_memory asks glibc to keep freed blocks, or says it could not."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from minires.fast import allocator


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(allocator._libc_mallopt() is None, reason="no glibc mallopt on this platform")
def test_a_steps_freed_arrays_are_reused_instead_of_returned_to_the_kernel():
    # In a fresh process (the setting is process-wide): a "step" allocates 40 arrays of about 4 MB
    # (like a forward pass keeping its activations) and frees them all. The third step's minor page
    # faults are counted. With glibc's defaults the freed memory went back to the kernel and every
    # 4 kB page faults again (measured: about 20,000 of the 41,000 pages); with keep_freed_memory() it is reused (0).
    code = """
        import resource, sys
        import numpy as np
        from minires.fast.allocator import keep_freed_memory
        if MODE == "keep":
            assert keep_freed_memory() is True
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        def step():
            kept = [np.ones((1 << 20) + 1000 * i, dtype=np.float32) for i in range(40)]
            del kept
        step(); step()
        before = faults()
        step()
        print(faults() - before)
    """
    pages = 40 * (1 << 20) * 4 // 4096
    kept = int(_run(code.replace("MODE", '"keep"')))
    default = int(_run(code.replace("MODE", '"glibc"')))
    assert kept < pages // 20, (kept, default)
    assert default > pages // 4, (kept, default)


def test_without_mallopt_it_reports_false(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_libc_mallopt", lambda: None)
    assert allocator.keep_freed_memory() is False


def test_refused_settings_report_false(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    calls = []
    monkeypatch.setattr(allocator, "_libc_mallopt", lambda: lambda param, value: calls.append((param, value)) or 0)
    assert allocator.keep_freed_memory() is False
    assert calls[0] == (allocator._M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD)
