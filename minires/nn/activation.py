"""ReLU as a module, so it can sit in a Sequential and show up in the model's repr."""

from __future__ import annotations

from . import functional as F
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """``max(x, 0)`` elementwise; any shape in, same shape out.

    Args:
        inplace: accepted for compatibility with PyTorch code; minires always
            computes out of place (the autograd engine has no in-place ops),
            which gives the same values.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        """``(*) -> (*)``: negative entries become 0."""
        return F.relu(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
