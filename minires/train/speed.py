"""The CPU speed helpers a training step runs under, all in one place."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

from .. import dispatch
from ..fast import allocator, threads

__all__ = ["cpu_step_context"]


def cpu_step_context(device_type: str) -> Callable[[], ContextManager[None]]:
    """Switch on the speed helpers for a run on ``device_type``; return the context each step runs in.

    Under the fast kernel set on the CPU, freed activation memory is kept for
    the next step instead of fresh, page-faulting pages from the kernel, and
    each step runs with BLAS on one thread: the fast convolutions parallelise
    over the batch themselves, and idle BLAS threads would spin on the cores
    they need. On a GPU, and under the reference set (whose only parallelism
    is BLAS's own), nothing changes.

    Call it once per run; enter ``with cpu_step_context(...)():`` per step.
    """
    if device_type != "cpu" or dispatch.get_kernels() != "fast":
        return contextlib.nullcontext
    allocator.keep_freed_memory()
    return threads.single_threaded_blas
