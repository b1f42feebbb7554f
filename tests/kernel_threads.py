"""A test helper: run the CPU kernels on a given number of threads, even for tiny arrays.

``run_chunks`` (minires/fast/threads.py) keeps problems below
``_MIN_PARALLEL_WORK`` on the calling thread, so the small arrays of a unit test
would never exercise the threaded code; this lowers that bar to zero and sets
``MINIRES_NUM_THREADS`` for the duration, then restores both.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from minires.fast import threads


@contextlib.contextmanager
def force_kernel_threads(count: int = 2) -> Iterator[None]:
    """Run the kernels on ``count`` threads inside the block, whatever the problem size."""
    old_env, old_min = os.environ.get("MINIRES_NUM_THREADS"), threads._MIN_PARALLEL_WORK
    os.environ["MINIRES_NUM_THREADS"] = str(count)
    threads._MIN_PARALLEL_WORK = 0
    try:
        yield
    finally:
        threads._MIN_PARALLEL_WORK = old_min
        if old_env is None:
            os.environ.pop("MINIRES_NUM_THREADS", None)
        else:
            os.environ["MINIRES_NUM_THREADS"] = old_env
