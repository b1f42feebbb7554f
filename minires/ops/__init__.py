"""The differentiable operations on Tensors, and the Python operators that use them.

Each submodule groups one kind of operation (elementwise, reductions, shape,
matmul); this file gives them their public names (``minires.exp(x)``,
``minires.sum(x, axis=1)``) and attaches them to :class:`~minires.Tensor` as
methods and operators (``x + y``, ``x @ w``, ``x.sum()``, ``x[0]``).
"""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from . import elementwise as _e
from . import matmul as _m
from . import reduction as _r
from .shape import concatenate, flatten, getitem, pad, permute, reshape, stack, transpose

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "sqrt", "tanh", "sigmoid",
    "maximum", "clip", "sum", "mean", "max", "reshape", "transpose", "permute", "flatten",
    "getitem", "concatenate", "cat", "stack", "pad",
]


def add(a: Any, b: Any) -> Tensor:
    """``a + b`` with broadcasting."""
    return _e.Add.apply(a, b)


def sub(a: Any, b: Any) -> Tensor:
    """``a - b`` with broadcasting."""
    return _e.Sub.apply(a, b)


def mul(a: Any, b: Any) -> Tensor:
    """``a * b`` elementwise with broadcasting."""
    return _e.Mul.apply(a, b)


def div(a: Any, b: Any) -> Tensor:
    """``a / b`` elementwise with broadcasting."""
    return _e.Div.apply(a, b)


def neg(a: Tensor) -> Tensor:
    return _e.Neg.apply(a)


def pow(a: Tensor, exponent: float) -> Tensor:  # noqa: A001 (PyTorch's name)
    """``a ** exponent`` for a Python number ``exponent``."""
    if isinstance(exponent, Tensor) or not isinstance(exponent, (int, float)):
        raise TypeError(f"pow supports a constant scalar exponent, got {type(exponent).__name__}")
    return _e.Pow.apply(a, exponent=exponent)


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product of (..., n, k) and (..., k, m) -> (..., n, m); batch axes broadcast."""
    return _m.MatMul.apply(a, b)


def exp(a: Tensor) -> Tensor:
    return _e.Exp.apply(a)


def log(a: Tensor) -> Tensor:
    return _e.Log.apply(a)


def sqrt(a: Tensor) -> Tensor:
    return _e.Sqrt.apply(a)


def tanh(a: Tensor) -> Tensor:
    return _e.Tanh.apply(a)


def sigmoid(a: Tensor) -> Tensor:
    return _e.Sigmoid.apply(a)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum with broadcasting (ties share the gradient)."""
    return _e.Maximum.apply(a, b)


def clip(a: Tensor, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
    """Clamp values into ``[min, max]`` (either bound may be None)."""
    if min is None and max is None:
        raise ValueError("clip needs at least one of min and max")
    return _e.Clip.apply(a, low=min, high=max)


def sum(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (None: all axes; int or tuple)."""
    return _r.Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (None: all axes; int or tuple)."""
    return _r.Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return _r.Max.apply(a, axis=axis, keepdims=keepdims)


cat = concatenate


# ---------------------------------------------------------------------------
# Operators and methods on Tensor
# ---------------------------------------------------------------------------


def _reflected(fn):
    return lambda self, other: fn(other, self)


def _index_method(self, index):
    return getitem(self, index)


def _dims(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


Tensor.__add__ = add
Tensor.__radd__ = _reflected(add)
Tensor.__sub__ = sub
Tensor.__rsub__ = _reflected(sub)
Tensor.__mul__ = mul
Tensor.__rmul__ = _reflected(mul)
Tensor.__truediv__ = div
Tensor.__rtruediv__ = _reflected(div)
Tensor.__neg__ = neg
Tensor.__pow__ = pow
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = _reflected(matmul)
Tensor.__getitem__ = _index_method
Tensor.exp = exp
Tensor.log = log
Tensor.sqrt = sqrt
Tensor.tanh = tanh
Tensor.sigmoid = sigmoid
Tensor.clip = clip
Tensor.sum = sum
Tensor.mean = mean
Tensor.max = max
Tensor.reshape = lambda self, *shape: reshape(self, *shape)
Tensor.view = Tensor.reshape
Tensor.permute = lambda self, *axes: permute(self, *_dims(axes))
Tensor.transpose = transpose
Tensor.flatten = flatten
Tensor.T = property(lambda self: transpose(self, 0, 1) if self.ndim == 2 else permute(self, *reversed(range(self.ndim))))
