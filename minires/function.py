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

__all__ = ["Function", "Context"]


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
    if isinstance(value, (bool, int, float, np.generic)):
        # Scalars (Python or NumPy, e.g. np.int64 from a count) adopt a float tensor's dtype,
        # as in PyTorch: otherwise NumPy's rules would turn float32 * np.int64(3) into float64.
        dtype = like.dtype if like.dtype.kind == "f" else None
        return Tensor._wrap(xp.asarray(value, dtype=dtype))
    if isinstance(value, np.ndarray) or backend.device_of(value).type == "cuda":
        if backend.device_of(value) != like.device:
            raise DeviceError(f"an array on {backend.device_of(value)} was combined with a tensor on {like.device}")
        return Tensor._wrap(value)
    return Tensor(value, device=like.device)


class Function:
    """Base class of every differentiable operation (see the module docstring)."""

    @staticmethod
    def forward(ctx: Context, *arrays: Any, **params: Any) -> Any:
        raise NotImplementedError("a Function subclass must define forward")

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        raise NotImplementedError("a Function subclass must define backward")

    @classmethod
    def apply(cls, *inputs: Any, **params: Any) -> Tensor:
        """Run ``forward`` on the inputs' arrays and, if needed, record the graph node."""
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
