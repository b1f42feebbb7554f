"""Memory for the CPU kernels: page-aligned arrays and per-thread scratch buffers.

Page alignment. Before a load may run ahead of an earlier store, Intel cores
compare only the lowest 12 bits of the two addresses (the offset inside a
4 kB page). Arrays that sit a few dozen bytes apart modulo 4096, which is
where ``malloc`` tends to put arrays allocated one after another, make
almost every load wait for a store in flight ("4K aliasing"). So the kernels
allocate their scratch buffers and the large arrays they return at the start
of a page: then all of them share the same offset (zero). The cost is at most
4 kB per array.

Scratch buffers. A ResNet calls the same few convolution geometries over and
over; each thread keeps its chunk-sized buffers between calls instead of
allocating (and page-faulting) them afresh. Measurements: README.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

__all__ = ["PAGE_BYTES", "empty_aligned", "empty_aligned_like", "zeros_aligned", "workspace"]

PAGE_BYTES = 4096


def empty_aligned(xp: Any, shape: Sequence[int] | int, dtype: Any) -> Any:
    """An uninitialised C-contiguous array of ``shape`` whose first element starts a 4 kB page (NumPy)."""
    dtype = xp.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, xp.integer)) else tuple(int(s) for s in shape)
    count = 1
    for size in shape:
        count *= size
    raw = xp.empty(count * dtype.itemsize + PAGE_BYTES, dtype=xp.uint8)
    start = -raw.ctypes.data % PAGE_BYTES
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def zeros_aligned(xp: Any, shape: Sequence[int] | int, dtype: Any) -> Any:
    """Like :func:`empty_aligned`, filled with zeros."""
    out = empty_aligned(xp, shape, dtype)
    out[...] = 0
    return out


def empty_aligned_like(a: Any) -> Any:
    """Like ``np.empty_like(a)``: same shape, dtype and memory order of the axes (a channels-last
    array gives a channels-last one), with the buffer starting a page (NumPy)."""
    outer_first = sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))
    buffer = empty_aligned(np, [a.shape[axis] for axis in outer_first], a.dtype)
    return buffer.transpose([outer_first.index(axis) for axis in range(a.ndim)])


# Every call of the fast path needs a few chunk-sized scratch buffers per
# thread. Allocating them afresh costs more than it seems: buffers of a few
# hundred kB come from mmap, so every first write to each 4 kB page is a page
# fault, and the zero-bordered ones are zeroed each time. A ResNet calls
# the same few geometries over and over, so each thread keeps its buffers,
# keyed by what they hold; least recently used ones are dropped beyond
# _WORKSPACE_ENTRIES (a few MB per thread for a CIFAR ResNet).
_WORKSPACE_ENTRIES = 64
_workspace_local = threading.local()


def workspace(xp: Any, key: tuple, shape: tuple, dtype: Any, zeroed: bool = False) -> Any:
    """A scratch array of ``shape`` owned by the calling thread, reused by later calls with the same key.

    ``zeroed`` buffers are zero when created; callers that rely on parts of
    one staying zero (the border of a padded image) must never write there,
    and must put everything that decides WHERE they write into ``key``.
    Buffers start a memory page.
    """
    cache = getattr(_workspace_local, "buffers", None)
    if cache is None:
        cache = _workspace_local.buffers = OrderedDict()
    full_key = (key, tuple(shape), xp.dtype(dtype).str, zeroed)
    buf = cache.get(full_key)
    if buf is None:
        buf = cache[full_key] = (zeros_aligned if zeroed else empty_aligned)(xp, shape, dtype)
        while len(cache) > _WORKSPACE_ENTRIES:
            cache.popitem(last=False)
    else:
        cache.move_to_end(full_key)
    return buf
