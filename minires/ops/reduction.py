"""Reductions: sum, mean and max over axes.

The backward of a reduction spreads the upstream gradient back over the
reduced axes: every summed element receives the gradient of the sum (so it is
broadcast), every averaged one 1/n of it, and for ``max`` only the winners.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..function import Function
from .axes import normalize_axis


def normalize_axes(axis: Any, ndim: int, op: str = "reduction") -> tuple:
    """Turn ``axis`` (None, int or tuple, negatives allowed) into a sorted tuple of axes.

    Raises AxisError (an IndexError) for an axis out of range and ValueError for
    a repeated one, naming ``op``.
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = [normalize_axis(ax, ndim, op) for ax in axes]
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    if ndim == 0:
        # A 0-d tensor accepts axis 0 / -1 (as in PyTorch) but has no axis to reduce;
        # NumPy would reject axis=0 here, so reduce over nothing.
        return ()
    return tuple(sorted(out))


def _expand_like(grad: Any, in_shape: tuple, axes: tuple, keepdims: bool) -> Any:
    """Re-insert reduced axes (as size 1) so ``grad`` broadcasts against the input."""
    if not keepdims:
        shape = list(in_shape)
        for ax in axes:
            shape[ax] = 1
        grad = grad.reshape(shape)
    return grad


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = normalize_axes(axis, a.ndim, "sum")
        ctx.meta = (a.shape, axes, keepdims)
        return a.sum(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        shape, axes, keepdims = ctx.meta
        xp = backend.get_array_module(grad)
        return xp.broadcast_to(_expand_like(grad, shape, axes, keepdims), shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = normalize_axes(axis, a.ndim, "mean")
        count = 1
        for ax in axes:
            count *= a.shape[ax]
        ctx.meta = (a.shape, axes, keepdims, count)
        return a.mean(axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        shape, axes, keepdims, count = ctx.meta
        xp = backend.get_array_module(grad)
        return xp.broadcast_to(_expand_like(grad, shape, axes, keepdims) / count, shape)


class Max(Function):
    """Maximum over axes. When several elements tie for the maximum, the
    gradient is shared equally among them (PyTorch's ``amax`` rule)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        axes = normalize_axes(axis, a.ndim, "max")
        if a.size == 0:
            raise ValueError("max() of an empty tensor")
        out = a.max(axis=axes, keepdims=True)
        ctx.save_for_backward(a, out)
        ctx.meta = (axes, keepdims)
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in axes])

    @staticmethod
    def backward(ctx, grad):
        a, out = ctx.saved_tensors
        axes, keepdims = ctx.meta
        winners = (a == out).astype(grad.dtype)
        winners /= winners.sum(axis=axes, keepdims=True)
        return winners * _expand_like(grad, a.shape, axes, keepdims)
