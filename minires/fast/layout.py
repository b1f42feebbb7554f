"""Channels-last memory: NCHW arrays whose C values of a pixel are adjacent in memory.

An (N, C, H, W) array stored as a C-contiguous (N, H, W, C) buffer seen
through ``transpose(0, 3, 1, 2)``: PyTorch's ``torch.channels_last``. Shapes,
indexing and values are those of any NCHW array; only the strides differ.
The fast convolution reads and writes this layout (README.md, "Channels-last").
"""

from __future__ import annotations

from typing import Any, Sequence

from .memory import empty_aligned

__all__ = ["empty_channels_last", "is_channels_last"]


def empty_channels_last(xp: Any, shape: Sequence[int], dtype: Any) -> Any:
    """An uninitialised array of NCHW ``shape`` (N, C, H, W) stored channels-last.

    The memory is a C-contiguous (N, H, W, C) buffer; the returned array is
    its ``transpose(0, 3, 1, 2)`` view, so ``a[n, c, h, w]`` indexes as usual
    while the C values of each pixel are adjacent in memory (PyTorch's
    ``torch.channels_last``). The buffer starts a memory page (:mod:`.memory`).
    """
    n, c, h, w = shape
    return empty_aligned(xp, (n, h, w, c), dtype).transpose(0, 3, 1, 2)


def is_channels_last(a: Any) -> bool:
    """True for a 4-D array stored channels-last, i.e. a transposed C-contiguous (N, H, W, C) buffer.

    An array that is ALSO C-contiguous (C == 1 or H*W == 1) counts as NCHW:
    both orders are then the same memory.
    """
    return a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous
