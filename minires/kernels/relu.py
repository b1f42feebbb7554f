"""ReLU on raw arrays: y = max(x, 0), and its backward pass.

The derivative of max(x, 0) is 1 where x > 0 and 0 where x < 0 (at exactly 0
we use 0, like PyTorch). So backward only needs to know WHERE the input was
positive, and the output tells us that without keeping the input: y > 0
exactly where x > 0. Saving y instead of x costs nothing, because y is the
next layer's input and stays alive anyway.

    forward:   y  = max(x, 0)
    backward:  dx = g * (y > 0)      (written as "not y <= 0", see NaN below)

Both are single elementwise passes over memory; there is no faster
formulation to write, so unlike convolution there is no separate reference
path: this IS the reference, and tests compare it against PyTorch. NaN
follows PyTorch: relu(NaN) = NaN (``maximum`` propagates NaN), and the
gradient passes through a NaN output, because PyTorch zeroes it only where
``y <= 0`` and every comparison with NaN is False.

On the GPU (CuPy arrays) both hand over to one-line CUDA elementwise kernels
in :mod:`minires.kernels.cuda.relu` (the backward is then one kernel, not three).

Memory layout (CPU). The fast convolution returns channels-last activations
(see :mod:`minires.kernels.conv`), and the elementwise code after it keeps
that layout, except where an operation mixes layouts: NumPy gives ``a + b``
an NCHW result when one operand is channels-last and the other NCHW (the
option-A shortcut of a downsampling block creates NCHW zeros). From there on
every elementwise operation would combine mismatched strides, which is
several times slower than a contiguous pass. So a 4-D ReLU output is always
channels-last, and the input gradient takes the layout of the output: the
layouts of a ResNet meet again at the first ReLU after such an addition.
"""

from __future__ import annotations

from typing import Any, Callable

from ..backend import get_array_module
from .conv import empty_channels_last, is_channels_last, num_threads, run_chunks

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x: Any) -> Any:
    """max(x, 0) elementwise. Any shape; same shape and dtype out (4-D: channels-last in memory on NumPy)."""
    xp = get_array_module(x)
    if xp.__name__ != "numpy":  # GPU: a hand-written elementwise kernel (kernels/cuda/relu.py)
        from .cuda import relu as cuda_relu
        return cuda_relu.relu_forward(x)
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
    if get_array_module(grad_out, out).__name__ != "numpy":  # GPU: one elementwise kernel (kernels/cuda/relu.py)
        from .cuda import relu as cuda_relu
        return cuda_relu.relu_backward(grad_out, out)
    # "not (y <= 0)" rather than "y > 0": identical except at NaN (see the
    # module docstring). Multiplying by a bool mask keeps grad_out's dtype;
    # the result takes the output's memory layout (module docstring).
    xp = get_array_module(grad_out)
    if out.ndim == 0:
        return xp.multiply(grad_out, ~(out <= 0))
    grad_in = xp.empty_like(out, dtype=grad_out.dtype)

    def work(spans: list[tuple[int, int]]) -> None:
        for lo, hi in spans:
            xp.multiply(grad_out[lo:hi], ~(out[lo:hi] <= 0), out=grad_in[lo:hi])

    _on_threads(xp, out, work)
    return grad_in


# Both passes are memory-bound streams; on the 2-core machine of
# benchmarks/README.md, with a core free, splitting the batch in two ran them
# 1.6-1.9x faster (128x16x32x32 float32). run_chunks keeps arrays below about
# a quarter of a million elements on one thread (the hand-off would cost more).


def _on_threads(xp: Any, a: Any, work: Callable[[list[tuple[int, int]]], None]) -> None:
    """Call ``work(spans)`` with (first, end) ranges of axis 0 of ``a``, one range per kernel thread."""
    n = len(a)
    step = max(1, -(-n // num_threads()))
    run_chunks(xp, n, step, lambda starts: work([(lo, min(lo + step, n)) for lo in starts]), flops=4 * a.size)
