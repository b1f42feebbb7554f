"""Function: one differentiable operation, as a forward/backward pair on raw arrays.

Every operation in minires (``add``, ``matmul``, ``conv2d``, ``batch_norm``,
...) is a subclass of :class:`Function` with two static methods::

    class Mul(Function):
        @staticmethod
        def forward(ctx, a, b):            # raw arrays in ...
            ctx.save_for_backward(a, b)    # ... remember what backward needs
            return a * b                   # ... one raw array out

        @staticmethod
        def backward(ctx, grad):           # d(loss)/d(output), same shape as the output
            a, b = ctx.saved_tensors
            return grad * b, grad * a      # one gradient per input (or None)

    y = Mul.apply(x, w)                    # Tensors in, Tensor out, graph recorded

``forward`` and ``backward`` never see Tensors, only NumPy/CuPy arrays: the
mathematics stays separate from the bookkeeping, which lives in ``apply`` (it
builds the graph) and in :mod:`minires.tensor` (which walks it backwards).
Keyword arguments to ``apply`` are passed to ``forward`` as non-differentiable
parameters (a stride, an axis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from .backend import DeviceError
from .tensor import Tensor, is_grad_enabled

__all__ = ["Function", "Context", "result_dtype", "promote"]


class Context:
    """What one call of a Function remembers between its forward and backward.

    Attributes:
        fn: the Function subclass that made the output.
        inputs: the input Tensors (the graph edges), dropped by ``release()``.
        needs_input_grad: one bool per input: does that input need a gradient?
            ``backward`` may skip work for inputs that do not.
        saved_tensors: the arrays stored by ``save_for_backward``.
        released: True once backward has freed this node (see ``Tensor.backward``).
    Any other attribute (``ctx.stride = 2``) may be set freely by ``forward``.
    """

    def __init__(self, fn: type, inputs: tuple, needs_input_grad: tuple) -> None:
        self.fn = fn
        self.inputs = inputs
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple = ()
        self.released = False

    def save_for_backward(self, *arrays: Any) -> None:
        self.saved_tensors = arrays

    def release(self) -> None:
        """Drop saved arrays, extra attributes and input links so their memory can be reused."""
        keep = {"fn", "needs_input_grad"}
        for name in list(vars(self)):
            if name not in keep:
                delattr(self, name)
        self.inputs = ()
        self.saved_tensors = ()
        self.released = True


# Python and NumPy scalars (``2``, ``0.5``, ``np.float64(0.5)``, ``np.int64(3)`` from a count).
_SCALAR_TYPES = (bool, int, float, np.generic)

# PyTorch's kinds of dtype, lowest first: a result takes the highest kind among its operands.
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2}

# The dtype a Python scalar of each kind becomes when it raises the kind of a result:
# ``int_tensor * 0.5`` is float32 (PyTorch's default float dtype), not NumPy's float64.
_SCALAR_DEFAULT = {0: np.dtype(np.bool_), 1: np.dtype(np.int64), 2: np.dtype(np.float32)}


def _category(dtype: Any) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind not in _CATEGORY:
        raise TypeError(f"operations on tensors support bool, integer and floating dtypes, got {dtype}")
    return _CATEGORY[dtype.kind]


def _scalar_category(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):  # before int: a bool is an int in Python
        return 0
    if isinstance(value, (int, np.integer)):
        return 1
    if isinstance(value, (float, np.floating)):
        return 2
    raise TypeError(f"operations on tensors support bool, integer and floating scalars, got {type(value).__name__}")


def result_dtype(*operands: Any, floating: bool = False) -> np.dtype:
    """The dtype of an elementwise operation on ``operands``, by PyTorch's promotion rules.

    Operands are Tensors, arrays, or Python/NumPy scalars. The kinds are ordered
    bool < integer < floating, and:

    * The highest kind among the tensors and arrays wins, with the dtype of
      the operand of that kind: float32 + int64 -> float32 (NumPy says float64).
      Within one kind NumPy's rule applies (int32 + int64 -> int64,
      float32 + float64 -> float64).
    * A scalar never widens a tensor of its own kind or a higher one
      (float32 * 0.5 -> float32, int32 + 3 -> int32); NumPy scalars count as
      scalars (float32 * np.float64(0.5) -> float32).
    * A scalar of a higher kind gives that kind's default dtype:
      int64 * 0.5 -> float32, bool * 2 -> int64.

    ``floating=True`` is for operations whose result is always floating (true
    division): an integer result becomes float32, as in PyTorch.
    """
    scalars = [x for x in operands if isinstance(x, _SCALAR_TYPES)]
    arrays = [np.dtype(x.dtype) for x in operands if not isinstance(x, _SCALAR_TYPES)]
    top = max((_category(d) for d in arrays), default=-1)
    dtype = np.result_type(*[d for d in arrays if _category(d) == top]) if arrays else None
    scalar_top = max((_scalar_category(x) for x in scalars), default=-1)
    if scalar_top > top:
        dtype = _SCALAR_DEFAULT[scalar_top]
    if floating and dtype.kind != "f":
        dtype = _SCALAR_DEFAULT[2]
    return dtype


def _cast_operand(value: Any, dtype: np.dtype) -> Any:
    """Bring one operand to the result dtype before the arithmetic runs.

    Floating tensors and arrays are left alone: among floats NumPy's rule
    (float32 + float64 -> float64) is also PyTorch's, and casting a tensor
    that requires grad here would hide it from the graph. Everything else
    cannot require grad, so it is simply converted.
    """
    if isinstance(value, _SCALAR_TYPES):
        return dtype.type(value)  # a NumPy scalar of the result dtype
    if value.dtype.kind == "f" or value.dtype == dtype:
        return value
    if isinstance(value, Tensor):
        return Tensor._wrap(value.data.astype(dtype))
    return value.astype(dtype)


def promote(*operands: Any, floating: bool = False) -> tuple:
    """``operands`` converted to their :func:`result_dtype` (see there for the rules).

    Lists and other Python data become Tensors first (floats as float32), on
    the device of the first Tensor among the operands.
    """
    if not floating and all(isinstance(x, Tensor) for x in operands) and len({x.dtype for x in operands}) == 1:
        return operands  # the common case (e.g. a residual sum): nothing to do
    like = next((x for x in operands if isinstance(x, Tensor)), None)
    device = like.device if like is not None else None
    operands = tuple(
        x if isinstance(x, _SCALAR_TYPES) or hasattr(x, "dtype") else Tensor(x, device=device) for x in operands
    )
    dtype = result_dtype(*operands, floating=floating)
    return tuple(_cast_operand(x, dtype) for x in operands)


def _as_input(value: Any, like: Tensor | None) -> Tensor:
    """Wrap a non-Tensor positional argument (scalar or array) as a constant Tensor.

    Python scalars take the dtype and device of the Tensor they are combined
    with, so that ``x * 0.5`` stays float32 when ``x`` is float32.
    """
    if isinstance(value, Tensor):
        return value
    if like is None:
        return Tensor(value)
    xp = like.xp
    if isinstance(value, _SCALAR_TYPES):
        # Scalars (Python or NumPy, e.g. np.int64 from a count) adopt a float tensor's dtype,
        # as in PyTorch: otherwise NumPy's rules would turn float32 * np.int64(3) into float64.
        # (Operations that promote, like ``+``, have already given the scalar its dtype.)
        dtype = like.dtype if like.dtype.kind == "f" else None
        return Tensor._wrap(xp.asarray(value, dtype=dtype))
    if isinstance(value, np.ndarray) or backend.device_of(value).type == "cuda":
        if backend.device_of(value) != like.device:
            raise DeviceError(f"an array on {backend.device_of(value)} was combined with a tensor on {like.device}")
        return Tensor(value)  # Tensor() checks the dtype (no strings); the array itself is kept, not copied
    return Tensor(value, device=like.device)


class Function:
    """Base class of every differentiable operation (see the module docstring).

    Set ``promotes = True`` on an operation whose inputs should first be
    brought to one dtype by PyTorch's rules (see :func:`result_dtype`): the
    elementwise arithmetic does; a loss taking float logits and integer
    targets must not.
    """

    promotes = False

    @staticmethod
    def forward(ctx: Context, *arrays: Any, **params: Any) -> Any:
        raise NotImplementedError("a Function subclass must define forward")

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        raise NotImplementedError("a Function subclass must define backward")

    @classmethod
    def apply(cls, *inputs: Any, **params: Any) -> Tensor:
        """Run ``forward`` on the inputs' arrays and, if needed, record the graph node."""
        if cls.promotes:
            inputs = promote(*inputs)
        like = next((x for x in inputs if isinstance(x, Tensor)), None)
        tensors = tuple(_as_input(x, like) for x in inputs)
        if len(tensors) > 1:
            first = tensors[0].device
            for t in tensors[1:]:
                if t.device != first:
                    raise DeviceError(
                        f"{cls.__name__}: inputs are on different devices ({first} and {t.device}); "
                        "move them with .to(device) first"
                    )
        needs = tuple(t.requires_grad for t in tensors)
        record = is_grad_enabled() and any(needs)
        ctx = Context(cls, tensors if record else (), needs)
        out = cls.forward(ctx, *(t.data for t in tensors), **params)
        if isinstance(out, np.generic):
            # NumPy gives scalars, not 0-d arrays, for full reductions and x[i]; Tensor.data is always an array.
            out = np.asarray(out)
        result = Tensor._wrap(out, requires_grad=record and out.dtype.kind == "f")
        if result.requires_grad:
            result._ctx = ctx
        return result
