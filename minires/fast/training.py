"""What a CPU training loop turns on under the fast set, and the engine's gradient sums.

* Gradient sums at residual connections go into page-aligned arrays (see
  :mod:`.memory`): the batch norm backward that reads them next then runs at
  full speed.
* BLAS is held to one thread for the whole step (:func:`.threads.single_threaded_blas`),
  since the kernels bring their own threads.
* Freed activations stay mapped for the next step (:mod:`.allocator`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from .. import dispatch
from ..tensor import set_gradient_sum
from .allocator import keep_freed_memory
from .memory import empty_aligned_like
from .threads import single_threaded_blas

__all__ = ["aligned_gradient_sum", "training_context"]


def aligned_gradient_sum(a: Any, b: Any) -> Any:
    """``a + b`` in a new page-aligned array in a's layout (NumPy, fast set); else plain ``a + b``."""
    if dispatch.get_kernels() != "fast" or type(a) is not np.ndarray or type(b) is not np.ndarray:
        return a + b
    return np.add(a, b, out=empty_aligned_like(a))


set_gradient_sum(aligned_gradient_sum)


@contextlib.contextmanager
def training_context(device_type: str) -> Iterator[None]:
    """Around a CPU training loop under the fast set: keep freed memory, BLAS on one thread.

    A no-op for the GPU and under the reference set.
    """
    if device_type != "cpu" or dispatch.get_kernels() != "fast":
        yield
        return
    keep_freed_memory()
    with single_threaded_blas():
        yield
