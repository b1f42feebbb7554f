"""Conv2d: a learnt 2-D convolution layer.

The layer only owns the weight ``(C_out, C_in, kH, kW)`` and the optional bias
``(C_out,)`` and remembers its settings; the arithmetic (im2col + matmul,
and its backward) lives in :func:`minires.nn.functional.conv2d`.

Default initialisation is PyTorch's: ``kaiming_uniform_(w, a=sqrt(5))``,
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = C_in*kH*kW``, and the
bias from the same range. The ResNet models replace the weights with He
normal initialisation (see :mod:`minires.nn.init`); these defaults are what a
bare ``Conv2d`` gets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..kernels.im2col import pair
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter

__all__ = ["Conv2d"]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Conv2d(Module):
    """2-D convolution over an NCHW input.

    Args:
        in_channels: C_in. out_channels: C_out.
        kernel_size, stride, padding, dilation: an int or an (h, w) pair.
        bias: learn a per-channel bias (ResNets use ``bias=False`` before BN,
            whose beta makes a conv bias redundant).

    Shapes: input ``(N, C_in, H, W)`` -> output ``(N, C_out, H_out, W_out)``
    with ``H_out = (H + 2*pad_h - dil_h*(kH-1) - 1) // stride_h + 1`` (W alike).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = pair("kernel_size", kernel_size, 1)
        self.stride = pair("stride", stride, 1)
        self.padding = pair("padding", padding, 0)
        self.dilation = pair("dilation", dilation, 1)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(self.out_channels, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw weight and bias with PyTorch's default scheme (see the module docstring)."""
        # a=sqrt(5) gives gain sqrt(1/3), so bound = sqrt(3) * gain / sqrt(fan_in) = 1/sqrt(fan_in).
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.fan_in_and_fan_out(self.weight)
            bound = 1.0 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d({self.in_channels}, {self.out_channels}) expects input of shape "
                f"(N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        # Same text as PyTorch, which omits settings left at their defaults.
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s
