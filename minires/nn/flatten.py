"""Flatten: merge a range of axes into one, e.g. ``(N, C, 1, 1) -> (N, C)`` before a Linear."""

from __future__ import annotations

from . import functional as F
from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """Merge axes ``start_dim..end_dim`` (inclusive, negatives count from the end).

    Shapes: ``(N, C, H, W) -> (N, C*H*W)`` with the defaults (the batch axis is kept).
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        """``(N, C, H, W) -> (N, C*H*W)`` with the defaults."""
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
