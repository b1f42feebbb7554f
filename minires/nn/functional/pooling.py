"""Functional pooling: max_pool2d, avg_pool2d, adaptive_avg_pool2d.

The arithmetic lives in :mod:`minires.kernels.pooling` (the implementation
that runs is chosen by :mod:`minires.dispatch`); this module checks arguments
and connects the kernels to autograd.
"""

from __future__ import annotations

from typing import Any

from ...dispatch import kernel
from ...function import Function
from ...kernels.im2col import output_hw, pair
from ...tensor import Tensor

__all__ = [
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "MaxPool2dFunction",
    "AvgPool2dFunction",
    "GlobalAvgPoolFunction",
]


class MaxPool2dFunction(Function):
    """Max pooling; keeps only the winning tap of each window for backward."""

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding):
        y, argmax = kernel("max_pool2d_forward", x)(x, kernel_size, stride, padding)
        ctx.argmax = argmax  # a side output: integers, not differentiable
        ctx.args = (x.shape, kernel_size, stride, padding)
        return y

    @staticmethod
    def backward(ctx, grad):
        return kernel("max_pool2d_backward", grad)(grad, ctx.argmax, *ctx.args)


class AvgPool2dFunction(Function):
    """Average pooling (zero padding counted); backward needs only the geometry."""

    @staticmethod
    def forward(ctx, x, *, kernel_size, stride, padding):
        ctx.args = (x.shape, kernel_size, stride, padding)
        return kernel("avg_pool2d_forward", x)(x, kernel_size, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        return kernel("avg_pool2d_backward", grad)(grad, *ctx.args)


class GlobalAvgPoolFunction(Function):
    """Mean over each channel's whole H x W plane: (N, C, H, W) -> (N, C, 1, 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.input_shape = x.shape
        return kernel("global_avg_pool_forward", x)(x)

    @staticmethod
    def backward(ctx, grad):
        return kernel("global_avg_pool_backward", grad)(grad, ctx.input_shape)


def _pool_args(fn: str, x: Any, kernel_size: Any, stride: Any, padding: Any) -> tuple:
    """Check a pooling call; returns (x as Tensor, kernel, stride, padding) with pairs."""
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if x.ndim != 4:
        raise ValueError(f"{fn}: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{fn}: input must be floating point, got dtype {x.dtype}")
    kernel = pair(f"{fn} kernel_size", kernel_size, 1)
    # PyTorch: stride=None (the default) means stride = kernel_size.
    stride_ = kernel if stride is None else pair(f"{fn} stride", stride, 1)
    padding_ = pair(f"{fn} padding", padding, 0)
    if padding_[0] > kernel[0] // 2 or padding_[1] > kernel[1] // 2:
        raise ValueError(
            f"{fn}: padding {padding_} must be at most half of kernel_size {kernel} "
            "(otherwise a window could hold only padding)"
        )
    output_hw(x.shape[2:], kernel, stride_, padding_, (1, 1), what=fn)
    return x, kernel, stride_, padding_


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """Maximum over each kH x kW window of each channel (PyTorch's ``F.max_pool2d``).

    Args:
        x: (N, C, H, W) floating Tensor.
        kernel_size: int or (kH, kW).
        stride: int or pair; None (default) means kernel_size.
        padding: int or pair, at most half the kernel; pads with -inf.

    Returns:
        (N, C, H_out, W_out) with H_out = floor((H + 2 pH - kH) / sH) + 1.
        Backward routes each window's gradient to its (first) maximum.
    """
    x, k, s, p = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    return MaxPool2dFunction.apply(x, kernel_size=k, stride=s, padding=p)


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """Mean over each kH x kW window (PyTorch's ``F.avg_pool2d``, count_include_pad=True).

    Args:
        x: (N, C, H, W) floating Tensor.
        kernel_size: int or (kH, kW).
        stride: int or pair; None (default) means kernel_size.
        padding: int or pair, at most half the kernel; zeros that COUNT in
            the mean (every window is divided by kH*kW).

    Returns:
        (N, C, H_out, W_out) with H_out = floor((H + 2 pH - kH) / sH) + 1.
    """
    x, k, s, p = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2dFunction.apply(x, kernel_size=k, stride=s, padding=p)


def adaptive_avg_pool2d(x: Any, output_size: Any) -> Tensor:
    """Global average pooling: PyTorch's ``F.adaptive_avg_pool2d`` for output size 1 only.

    ResNets end with it: each channel's whole feature map is averaged to one
    number, whatever the input resolution.

    Args:
        x: (N, C, H, W) floating Tensor.
        output_size: 1 or (1, 1). Other sizes raise ValueError (minires does
            not implement general adaptive pooling).

    Returns:
        (N, C, 1, 1) Tensor.
    """
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if x.ndim != 4:
        raise ValueError(f"adaptive_avg_pool2d: input must be 4-D (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"adaptive_avg_pool2d: input must be floating point, got dtype {x.dtype}")
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2 or any(isinstance(v, bool) or v != 1 for v in sizes):
        raise ValueError(
            f"adaptive_avg_pool2d supports only output_size 1 or (1, 1) (global average pooling), "
            f"got {output_size!r}"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"adaptive_avg_pool2d: input has an empty spatial size, shape {x.shape}")
    return GlobalAvgPoolFunction.apply(x)
