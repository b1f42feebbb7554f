"""Checking axis (dim) arguments: one rule for every operation that takes one.

Python indexing and ``axis % ndim`` both wrap around, so without a check
``permute(3, 0)`` on a 2-D tensor would quietly act as ``permute(1, 0)``.
Every op therefore passes its axes through :func:`normalize_axis`, which
accepts PyTorch's range and names the problem otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class AxisError(IndexError, ValueError):
    """An axis out of range for a tensor.

    An ``IndexError``, as in PyTorch; also a ``ValueError`` (as NumPy's own
    ``AxisError`` is), so code that caught minires' earlier ValueError still works.
    """


def normalize_axis(axis: Any, ndim: int, op: str, new_axis: bool = False) -> int:
    """Check ``axis`` for a tensor with ``ndim`` dimensions and return it in ``0..ndim-1``.

    Args:
        axis: an int; negative values count from the end (-1 is the last axis).
        ndim: the number of dimensions of the tensor.
        op: the operation's name, for the error message.
        new_axis: ``axis`` says where a NEW dimension goes (``stack``): then there
            are ``ndim + 1`` places, ``-ndim-1..ndim``.
    Returns:
        the axis as a non-negative int. A 0-d tensor accepts 0 and -1 as if it
        had one dimension (PyTorch's rule); the caller decides what that means.
    Raises:
        AxisError: ``axis`` out of range. TypeError: not an int.
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: an axis must be an int, got {axis!r}")
    places = ndim + 1 if new_axis else max(ndim, 1)
    if not -places <= axis < places:
        raise AxisError(
            f"{op}: axis {int(axis)} is out of range for a tensor with {ndim} dimension(s) "
            f"(expected {-places} to {places - 1})"
        )
    return int(axis) % places
