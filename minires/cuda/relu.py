"""ReLU on the GPU: two one-line elementwise kernels.

Same semantics as :mod:`minires.kernels.relu` (and PyTorch):

    forward:   y  = max(x, 0), and relu(NaN) = NaN
    backward:  dx = 0 where the saved OUTPUT y <= 0, else g   (y > 0 exactly where x > 0)

Each is one read and one write per element, so a hand-written kernel can do
no better than one pass over memory; what writing it buys over
``cupy.maximum(x, 0)`` and ``g * ~(y <= 0)`` is that the backward is ONE
kernel instead of three (compare, negate, multiply) with two temporaries,
and that the learner sees the whole GPU side of ReLU in two lines of CUDA.

``cupy.ElementwiseKernel`` takes the parameter lists and the body for ONE
element; CuPy generates the loop over all elements and compiles it on first
use, once per dtype (``T`` is the element type of the arrays passed in).

One deliberate difference from the NumPy backward: it selects (``y <= 0 ?
0 : g``), as PyTorch does, where NumPy multiplies ``g * mask``; the two agree
for every finite g, but an infinite or NaN g at a position with y <= 0 gives
0 here and NaN on the CPU (inf * 0).
"""

from __future__ import annotations

from typing import Any

from .. import dispatch
from ..backend import get_array_module
from . import supported

__all__ = ["relu_forward", "relu_backward", "FORWARD", "BACKWARD"]

FORWARD = dict(
    in_params="T x",
    out_params="T y",
    # NaN > 0 is false, so "x > 0 ? x : 0" would turn NaN into 0; x != x is
    # true only for NaN, and keeps it (like cupy.maximum and torch.relu).
    operation="y = (x > T(0) || x != x) ? x : T(0);",
    name="minires_relu_forward",
)

BACKWARD = dict(
    in_params="T g, T y",
    out_params="T dx",
    # Every comparison with NaN is false, so a NaN output lets g through, as in PyTorch.
    operation="dx = (y <= T(0)) ? T(0) : g;",
    name="minires_relu_backward",
)

_cache: dict = {}


def _kernel(cp: Any, spec: dict) -> Any:
    key = (id(cp), spec["name"])
    if key not in _cache:
        _cache[key] = cp.ElementwiseKernel(spec["in_params"], spec["out_params"], spec["operation"], spec["name"])
    return _cache[key]


def relu_forward(x: Any) -> Any:
    """max(x, 0) elementwise for a CuPy array; same shape and dtype out (C-contiguous)."""
    cp = get_array_module(x)
    if not supported(x):
        return cp.maximum(x, 0)  # other dtypes: CuPy's own kernel, same result
    return _kernel(cp, FORWARD)(x)


def relu_backward(grad_out: Any, out: Any) -> Any:
    """dLoss/dx from dLoss/dy and the forward OUTPUT y (CuPy arrays of one shape)."""
    cp = get_array_module(grad_out, out)
    if not supported(grad_out, out):
        return grad_out * ~(out <= 0)
    return _kernel(cp, BACKWARD)(grad_out, out)


dispatch.register("relu_forward", "cuda")(relu_forward)
dispatch.register("relu_backward", "cuda")(relu_backward)
