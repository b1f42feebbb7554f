"""Functional 2-D convolution, and im2col/col2im as differentiable operations.

The arithmetic lives in :mod:`minires.kernels.conv` (with the derivation of
the backward pass) and :mod:`minires.kernels.im2col`; :mod:`minires.dispatch`
chooses the implementation that runs. This module checks arguments, turning
every mistake into an error that names the offending value, and connects the
kernels to autograd.

``bias`` is optional, so :class:`Conv2dFunction` takes it as an optional
third positional input and returns one gradient per input it was given.
"""

from __future__ import annotations

from typing import Any

from ...dispatch import kernel
from ...function import Function
from ...kernels.im2col import output_hw, pair
from ...tensor import Tensor

__all__ = ["conv2d", "im2col", "col2im", "Conv2dFunction", "Im2col", "Col2im"]


def _as_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else Tensor(value)


def _check_float(name: str, t: Tensor) -> None:
    if t.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------


class Conv2dFunction(Function):
    """y = conv2d(x, weight) (+ bias); backward by hand (see :mod:`minires.kernels.conv`).

    Positional inputs: x (N, C, H, W), weight (C_out, C, kH, kW), optionally
    bias (C_out,). Keyword parameters: stride, padding, dilation as pairs.
    Saves x and weight, not the im2col columns (kH*kW times the size of x):
    the backward pass recomputes them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias=None, *, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        ctx.has_bias = bias is not None
        return kernel("conv2d_forward", x)(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        backward = kernel("conv2d_backward", x)
        grad_x, grad_w, grad_b = backward(x, weight, grad, *ctx.geometry, needs_input_grad=ctx.needs_input_grad)
        return (grad_x, grad_w, grad_b) if ctx.has_bias else (grad_x, grad_w)


def conv2d(
    x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1
) -> Tensor:
    """2-D convolution (cross-correlation), PyTorch's ``F.conv2d`` without groups.

    Args:
        x: (N, C_in, H, W) Tensor (or array: treated as a constant).
        weight: (C_out, C_in, kH, kW), same dtype as x.
        bias: (C_out,) or None.
        stride: int or (sH, sW), >= 1.
        padding: int or (pH, pW), >= 0; zeros added on both sides.
        dilation: int or (dH, dW), >= 1; spacing between kernel taps.

    Returns:
        (N, C_out, H_out, W_out) Tensor, dtype of x, with
        ``H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH) + 1`` (same for W).

    Raises:
        ValueError: input or weight not 4-D, channel mismatch, bias of the
            wrong shape, kernel larger than the padded input, stride or
            dilation < 1, padding < 0.
        TypeError: non-integer stride/padding/dilation, dtype mismatch or
            non-floating dtype.
    """
    x, weight = _as_tensor(x), _as_tensor(weight)
    if x.ndim != 4:
        raise ValueError(f"conv2d: input must be 4-D (N, C_in, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (C_out, C_in, kH, kW), got shape {weight.shape}")
    if min(weight.shape[2:]) < 1:
        raise ValueError(f"conv2d: the kernel size must be at least 1x1, got weight of shape {weight.shape}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels (shape {x.shape}) but weight of shape {weight.shape} "
            f"expects {weight.shape[1]} input channels"
        )
    _check_float("conv2d input", x)
    if weight.dtype != x.dtype:
        raise TypeError(f"conv2d: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one of them")
    inputs = [x, weight]
    if bias is not None:
        bias = _as_tensor(bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"conv2d: bias must have shape ({weight.shape[0]},) for weight {weight.shape}, got {bias.shape}"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"conv2d: input dtype {x.dtype} and bias dtype {bias.dtype} differ; convert one of them")
        inputs.append(bias)
    stride_ = pair("conv2d stride", stride, 1)
    padding_ = pair("conv2d padding", padding, 0)
    dilation_ = pair("conv2d dilation", dilation, 1)
    output_hw(x.shape[2:], weight.shape[2:], stride_, padding_, dilation_, what="conv2d")  # raises if empty
    return Conv2dFunction.apply(*inputs, stride=stride_, padding=padding_, dilation=dilation_)


# ---------------------------------------------------------------------------
# im2col / col2im as differentiable operations
# ---------------------------------------------------------------------------


class Im2col(Function):
    """cols = im2col(x). Its backward is col2im, because col2im is its adjoint."""

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding, dilation):
        ctx.args = (x.shape, kernel_size, stride, padding, dilation)
        return kernel("im2col", x)(x, kernel_size, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        return kernel("col2im", grad)(grad, *ctx.args)


class Col2im(Function):
    """x = col2im(cols). Its backward is im2col (the adjoint of the adjoint)."""

    @staticmethod
    def forward(ctx, cols, *, input_shape, kernel_size, stride, padding, dilation):
        ctx.args = (kernel_size, stride, padding, dilation)
        return kernel("col2im", cols)(cols, input_shape, kernel_size, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        return kernel("im2col", grad)(grad, *ctx.args)


def _window_args(kernel_size: Any, stride: Any, padding: Any, dilation: Any, fn: str) -> tuple:
    return (
        pair(f"{fn} kernel_size", kernel_size, 1),
        pair(f"{fn} stride", stride, 1),
        pair(f"{fn} padding", padding, 0),
        pair(f"{fn} dilation", dilation, 1),
    )


def im2col(x: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1) -> Tensor:
    """Every sliding window of x as a column, PyTorch ``F.unfold`` layout (differentiable).

    Args:
        x: (N, C, H, W).
        kernel_size, stride, padding, dilation: int or (height, width) pair.

    Returns:
        (N, C*kH*kW, L) Tensor, L = H_out*W_out; row index (c, i, j) with j
        fastest, column index (h_out, w_out) with w_out fastest. See
        :mod:`minires.kernels.im2col` for the layout and for why the backward
        pass (col2im) sums overlapping windows.
    """
    x = _as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"im2col: input must be 4-D (N, C, H, W), got shape {x.shape}")
    k, s, p, d = _window_args(kernel_size, stride, padding, dilation, "im2col")
    output_hw(x.shape[2:], k, s, p, d, what="im2col")
    return Im2col.apply(x, kernel_size=k, stride=s, padding=p, dilation=d)


def col2im(
    cols: Any, input_shape: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1
) -> Tensor:
    """The adjoint of :func:`im2col` (PyTorch ``F.fold`` with output_size=(H, W)), differentiable.

    Adds every column back onto the pixels it was copied from, so pixels shared
    by overlapping windows receive the SUM of their entries: col2im is the
    adjoint of im2col (<im2col(x), y> = <x, col2im(y)>), not its inverse.

    Args:
        cols: (N, C*kH*kW, L) in the layout :func:`im2col` returns.
        input_shape: (N, C, H, W) of the image the columns describe.
        kernel_size, stride, padding, dilation: as given to im2col.

    Returns:
        (N, C, H, W) Tensor.
    """
    cols = _as_tensor(cols)
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"col2im: input_shape must be (N, C, H, W), got {tuple(input_shape)!r}")
    shape = tuple(int(v) for v in input_shape)
    k, s, p, d = _window_args(kernel_size, stride, padding, dilation, "col2im")
    ho, wo = output_hw(shape[2:], k, s, p, d, what="col2im")
    expected = (shape[0], shape[1] * k[0] * k[1], ho * wo)
    if cols.shape != expected:
        raise ValueError(
            f"col2im: cols must have shape {expected} for input_shape {shape}, kernel {k}, stride {s}, "
            f"padding {p}, dilation {d}; got {cols.shape}"
        )
    return Col2im.apply(cols, input_shape=shape, kernel_size=k, stride=s, padding=p, dilation=d)
