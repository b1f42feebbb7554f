"""Page-aligned arrays for the CPU kernels.

Why a buffer's address can change the speed of the code that uses it
--------------------------------------------------------------------
A CPU core runs many loads and stores at once, and before a load may run
ahead of an earlier store it must know that the two do not touch the same
bytes. Intel cores decide that quickly by comparing only the lowest 12 bits
of the two addresses (the offset inside a 4 kB page). When a loop reads one
array and writes another whose addresses differ by a small amount modulo
4096, almost every load "looks like" it depends on a store still in flight
and waits for it: so-called 4K aliasing. The arithmetic is the same; only the
placement of the arrays differs.

Where NumPy's memory comes from decides this by chance. ``malloc`` puts each
block 16 bytes after a header, so arrays allocated one after another often
sit a few dozen bytes apart modulo 4096, exactly the bad case; and which
arrays end up where changes from process to process. Measured on the 2-core
machine of ``benchmarks/README.md``: ``np.subtract(a, b, out=o)`` on 64 kB
arrays ran at 7-8 billion elements per second when all three started at the
same offset in a page, and at about 3 when they sat 16 and 32 bytes apart;
the backward pass of a 32-channel 16x16 convolution (batch 128, one thread)
took 10.9-11.3 ms with its scratch buffers page-aligned and 11.9-12.3 ms with
them where ``malloc`` put them (same code). A whole ResNet-20 training step
on one thread: 574-578 ms against 601-625 ms (fastest steps of three runs
each).

The kernels therefore allocate their scratch buffers and the large arrays
they return at the start of a page, and the autograd engine does the same
for the gradient sums at residual connections: then all of them share the
same offset (zero), and so do the slices the kernels work on, which start at
whole images (one image of a CIFAR ResNet's activations is 16-64 kB, a
whole number of pages). The cost is at most 4 kB per array.

On CuPy these are the plain ``empty`` and ``zeros``: this is a CPU effect,
and CuPy manages its own memory pool.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backend import get_array_module

__all__ = ["PAGE_BYTES", "empty_aligned", "empty_aligned_like", "zeros_aligned"]

PAGE_BYTES = 4096


def empty_aligned(xp: Any, shape: Sequence[int] | int, dtype: Any) -> Any:
    """An uninitialised C-contiguous array of ``shape`` whose first element starts a 4 kB page (NumPy)."""
    if xp.__name__ != "numpy":
        return xp.empty(shape, dtype=dtype)
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
    if xp.__name__ != "numpy":
        return xp.zeros(shape, dtype=dtype)
    out = empty_aligned(xp, shape, dtype)
    out[...] = 0
    return out


def empty_aligned_like(a: Any) -> Any:
    """Like ``np.empty_like(a)``: same shape, dtype and memory order of the axes (a channels-last
    array gives a channels-last one), with the buffer starting a page (NumPy)."""
    xp = get_array_module(a)
    if xp.__name__ != "numpy":
        return xp.empty_like(a)
    outer_first = sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))
    buffer = empty_aligned(xp, [a.shape[axis] for axis in outer_first], a.dtype)
    return buffer.transpose([outer_first.index(axis) for axis in range(a.ndim)])
