"""Undoing broadcasting in the backward pass.

When ``a`` of shape (3, 1) is added to ``b`` of shape (4,), NumPy broadcasts
both to (3, 4). Each element of ``a`` was used four times, so its gradient is
the SUM of the four gradients it contributed to: backward must sum the
upstream gradient over every axis that broadcasting created or stretched.
"""

from __future__ import annotations

from typing import Any


def unbroadcast(grad: Any, shape: tuple) -> Any:
    """Sum ``grad`` down to ``shape`` (the inverse bookkeeping of broadcasting).

    Args:
        grad: array of the broadcast result's shape.
        shape: the shape of the original operand.
    Returns:
        array of ``shape``.
    """
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    # Leading axes that broadcasting prepended.
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    # Axes where the operand had size 1 and was stretched.
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def check_broadcastable(op: str, a_shape: tuple, b_shape: tuple) -> None:
    """Raise a readable error when two shapes cannot broadcast together."""
    for x, y in zip(reversed(a_shape), reversed(b_shape)):
        if x != y and x != 1 and y != 1:
            raise ValueError(
                f"{op}: shapes {tuple(a_shape)} and {tuple(b_shape)} cannot be broadcast together "
                f"(trailing dimensions {x} and {y} differ and neither is 1)"
            )
