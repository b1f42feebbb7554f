"""The differentiable operations on Tensors, and the Python operators that use them
(plus the comparisons ``==``, ``<``, ..., which give bool Tensors and no gradient).

Each submodule groups one kind of operation (elementwise, reductions, shape,
matmul); this file gives them their public names (``minires.exp(x)``,
``minires.sum(x, axis=1)``) and attaches them to :class:`~minires.Tensor` as
methods and operators (``x + y``, ``x @ w``, ``x.sum()``, ``x[0]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..function import promote
from ..tensor import Tensor
from . import elementwise as _e
from . import matmul as _m
from . import reduction as _r
from .shape import concatenate, flatten, getitem, pad, permute, reshape, stack, transpose

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "sqrt", "tanh", "sigmoid",
    "maximum", "clip", "sum", "mean", "max", "all", "any", "reshape", "transpose", "permute", "flatten",
    "getitem", "concatenate", "cat", "stack", "pad", "eq", "ne", "lt", "le", "gt", "ge",
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


def _number(value: Any, problem: str) -> int | float:
    """A Python or NumPy number as a Python one, which never widens a float32 tensor
    (NumPy's rules make float32 ** np.float64(2) float64); else TypeError(problem)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{problem} (a Python or NumPy number), got {type(value).__name__}")
    return value


def pow(a: Tensor, exponent: float) -> Tensor:  # noqa: A001 (PyTorch's name)
    """``a ** exponent`` for a constant number ``exponent`` (Python or NumPy scalar).

    An integer tensor to a float power gives float32, as in PyTorch.
    """
    exponent = _number(exponent, "pow supports a constant scalar exponent")
    (a,) = promote(a, exponent)[:1]
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
    """Clamp values into ``[min, max]``; either bound may be None, each is a Python or NumPy number."""
    if min is None and max is None:
        raise ValueError("clip needs at least one of min and max")
    low = None if min is None else _number(min, "clip's min must be a constant scalar")
    high = None if max is None else _number(max, "clip's max must be a constant scalar")
    # An integer tensor clipped to a float bound gives float32, as in PyTorch.
    (a,) = promote(a, *(b for b in (low, high) if b is not None))[:1]
    return _e.Clip.apply(a, low=low, high=high)


def sum(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (None: all axes; int or tuple)."""
    return _r.Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (None: all axes; int or tuple)."""
    return _r.Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return _r.Max.apply(a, axis=axis, keepdims=keepdims)


def all(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Whether every element over ``axis`` is nonzero (True): a bool Tensor, not differentiable."""
    axes = _r.normalize_axes(axis, a.ndim, "all")
    return Tensor._wrap(a.xp.asarray(a.data.all(axis=axes, keepdims=keepdims)))


def any(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Whether some element over ``axis`` is nonzero (True): a bool Tensor, not differentiable."""
    axes = _r.normalize_axes(axis, a.ndim, "any")
    return Tensor._wrap(a.xp.asarray(a.data.any(axis=axes, keepdims=keepdims)))


cat = concatenate


def eq(a: Any, b: Any) -> Tensor:
    """``a == b`` elementwise with broadcasting: a bool Tensor (comparisons are not differentiable)."""
    return _e.compare("eq", a, b)


def ne(a: Any, b: Any) -> Tensor:
    """``a != b`` elementwise with broadcasting: a bool Tensor."""
    return _e.compare("ne", a, b)


def lt(a: Any, b: Any) -> Tensor:
    """``a < b`` elementwise with broadcasting: a bool Tensor."""
    return _e.compare("lt", a, b)


def le(a: Any, b: Any) -> Tensor:
    """``a <= b`` elementwise with broadcasting: a bool Tensor."""
    return _e.compare("le", a, b)


def gt(a: Any, b: Any) -> Tensor:
    """``a > b`` elementwise with broadcasting: a bool Tensor."""
    return _e.compare("gt", a, b)


def ge(a: Any, b: Any) -> Tensor:
    """``a >= b`` elementwise with broadcasting: a bool Tensor."""
    return _e.compare("ge", a, b)


# ---------------------------------------------------------------------------
# Operators and methods on Tensor
# ---------------------------------------------------------------------------


def _reflected(fn):
    return lambda self, other: fn(other, self)


def _index_method(self, index):
    return getitem(self, index)


def _comparison_operator(fn):
    """``Tensor.__eq__`` and friends. Other kinds of object (None, a string, a list)
    get NotImplemented, so Python falls back to its default: ``t == None`` is
    False, ``t < None`` a TypeError, as in PyTorch."""

    def method(self, other):
        comparable = isinstance(other, (Tensor, bool, int, float, np.generic, np.ndarray))
        if not comparable and backend.device_of(other).type != "cuda":  # a CuPy array is comparable too
            return NotImplemented
        return fn(self, other)

    return method


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
# Defining __eq__ does not reset the identity __hash__ here (Python does that only
# for an __eq__ written in the class body): tensors stay usable as dict keys.
Tensor.__eq__ = _comparison_operator(eq)
Tensor.__ne__ = _comparison_operator(ne)
Tensor.__lt__ = _comparison_operator(lt)
Tensor.__le__ = _comparison_operator(le)
Tensor.__gt__ = _comparison_operator(gt)
Tensor.__ge__ = _comparison_operator(ge)
Tensor.eq, Tensor.ne, Tensor.lt, Tensor.le, Tensor.gt, Tensor.ge = eq, ne, lt, le, gt, ge
Tensor.exp = exp
Tensor.log = log
Tensor.sqrt = sqrt
Tensor.tanh = tanh
Tensor.sigmoid = sigmoid
Tensor.clip = clip
Tensor.sum = sum
Tensor.mean = mean
Tensor.max = max
Tensor.all = all
Tensor.any = any
Tensor.reshape = lambda self, *shape: reshape(self, *shape)
Tensor.view = Tensor.reshape
Tensor.permute = lambda self, *axes: permute(self, *_dims(axes))
Tensor.transpose = transpose
Tensor.flatten = flatten
def _transposed(self: Tensor) -> Tensor:
    """``x.T``: the axes in reverse order (the matrix transpose for 2-D)."""
    return transpose(self, 0, 1) if self.ndim == 2 else permute(self, *reversed(range(self.ndim)))


Tensor.T = property(_transposed)
