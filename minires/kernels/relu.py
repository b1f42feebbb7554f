"""ReLU on raw arrays: y = max(x, 0), and its backward pass.

The derivative of max(x, 0) is 1 where x > 0 and 0 where x < 0 (at exactly 0
we use 0, like PyTorch). So the backward pass only needs to know WHERE the
input was positive, and the output says so without keeping the input: y > 0
exactly where x > 0. Saving y costs nothing: it is the next layer's input.

    forward:   y  = max(x, 0)
    backward:  dx = g * (y > 0)      (written as "not y <= 0", see NaN below)

NaN follows PyTorch: relu(NaN) = NaN (``maximum`` propagates NaN), and the
gradient passes through a NaN output, because PyTorch zeroes it only where
y <= 0 and every comparison with NaN is False.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x: Any) -> Any:
    """max(x, 0) elementwise: any shape, same shape and dtype out."""
    # The Python 0 is a "weak" scalar: float32 in, float32 out.
    return get_array_module(x).maximum(x, 0)


def relu_backward(grad_out: Any, out: Any) -> Any:
    """dLoss/dx: grad_out where the forward output y was positive (or NaN), else 0.

    Args:
        grad_out: dLoss/dy. out: the forward output y, same shape.

    Returns:
        dLoss/dx, shape and dtype of grad_out (a bool mask keeps the dtype).
    """
    return get_array_module(grad_out).multiply(grad_out, ~(out <= 0))
