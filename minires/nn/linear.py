"""Linear (fully connected) layer, and Identity, the layer that does nothing.

``Linear`` is the classifier at the end of a ResNet: global average pooling
gives ``(N, C)`` features and ``Linear(C, num_classes)`` turns them into
logits. ``Identity`` is a placeholder, e.g. the shortcut of a residual block
whose shapes already match.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import functional as F
from . import init
from .conv import _positive_int
from .module import Module
from .parameter import Parameter

__all__ = ["Linear", "Identity"]


class Linear(Module):
    """``y = x @ W.T + b``.

    Args:
        in_features, out_features: sizes of the last axis in and out.
        bias: learn the bias ``b``.

    Shapes: weight ``(out_features, in_features)``, bias ``(out_features,)``;
    input ``(..., in_features)`` -> output ``(..., out_features)``.
    Default initialisation is PyTorch's: U(-1/sqrt(in_features), 1/sqrt(in_features))
    for both weight and bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=np.float32))
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dtype=np.float32))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw weight and bias with PyTorch's default scheme."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # bound 1/sqrt(fan_in), see Conv2d
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """``(..., in_features) -> (..., out_features)``."""
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear(in_features={self.in_features}) expects input of shape (..., {self.in_features}), "
                f"got {tuple(x.shape)}"
            )
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """Returns its input unchanged (any shape). Constructor arguments are ignored, as in PyTorch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x):
        """Return ``x`` itself (no copy, no graph node)."""
        return x
