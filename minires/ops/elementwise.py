"""Elementwise operations and their derivatives.

Each class is one operation; ``backward`` receives ``grad`` = d(loss)/d(out)
and returns d(loss)/d(input) for each input by the chain rule,
``grad * d(out)/d(input)``, then sums away any broadcasting (see
:mod:`minires.ops.broadcast`).
"""

from __future__ import annotations

import operator
from typing import Any

from .. import backend
from ..backend import DeviceError
from ..function import Function, _as_input, promote
from ..tensor import Tensor
from .broadcast import check_broadcastable, unbroadcast


class _Binary(Function):
    """Shared shape check for two-input broadcasting operations.

    The inputs are promoted to one dtype first (PyTorch's rules, see
    :func:`minires.function.result_dtype`): float32 + int64 stays float32.
    """

    promotes = True

    @classmethod
    def apply(cls, a, b):  # type: ignore[override]
        a_shape = getattr(a, "shape", ())
        b_shape = getattr(b, "shape", ())
        check_broadcastable(cls.__name__.lower(), tuple(a_shape), tuple(b_shape))
        return super().apply(a, b)


class Add(_Binary):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        return unbroadcast(grad, sa), unbroadcast(grad, sb)


class Sub(_Binary):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, grad):
        sa, sb = ctx.shapes
        return unbroadcast(grad, sa), unbroadcast(-grad, sb)


class Mul(_Binary):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = unbroadcast(grad * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(grad * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(_Binary):
    @classmethod
    def apply(cls, a, b):  # type: ignore[override]
        # True division gives floats even for integers: float32, as in PyTorch (NumPy: float64).
        return super().apply(*promote(a, b, floating=True))

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        # d(a/b)/da = 1/b,  d(a/b)/db = -a/b^2
        ga = unbroadcast(grad / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-grad * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class _FloatUnary(Function):
    """A one-input operation whose result is always floating (exp, log, sqrt, tanh, sigmoid).

    Integer and bool inputs are computed in float32, as in PyTorch: NumPy
    would give float64 (float16 for bool), and keeping the integer dtype would
    round sigmoid(1) = 0.73 down to 0.
    """

    @classmethod
    def apply(cls, a):  # type: ignore[override]
        return super().apply(*promote(a, floating=True))


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Pow(Function):
    """``a ** p`` for a constant scalar exponent ``p``."""

    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** exponent

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        p = ctx.exponent
        return grad * (p * a ** (p - 1))


class Exp(_FloatUnary):
    @staticmethod
    def forward(ctx, a):
        xp = backend.get_array_module(a)
        out = xp.exp(a)
        ctx.save_for_backward(out)  # d exp(a) / da = exp(a): reuse the output
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out


class Log(_FloatUnary):
    @staticmethod
    def forward(ctx, a):
        xp = backend.get_array_module(a)
        ctx.save_for_backward(a)
        return xp.log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad / a


class Sqrt(_FloatUnary):
    @staticmethod
    def forward(ctx, a):
        xp = backend.get_array_module(a)
        out = xp.sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad / (2 * out)


class Tanh(_FloatUnary):
    @staticmethod
    def forward(ctx, a):
        xp = backend.get_array_module(a)
        out = xp.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class Sigmoid(_FloatUnary):
    @staticmethod
    def forward(ctx, a):
        xp = backend.get_array_module(a)
        # Written with exp(-|a|) so that neither branch overflows for large |a|.
        e = xp.exp(-xp.abs(a))
        out = xp.where(a >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * out * (1 - out)


class Maximum(_Binary):
    """Elementwise maximum of two tensors; ties split the gradient evenly (as PyTorch does)."""

    @staticmethod
    def forward(ctx, a, b):
        xp = backend.get_array_module(a, b)
        ctx.save_for_backward(a, b)
        return xp.maximum(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        # share_a is 1 where a won, 0 where b won, 1/2 on a tie.
        share_a = ((a > b) + 0.5 * (a == b)).astype(grad.dtype)
        ga = unbroadcast(grad * share_a, a.shape)
        gb = unbroadcast(grad * (1 - share_a), b.shape)
        return ga, gb


class Clip(Function):
    """Clamp into ``[low, high]``; the gradient passes only where the input was inside."""

    @staticmethod
    def forward(ctx, a, low, high):
        xp = backend.get_array_module(a)
        ctx.save_for_backward(a)
        ctx.bounds = (low, high)
        return xp.clip(a, low, high)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        low, high = ctx.bounds
        inside = backend.get_array_module(a).ones(a.shape, dtype=bool)
        if low is not None:
            inside &= a >= low
        if high is not None:
            inside &= a <= high
        return grad * inside


# ---------------------------------------------------------------------------
# Comparisons (not differentiable: a bool result has no gradient)
# ---------------------------------------------------------------------------

COMPARISONS = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}


def compare(name: str, a: Any, b: Any) -> Tensor:
    """Elementwise ``a <op> b`` with broadcasting, as a bool Tensor that does not require grad.

    Args:
        name: one of ``COMPARISONS`` ("eq", "lt", ...).
        a, b: Tensors, arrays or Python/NumPy scalars, broadcastable shapes.
    Returns:
        bool Tensor of the broadcast shape.

    Both sides are promoted first, like ``a + b``: a float32 tensor compared
    with 0.1 compares against 0.1 rounded to float32, as PyTorch does.
    """
    check_broadcastable(name, tuple(getattr(a, "shape", ())), tuple(getattr(b, "shape", ())))
    a, b = promote(a, b)
    like = next((x for x in (a, b) if isinstance(x, Tensor)), None)
    a, b = _as_input(a, like), _as_input(b, like)
    if a.device != b.device:
        raise DeviceError(f"{name}: tensors on different devices ({a.device} and {b.device})")
    # NumPy gives a scalar, not a 0-d array, when both sides are 0-d: Tensor.data is always an array.
    return Tensor._wrap(a.xp.asarray(COMPARISONS[name](a.data, b.data)))


class ToCopy(Function):
    """A copy to another device and/or dtype; the gradient goes back the same way."""

    @staticmethod
    def forward(ctx, a, device, dtype):
        ctx.origin = (backend.device_of(a), a.dtype)
        return backend.to_device(a, device).astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        dev, dtype = ctx.origin
        return backend.to_device(grad, dev).astype(dtype, copy=False)


def to_copy(x: Any, device: Any, dtype: Any):
    """Differentiable device/dtype conversion used by ``Tensor.to``."""
    return ToCopy.apply(x, device=device, dtype=dtype)
