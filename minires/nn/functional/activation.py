"""Functional ReLU (the arithmetic is in :mod:`minires.kernels.relu`, chosen by :mod:`minires.dispatch`)."""

from __future__ import annotations

from typing import Any

from ...dispatch import kernel
from ...function import Function
from ...tensor import Tensor

__all__ = ["relu", "ReLUFunction"]


class ReLUFunction(Function):
    """y = max(x, 0). Saves the OUTPUT: y > 0 is the mask backward needs."""

    @staticmethod
    def forward(ctx, x):
        y = kernel("relu_forward", x)(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return kernel("relu_backward", y)(grad, y)


def relu(x: Any) -> Tensor:
    """max(x, 0) elementwise, any shape (PyTorch's ``F.relu``, not in place).

    Args:
        x: Tensor of any shape (an array is treated as a constant).

    Returns:
        Tensor of the same shape and dtype. Its gradient is the upstream
        gradient where x > 0 and 0 elsewhere (0 at x == 0, like PyTorch).
    """
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if x.dtype.kind == "b":
        raise TypeError("relu is not defined for bool tensors (as in PyTorch); convert to a number type first")
    return ReLUFunction.apply(x)
