"""Pooling layers: MaxPool2d, AvgPool2d and AdaptiveAvgPool2d over NCHW inputs.

They have no parameters; they hold their window settings and call
:mod:`minires.nn.functional`. ResNets use a 3x3/2 max pool in the ImageNet
stem and a global average pool (``AdaptiveAvgPool2d(1)``) before the
classifier, which turns each ``C x H x W`` feature map into ``C`` numbers
whatever the input size.
"""

from __future__ import annotations

from typing import Any

from ..kernels.im2col import pair
from . import functional as F
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _setting(value: Any) -> Any:
    """Keep ints as ints (for a PyTorch-like repr), pairs as tuples."""
    return tuple(value) if isinstance(value, (tuple, list)) else value


class _Pool2d(Module):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        super().__init__()
        # Validate eagerly so a bad setting fails when the model is built, not at the first batch.
        kh, kw = pair("kernel_size", kernel_size, 1)
        pair("stride", kernel_size if stride is None else stride, 1)
        ph, pw = pair("padding", padding, 0)
        if ph > kh // 2 or pw > kw // 2:
            raise ValueError(f"padding {padding!r} must be at most half of kernel_size {kernel_size!r}")
        self.kernel_size = _setting(kernel_size)
        # PyTorch's default: the stride equals the window, so windows tile without overlap.
        self.stride = _setting(kernel_size if stride is None else stride)
        self.padding = _setting(padding)

    def _check(self, x: Any) -> None:
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each ``kernel_size`` window (padding counts as -inf).

    Shapes: ``(N, C, H, W) -> (N, C, H_out, W_out)`` with
    ``H_out = (H + 2*pad - k) // stride + 1``; stride defaults to kernel_size.
    """

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        self._check(x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each ``kernel_size`` window; shapes as :class:`MaxPool2d`."""

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        self._check(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size; minires supports ``output_size=1`` only.

    That is global average pooling, the only kind ResNets use (the functional
    form has no other): ``(N, C, H, W) -> (N, C, 1, 1)`` whatever H and W.
    """

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        if pair("output_size", output_size, 1) != (1, 1):
            raise ValueError(
                f"AdaptiveAvgPool2d supports only output_size 1 or (1, 1) (global average pooling), got {output_size!r}"
            )
        self.output_size = _setting(output_size)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, out_h, out_w)``."""
        if x.ndim != 4:
            raise ValueError(f"AdaptiveAvgPool2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
