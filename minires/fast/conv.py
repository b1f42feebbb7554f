"""The fast CPU convolution: the same numbers as :mod:`minires.kernels.conv`, chunked and threaded.

Same mathematics as the reference (y = W_mat @ im2col(x); d weight and d x
from the same unfolded windows); what changes is how the work meets the
memory. In short (each point measured, see README.md, "Convolution"):

1. Channels-last inside and out: the arrays returned are NCHW in shape,
   channels-last in memory (:mod:`.layout`).
2. The width is unfolded (kW copies of a pixel), not the full window: the kH
   kernel rows become kH matrix products on row ranges of one buffer.
3. A few images at a time, sized to stay in cache; the backward pass
   recomputes a chunk's unfold instead of keeping the full column matrix.
4. Chunks dealt to kernel threads with BLAS held to one thread (:mod:`.threads`).
5. With unit stride, d x is itself a convolution of the padded gradient with
   the flipped kernel: copies and products, no scatter.
6. d weight read off that same unfolded gradient.
7. Skinny products in blocks that suit OpenBLAS's small-matrix kernels.
8. d weight's long sums over the pixels in blocks of 128 rows.
9. 3x3 convolutions with many channels (forward, d x and d weight) by
   Winograd's F(2x2, 3x3) (:mod:`.winograd`): 2.25x fewer multiplications.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .. import dispatch
from ..kernels.im2col import output_hw
from . import winograd
from .layout import empty_channels_last
from .memory import workspace
from .threads import num_threads, run_chunks

__all__ = ["conv2d_forward", "conv2d_backward"]

Pair = tuple[int, int]


# ---------------------------------------------------------------------------
# Fast path building block: a chunk of images, unfolded along the width only
# ---------------------------------------------------------------------------


class _RowWindows:
    """Scratch buffers holding a chunk of images unfolded along the WIDTH only.

    Full im2col copies each pixel kH*kW times. Unfolding only the kW offsets of
    each row copies it kW times (3x instead of 9x for a 3x3 kernel); the kH
    kernel rows are then handled by kH matrix products on shifted, contiguous row
    ranges of that buffer, added together::

        y_rows = sum_i  kernel_row(i) @ W_i   kernel_row(i): (H_out*m*W_out, kW*C)
                                            W_i:    (kW*C, C_out), W_i[(j, c), o] = weight[o, c, i, j]

    Layout. ``padded`` is (rows, m, Wp, C): image rows outermost, then the
    images of the chunk, then channels-last pixels. ``unfolded`` is
    (sH, Q, m, W_out, kW, C): padded row ``q*sH + r`` is stored at [r, q], so
    that for ANY stride the rows one kernel row needs (h_out*sH + i*dH for
    h_out = 0..H_out-1) are the consecutive rows q = i*dH//sH + h_out of phase
    r = i*dH % sH. Consecutive rows and the images inside them are adjacent in
    memory, so ``kernel_row(i)`` is a plain 2-D view: no copy, BLAS reads it directly.
    Matrix rows are ordered (h_out, n, w_out).

    ``padding`` may be negative (the transposed convolution of the backward
    pass needs that): that many rows/columns are cropped from each side.
    """

    def __init__(
        self,
        xp: Any,
        channels: int,
        in_hw: Pair,
        kernel: Pair,
        stride: Pair,
        padding: Pair,
        dilation: Pair,
        out_hw: Pair,
        dtype: Any,
        role: str = "x",
    ) -> None:
        self.xp, self.channels, self.dtype, self.role = xp, channels, dtype, role
        self.in_hw, self.kernel, self.stride, self.padding, self.dilation, self.out_hw = (
            in_hw, kernel, stride, padding, dilation, out_hw,
        )
        (kh, _), (sh, _), (dh, _) = kernel, stride, dilation
        self.hp, self.wp = in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1]
        self.q = max(i * dh // sh for i in range(kh)) + out_hw[0]  # rows per phase
        # Phase r of the last q may point past the padded input: extra zero rows.
        self.rows = max(self.hp, self.q * sh)
        # kW == 1 with unit stride: the padded buffer already is the unfolded one.
        self.direct = kernel[1] == 1 and stride == (1, 1)
        self.m = 0

    def _allocate(self, m: int) -> None:
        # Sized for exactly m images so that kernel_row() stays one 2-D view (the
        # last, smaller chunk of a batch gets buffers of its own). Kept by the
        # thread between calls: only the interior of ``padded`` is ever
        # written, so its zero border stays zero.
        xp = self.xp
        self.m = m
        key = ("rowwindows", self.role, self.channels, self.in_hw, self.kernel, self.stride, self.padding,
               self.dilation, self.out_hw)
        zeroed = max(self.padding) > 0 or self.rows > self.hp
        self.padded = workspace(xp, key + ("padded",), (self.rows, m, self.wp, self.channels), self.dtype, zeroed)
        # Views used for every chunk, made once here (each costs microseconds
        # of Python while holding the GIL, i.e. while the other thread waits).
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.stride, self.dilation, self.out_hw
        (ph, pw), (h, w) = self.padding, self.in_hw
        lo_h, lo_w = max(ph, 0), max(pw, 0)  # where the image starts in the buffer
        self._cut_h, self._cut_w = max(-ph, 0), max(-pw, 0)  # rows/cols cropped off each side
        self._interior = self.padded[lo_h : lo_h + h - 2 * self._cut_h, :, lo_w : lo_w + w - 2 * self._cut_w, :]
        if self.direct:
            self._row_views = [self.padded[i * dh : i * dh + ho].reshape(ho * m * wo, self.channels) for i in range(kh)]
            return
        self.unfolded = workspace(xp, key + ("unfolded",), (sh, self.q, m, wo, kw, self.channels), self.dtype)
        s_row, s_img, s_col, s_ch = self.padded.strides
        self._windows = xp.lib.stride_tricks.as_strided(
            self.padded,
            shape=(sh, self.q, m, wo, kw, self.channels),
            strides=(s_row, sh * s_row, s_img, sw * s_col, dw * s_col, s_ch),
        )
        # Kernel row i reads phase i*dH % sH, rows q0 = i*dH // sH onwards.
        self._row_views = [
            self.unfolded[i * dh % sh, i * dh // sh : i * dh // sh + ho].reshape(ho * m * wo, -1) for i in range(kh)
        ]

    def fill(self, chunk: Any) -> None:
        """Load ``chunk`` (m, C, H, W), any memory layout, and unfold it."""
        if chunk.shape[0] != self.m:
            self._allocate(chunk.shape[0])
        h, w = self.in_hw
        # Copy 1: (image, channel, row, column) -> (row, image, column, channel), inside the zero border.
        self._interior[...] = chunk[:, :, self._cut_h : h - self._cut_h, self._cut_w : w - self._cut_w].transpose(
            2, 0, 3, 1
        )
        if not self.direct:
            self.unfolded[...] = self._windows  # copy 2: the width unfold (kW copies of each pixel)

    def kernel_row(self, i: int) -> Any:
        """The (H_out*m*W_out, kW*C) matrix of kernel row i (a view)."""
        return self._row_views[i]


def _phase_span(r: int, s: int, pad: int, size: int) -> tuple[int, int, int]:
    """Padded positions q*s + r (q = 0, 1, ...) that are real pixels 0..size-1: (first q, end q, first pixel)."""
    first = max(0, -(-(pad - r) // s))  # smallest q with q*s + r >= pad
    end = max(first, (size - 1 + pad - r) // s + 1)  # one past the largest q with q*s + r - pad < size
    return first, end, first * s + r - pad


def _kernel_row_weights(weight: Any) -> list[Any]:
    """Weight (C_out, C, kH, kW) -> kH matrices (kW*C, C_out), rows in (j, c) order."""
    c_out, c, kh, kw = weight.shape
    xp = np
    return [xp.ascontiguousarray(weight[:, :, i, :].transpose(2, 1, 0)).reshape(kw * c, c_out) for i in range(kh)]


# OpenBLAS (the BLAS NumPy ships) multiplies small matrices with kernels that
# skip its packing copies, and the skinny products of a small convolution run
# much faster that way (README.md, point 7). Those kernels take products of at
# most about a million multiply-adds (rows * K * N). The blocks go to BLAS as
# ONE stacked matmul call, (blocks, rows, K) @ (K, N): NumPy then loops over
# the blocks with the GIL released once, whereas a Python loop of small calls
# makes two kernel threads hand the GIL back and forth at every call. For 64
# channels the blocks would be under 128 rows, where nothing is gained.
_SMALL_GEMM_WORK = 1_000_000
_SMALL_GEMM_MIN_ROWS = 128


def _gemm_block_rows(rows: int, k: int, n: int) -> int:
    """Rows per block for a (rows, k) @ (k, n) product: a divisor of ``rows`` (``rows`` itself: no blocking)."""
    return _block_rows(rows, k, n, _SMALL_GEMM_WORK, _SMALL_GEMM_MIN_ROWS)


@lru_cache(maxsize=256)
def _block_rows(rows: int, k: int, n: int, work: int, min_rows: int) -> int:
    # Cached: the divisor search is a Python loop of up to a few hundred
    # steps, run under the GIL for every product of every chunk otherwise.
    limit = work // max(1, k * n)
    if limit >= rows:
        return rows
    for step in range(limit, min_rows - 1, -1):
        if rows % step == 0:
            return step
    return rows


# d weight's products run the other way: (A, rows) @ (rows, B), a sum over
# every pixel of the chunk. OpenBLAS ran such long sums at 12-16 GFLOP/s on
# the benchmark machine, against 24-41 for the same sums cut into blocks of
# 128 rows (README.md, point 8; blocks of 256 to 2048 rows were slower, some
# no faster than one long sum). So the sum runs in blocks, again as one
# stacked call, and the (blocks, A, B) partial products are then added up.
_REDUCTION_BLOCK_MAX = 128
_REDUCTION_BLOCK_MIN = 32


@lru_cache(maxsize=256)
def _reduction_block_rows(rows: int) -> int:
    """Rows per block for a sum over ``rows``: the largest divisor within the limits (``rows`` itself: no blocking)."""
    if rows <= _REDUCTION_BLOCK_MAX:
        return rows
    for step in range(_REDUCTION_BLOCK_MAX, _REDUCTION_BLOCK_MIN - 1, -1):
        if rows % step == 0:
            return step
    return rows


def _max_reduction_blocks(g: "_Geometry", rows_per_image: int) -> int:
    """Most blocks :func:`_reduction_block_rows` cuts a chunk's rows into: a full chunk's, or the last one's."""
    last = g.n % g.images_per_chunk
    sizes = [g.images_per_chunk * rows_per_image] + ([last * rows_per_image] if last else [])
    return max(rows // _reduction_block_rows(rows) for rows in sizes)


def _blocks(a: Any, step: int) -> Any:
    """The (rows, k) matrix ``a`` as a stack of (step, k) blocks (a view; step divides rows)."""
    return a.reshape(a.shape[0] // step, step, a.shape[1])


def _accumulate_kernel_rows(xp: Any, windows: _RowWindows, row_weights: list[Any], out: Any, scratch: Any) -> Any:
    """out = sum_i windows.kernel_row(i) @ row_weights[i]   (out and scratch: (rows, C_out) buffers).

    Each product runs in row blocks sized for BLAS's small-matrix kernels
    (see ``_SMALL_GEMM_WORK``).
    """
    rows = out.shape[0]
    k, n_out = row_weights[0].shape
    step = _gemm_block_rows(rows, k, n_out)
    for i, weights in enumerate(row_weights):
        target = out if i == 0 else scratch
        xp.matmul(_blocks(windows.kernel_row(i), step), weights, out=_blocks(target, step))
        if i > 0:
            out += scratch
    return out


def _accumulate_products(xp: Any, left: Any, right: Any, total: Any, blocks_out: Any) -> None:
    """total += left.T @ right for (rows, A) ``left`` and (rows, B) ``right``.

    In row blocks (see ``_REDUCTION_BLOCK_MAX``), as one stacked call whose
    (blocks, A, B) products go to ``blocks_out`` (a buffer of at least that
    many (A, B) matrices) and are then summed.
    """
    step = _reduction_block_rows(left.shape[0])
    parts = blocks_out[: left.shape[0] // step]
    xp.matmul(_blocks(left, step).transpose(0, 2, 1), _blocks(right, step), out=parts)
    total += parts.sum(axis=0)


# How many images go into one chunk: enough work (about 8 million
# multiply-adds, and at least 2048 matrix rows) that BLAS runs efficiently
# and that the threads rarely need the GIL (every NumPy call between two
# chunks does; on a busy machine a thread can be descheduled while holding
# it, stalling the other), yet small enough that a chunk's buffers mostly
# stay in cache. For ResNet-20 that is 4 images per chunk in the 32x32
# layers, 8 in the 16x16 ones, 32 in the 8x8 ones and 19 in the 3-channel
# stem. Smaller chunks scaled badly to two threads (README.md, point 3).
_CHUNK_WORK = 1 << 23
_MIN_CHUNK_ROWS = 2048


def _images_per_chunk(xp: Any, n: int, work_per_image: int, rows_per_image: int) -> int:
    by_work = -(-_CHUNK_WORK // max(work_per_image, 1))
    by_rows = -(-_MIN_CHUNK_ROWS // max(rows_per_image, 1))
    by_threads = -(-n // num_threads())  # ceil: leave every thread a chunk
    return max(1, min(max(by_work, by_rows), by_threads))


# ---------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------


def conv2d_forward(x: Any, weight: Any, bias: Any, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """Fast convolution forward (same result as :func:`minires.kernels.conv.conv2d_forward`).

    Args:
        x: (N, C, H, W), any memory layout. weight: (C_out, C, kH, kW).
        bias: (C_out,) or None. stride, padding, dilation: validated pairs.

    Returns:
        y: (N, C_out, H_out, W_out), dtype of x, channels-last in memory
        (README.md, "Channels-last").
    """
    if winograd.applies(x.shape, weight.shape, stride, padding, dilation):
        return winograd.conv3x3(x, weight, bias)
    xp = np
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, dilation)
    row_weights = _kernel_row_weights(weight)
    out = empty_channels_last(xp, (n, c_out, ho, wo), x.dtype)
    out_nhwc = out.transpose(0, 2, 3, 1)  # the buffer itself, (N, H_out, W_out, C_out)
    nb = _images_per_chunk(xp, n, ho * wo * kh * kw * c * c_out, ho * wo)

    def work(starts: list[int]) -> None:
        windows = _RowWindows(xp, c, (h, w), (kh, kw), stride, padding, dilation, (ho, wo), x.dtype)
        result = workspace(xp, ("rows", 0), (nb * ho * wo * c_out,), x.dtype)
        scratch = workspace(xp, ("rows", 1), (nb * ho * wo * c_out,), x.dtype)
        for n0 in starts:
            m = min(nb, n - n0)
            rows = m * ho * wo
            windows.fill(x[n0 : n0 + m])
            res = _accumulate_kernel_rows(
                xp,
                windows,
                row_weights,
                result[: rows * c_out].reshape(rows, c_out),
                scratch[: rows * c_out].reshape(rows, c_out),
            )
            if bias is not None:
                res += bias
            # Rows are (h, n, w): reorder to (n, h, w) while the chunk is in
            # cache, moving whole rows of W_out * C_out numbers.
            out_nhwc[n0 : n0 + m] = res.reshape(ho, m, wo, c_out).transpose(1, 0, 2, 3)

    run_chunks(xp, n, nb, work, flops=n * ho * wo * c * kh * kw * c_out)
    return out


@dataclass(frozen=True)
class _Geometry:
    """Everything the backward pass's per-thread helpers need to know about one convolution."""

    n: int
    c: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    ho: int
    wo: int
    stride: Pair
    padding: Pair
    dilation: Pair
    dtype: Any
    images_per_chunk: int


class _GradRows:
    """The output gradient of a chunk as a (rows, C_out) matrix, rows in the forward's (h, n, w) order."""

    def __init__(self, g: _Geometry) -> None:
        self.g = g
        self.buf = workspace(np, ("rows", 2), (g.images_per_chunk * g.ho * g.wo * g.c_out,), g.dtype)

    def fill(self, grad_chunk: Any) -> Any:
        g, m = self.g, len(grad_chunk)
        rows = self.buf[: m * g.ho * g.wo * g.c_out].reshape(m * g.ho * g.wo, g.c_out)
        # Runs of W_out * C_out numbers when grad_chunk is channels-last.
        rows.reshape(g.ho, m, g.wo, g.c_out)[...] = grad_chunk.transpose(2, 0, 3, 1)
        return rows


class _WeightGradFromX:
    """d weight the direct way: ``dW_i^T += kernel_row(i)^T @ g_rows`` for kernel row i of x's unfold."""

    def __init__(self, g: _Geometry) -> None:
        self.g = g
        self.windows = _RowWindows(np, g.c, (g.h, g.w), (g.kh, g.kw), g.stride, g.padding, g.dilation,
                                   (g.ho, g.wo), g.dtype)
        self.total = np.zeros((g.kh, g.kw * g.c, g.c_out), dtype=g.dtype)  # this thread's share
        blocks = _max_reduction_blocks(g, g.ho * g.wo)
        self.product = workspace(np, ("product",), (blocks, g.kw * g.c, g.c_out), g.dtype)

    def add(self, x_chunk: Any, grad_rows: Any) -> None:
        self.windows.fill(x_chunk)
        for i in range(self.g.kh):
            _accumulate_products(np, self.windows.kernel_row(i), grad_rows, self.total[i], self.product)

    @staticmethod
    def result(g: _Geometry, total: Any) -> Any:
        """The threads' summed (kH, kW*C, C_out) totals, rows in (j, c) order, as (C_out, C, kH, kW)."""
        return np.ascontiguousarray(total.reshape(g.kh, g.kw, g.c, g.c_out).transpose(3, 2, 0, 1))


class _WeightGradFromGrad:
    """d weight off the unfolded output gradient that d x builds anyway (unit stride, README point 6):
    ``dW[:, :, i, j]^T = (g unfolded at kernel row kH-1-i, column kW-1-j)^T @ x_rows``."""

    def __init__(self, g: _Geometry) -> None:
        self.g = g
        self.x_buf = workspace(np, ("rows", 3), (g.images_per_chunk * g.h * g.w * g.c,), g.dtype)
        self.total = np.zeros((g.kh, g.kw * g.c_out, g.c), dtype=g.dtype)  # this thread's share
        blocks = _max_reduction_blocks(g, g.h * g.w)
        self.product = workspace(np, ("product",), (blocks, g.kw * g.c_out, g.c), g.dtype)

    def add(self, x_chunk: Any, grad_windows: _RowWindows) -> None:
        g, m = self.g, len(x_chunk)
        x_rows = self.x_buf[: m * g.h * g.w * g.c].reshape(m * g.h * g.w, g.c)  # rows (h, n, w)
        x_rows.reshape(g.h, m, g.w, g.c)[...] = x_chunk.transpose(2, 0, 3, 1)
        for i in range(g.kh):
            _accumulate_products(np, grad_windows.kernel_row(g.kh - 1 - i), x_rows, self.total[i], self.product)

    @staticmethod
    def result(g: _Geometry, total: Any) -> Any:
        """The threads' summed (kH, kW*C_out, C) totals, rows in (kW-1-j, o) order, as (C_out, C, kH, kW)."""
        return np.ascontiguousarray(total.reshape(g.kh, g.kw, g.c_out, g.c)[:, ::-1].transpose(2, 3, 0, 1))


class _InputGradTransposed:
    """d x at unit stride: the transposed convolution (README point 5).

    The output gradient padded by d(k-1) - p per side (negative: cropped),
    convolved with the kernel flipped in i and j, C and C_out swapped.
    """

    def __init__(self, g: _Geometry, flipped_rows: list[Any]) -> None:
        self.g, self.flipped_rows = g, flipped_rows
        pad = (g.dilation[0] * (g.kh - 1) - g.padding[0], g.dilation[1] * (g.kw - 1) - g.padding[1])
        self.windows = _RowWindows(np, g.c_out, (g.ho, g.wo), (g.kh, g.kw), (1, 1), pad, g.dilation,
                                   (g.h, g.w), g.dtype, role="g")
        size = g.images_per_chunk * g.h * g.w * g.c
        self.out = workspace(np, ("rows", 0), (size,), g.dtype)
        self.scratch = workspace(np, ("rows", 1), (size,), g.dtype)

    def compute(self, grad_chunk: Any, grad_x_chunk: Any) -> None:
        """Write d x of the chunk into ``grad_x_chunk`` (m, H, W, C); ``self.windows`` must hold the chunk."""
        g, m = self.g, len(grad_chunk)
        rows = m * g.h * g.w
        res = _accumulate_kernel_rows(np, self.windows, self.flipped_rows, self.out[: rows * g.c].reshape(rows, g.c),
                                      self.scratch[: rows * g.c].reshape(rows, g.c))
        grad_x_chunk[...] = res.reshape(g.h, m, g.w, g.c).transpose(1, 0, 2, 3)


class _InputGradStrided:
    """d x at stride > 1: the adjoint of the forward, offset by offset, in cache.

    d x_pad = sum over kernel offsets (i, j) of ``g_rows @ weight[:, :, i, j]``,
    each added at rows h_out*sH + i*dH, columns w_out*sW + j*dW. Those are
    strided, so the sums go into a buffer that keeps the padded rows (and
    columns) of each residue mod sH (sW) apart:
    ``by_phase[r, q, n, rw, qw, c] = d x_pad[n, c, q*sH + r, qw*sW + rw]``,
    where offset (i, j) covers the CONTIGUOUS block q = i*dH//sH + h_out,
    qw = j*dW//sW + w_out of phase (i*dH % sH, j*dW % sW).
    """

    def __init__(self, g: _Geometry, offset_weights: list[list[Any]]) -> None:
        (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
        self.g, self.offset_weights = g, offset_weights
        q_rows = max(max(i * dh // sh for i in range(g.kh)) + g.ho, -(-(g.h + 2 * ph) // sh))
        q_cols = max(max(j * dw // sw for j in range(g.kw)) + g.wo, -(-(g.w + 2 * pw) // sw))
        self.by_phase = workspace(np, ("phases",), (sh, q_rows, g.images_per_chunk, sw, q_cols, g.c), g.dtype)
        self.product = workspace(np, ("rows", 0), (g.images_per_chunk * g.ho * g.wo * g.c,), g.dtype)
        # Per phase: which padded positions are real pixels, as (first q, end q, first pixel).
        self.row_phases = [_phase_span(r, sh, ph, g.h) for r in range(sh)]
        self.col_phases = [_phase_span(r, sw, pw, g.w) for r in range(sw)]

    def compute(self, grad_rows: Any, grad_x_chunk: Any) -> None:
        g, m = self.g, len(grad_x_chunk)
        (sh, sw), (dh, dw) = g.stride, g.dilation
        acc = self.by_phase[:, :, :m]
        acc[...] = 0
        rows = m * g.ho * g.wo
        for i in range(g.kh):
            r, q0 = i * dh % sh, i * dh // sh
            for j in range(g.kw):
                rw, qw0 = j * dw % sw, j * dw // sw
                out = self.product[: rows * g.c].reshape(rows, g.c)
                contrib = np.matmul(grad_rows, self.offset_weights[i][j], out=out)
                acc[r, q0 : q0 + g.ho, :, rw, qw0 : qw0 + g.wo, :] += contrib.reshape(g.ho, m, g.wo, g.c)
        for r, (qa, qb, y0) in enumerate(self.row_phases):
            for rw, (qwa, qwb, x0) in enumerate(self.col_phases):
                if qb > qa and qwb > qwa:  # this phase holds real pixels (not only padding)
                    grad_x_chunk[:, y0::sh, x0::sw] = acc[r, qa:qb, :, rw, qwa:qwb, :].transpose(1, 0, 2, 3)


def conv2d_backward(
    x: Any,
    weight: Any,
    grad_out: Any,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    needs_input_grad: Sequence[bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """Fast convolution backward: the results of :func:`minires.kernels.conv.conv2d_backward`.

    Per chunk of images, on the kernel threads: d x by :class:`_InputGradTransposed`
    (unit stride) or :class:`_InputGradStrided`; d weight by
    :class:`_WeightGradFromGrad` (unit stride, when d x is computed too) or
    :class:`_WeightGradFromX`, each thread summing its own share.

    Returns:
        (grad_x (N, C, H, W) | None, grad_weight (C_out, C, kH, kW) | None,
        grad_bias (C_out,) | None), dtype of x; grad_x is channels-last in
        memory, like the forward's output.
    """
    need_x, need_w, need_b = (tuple(needs_input_grad) + (False, False, False))[:3]
    grad_b = grad_out.sum(axis=(0, 2, 3)) if need_b else None
    if not (need_x or need_w):
        return None, None, grad_b
    if winograd.applies(x.shape, weight.shape, stride, padding, dilation):  # point 9
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # d x's kernel (point 5)
        grad_x = winograd.conv3x3(grad_out, flipped) if need_x else None
        grad_w = winograd.weight_grad3x3(x, grad_out) if need_w else None
        return grad_x, grad_w, grad_b
    (n, c, h, w), (c_out, _, kh, kw), (ho, wo) = x.shape, weight.shape, grad_out.shape[2:]
    chunk = _images_per_chunk(np, n, ho * wo * kh * kw * c * c_out, ho * wo)
    g = _Geometry(n, c, h, w, c_out, kh, kw, ho, wo, stride, padding, dilation, x.dtype, chunk)
    transposed = need_x and stride == (1, 1)
    grad_x = empty_channels_last(np, (n, c, h, w), x.dtype) if need_x else None
    make_dx = _input_grad_maker(g, weight, transposed) if need_x else None
    make_dw = (_WeightGradFromGrad if transposed else _WeightGradFromX) if need_w else None

    def work(starts: list[int]) -> Any:
        dx, dw = make_dx() if need_x else None, make_dw(g) if need_w else None
        grad_rows = None if transposed else _GradRows(g)
        for n0 in starts:
            grad_chunk, x_chunk = grad_out[n0 : n0 + chunk], x[n0 : n0 + chunk]
            rows = None if transposed else grad_rows.fill(grad_chunk)
            if transposed:
                dx.windows.fill(grad_chunk)
            if need_w:
                dw.add(x_chunk, dx.windows if transposed else rows)
            if need_x:
                dx.compute(grad_chunk if transposed else rows, grad_x.transpose(0, 2, 3, 1)[n0 : n0 + chunk])
        return dw.total if need_w else None

    partials = run_chunks(np, n, chunk, work, flops=2 * n * ho * wo * c * kh * kw * c_out)
    grad_w = make_dw.result(g, sum(partials[1:], partials[0])) if need_w else None
    return grad_x, grad_w, grad_b


def _input_grad_maker(g: _Geometry, weight: Any, transposed: bool) -> Any:
    """A factory of per-thread d x helpers, with the weights they share prepared once."""
    if transposed:
        flipped = _kernel_row_weights(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # kH x (kW*C_out, C)
        return lambda: _InputGradTransposed(g, flipped)
    offsets = [[np.ascontiguousarray(weight[:, :, i, j]) for j in range(g.kw)] for i in range(g.kh)]  # (C_out, C)
    return lambda: _InputGradStrided(g, offsets)


dispatch.register("conv2d_forward", "cpu")(conv2d_forward)
dispatch.register("conv2d_backward", "cpu")(conv2d_backward)
