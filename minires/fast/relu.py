"""The fast CPU ReLU: the same numbers as :mod:`minires.kernels.relu`, on the kernel threads.

Two differences from the reference. Both passes are split over the kernel
threads (:mod:`.threads`), as the batch is large and the passes are pure
memory streams. And the memory layout: the fast convolution returns
channels-last activations, and NumPy gives ``a + b`` an NCHW result when one
operand is channels-last and the other NCHW, after which every elementwise
pass would combine mismatched strides, several times slower. So a 4-D ReLU
output is always channels-last, and the input gradient takes the layout of
the output: the layouts of a ResNet meet again at the first ReLU.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import dispatch
from .layout import empty_channels_last, is_channels_last
from .threads import num_threads, run_chunks

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x: Any) -> Any:
    """max(x, 0) elementwise. Any shape; same shape and dtype out (4-D: channels-last in memory on NumPy)."""
    xp = np
    if x.ndim == 0:
        return xp.maximum(x, 0)
    if x.ndim == 4 and not is_channels_last(x):
        # Back to channels-last (module docstring): one pass, as a plain ReLU would take.
        y = empty_channels_last(xp, x.shape, x.dtype)
    else:
        y = xp.empty_like(x)  # keeps x's memory layout

    def work(spans: list[tuple[int, int]]) -> None:
        for lo, hi in spans:
            # The Python 0 is a "weak" scalar: float32 in, float32 out (no upcast).
            xp.maximum(x[lo:hi], 0, out=y[lo:hi])

    _on_threads(xp, x, work)
    return y


def relu_backward(grad_out: Any, out: Any) -> Any:
    """dLoss/dx = grad_out where the forward output was positive (or NaN), else 0.

    Args:
        grad_out: dLoss/dy, same shape as the output.
        out: the forward output y (y > 0 exactly where x > 0).

    Returns:
        dLoss/dx, same shape and dtype as ``grad_out``.
    """
    # "not (y <= 0)" rather than "y > 0": identical except at NaN (see the
    # module docstring). Multiplying by a bool mask keeps grad_out's dtype;
    # the result takes the output's memory layout (module docstring).
    xp = np
    if out.ndim == 0:
        return xp.multiply(grad_out, ~(out <= 0))
    grad_in = xp.empty_like(out, dtype=grad_out.dtype)

    def work(spans: list[tuple[int, int]]) -> None:
        for lo, hi in spans:
            xp.multiply(grad_out[lo:hi], ~(out[lo:hi] <= 0), out=grad_in[lo:hi])

    _on_threads(xp, out, work)
    return grad_in


# run_chunks keeps arrays below about a quarter of a million elements on one
# thread (the hand-off would cost more than it saves).


def _on_threads(xp: Any, a: Any, work: Callable[[list[tuple[int, int]]], None]) -> None:
    """Call ``work(spans)`` with (first, end) ranges of axis 0 of ``a``, one range per kernel thread."""
    n = len(a)
    step = max(1, -(-n // num_threads()))
    run_chunks(xp, n, step, lambda starts: work([(lo, min(lo + step, n)) for lo in starts]), flops=4 * a.size)


dispatch.register("relu_forward", "cpu")(relu_forward)
dispatch.register("relu_backward", "cpu")(relu_backward)
