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
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x: Any) -> Any:
    """max(x, 0) elementwise. Any shape; same shape and dtype out."""
    xp = get_array_module(x)
    if xp.__name__ != "numpy":  # GPU: a hand-written elementwise kernel (kernels/cuda/relu.py)
        from .cuda import relu as cuda_relu
        return cuda_relu.relu_forward(x)
    # The Python 0 is a "weak" scalar: float32 in, float32 out (no upcast).
    return xp.maximum(x, 0)


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
    # module docstring). Multiplying by a bool mask keeps grad_out's dtype.
    return grad_out * ~(out <= 0)
