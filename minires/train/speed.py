"""The CPU speed helpers a training step runs under, all in one place."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

from .. import allocator
from ..kernels.conv import single_threaded_blas

__all__ = ["cpu_step_context"]


def cpu_step_context(device_type: str) -> Callable[[], ContextManager[None]]:
    """Switch on the speed helpers for a run on ``device_type``; return the context each step runs in.

    On the CPU, freed activation memory is kept for the next step instead of
    fresh, page-faulting pages from the kernel, and each step runs with BLAS
    on one thread: the convolutions parallelise over the batch themselves,
    and idle BLAS threads would spin on the cores they need. On a GPU: nothing.

    Call it once per run; enter ``with cpu_step_context(...)():`` per step.
    """
    if device_type != "cpu":
        return contextlib.nullcontext
    allocator.keep_freed_memory()
    return single_threaded_blas
