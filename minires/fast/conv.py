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
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .. import dispatch
from ..kernels.im2col import output_hw
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


def _max_blocks(rows: int, k: int, n: int) -> int:
    """Most blocks :func:`_gemm_block_rows` can cut a (rows, k) @ (k, n) product (or fewer rows) into."""
    if k * n * _SMALL_GEMM_MIN_ROWS > _SMALL_GEMM_WORK:
        return 1
    return max(1, rows // _SMALL_GEMM_MIN_ROWS)


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

    In row blocks sized for BLAS's small-matrix kernels, as one stacked call
    whose (blocks, A, B) products go to ``blocks_out`` (a buffer of at least
    that many (A, B) matrices) and are then summed.
    """
    rows, a_cols = left.shape
    b_cols = right.shape[1]
    step = _gemm_block_rows(rows, a_cols, b_cols)
    parts = blocks_out[: rows // step]
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


def conv2d_backward(
    x: Any,
    weight: Any,
    grad_out: Any,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    needs_input_grad: Sequence[bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """Fast convolution backward (same results as :func:`conv2d_backward_reference`).

    d weight, unit stride with d x also needed: for kernel row i,
    ``x_rows^T @ g_row(kH-1-i)`` with x as a (rows, C) matrix in (h, n, w)
    order and g_row the transposed convolution's unfold of g (module
    docstring, point 6); its columns run over the kernel columns in reverse.

    d weight otherwise: for kernel row i, ``dW_i = g^T @ kernel_row(i)`` with g as a
    (rows, C_out) matrix whose rows match the forward's (h, n, w) order
    (copied from grad_out in runs of W_out * C_out numbers when grad_out is
    channels-last; BLAS reads its transpose without a copy).

    d x, unit stride: the transposed convolution (module docstring, point 4),
    computed with the same row-unfold machinery on the output gradient.

    d x, stride > 1: the adjoint of the forward, step by step: each
    ``g @ W_i^T`` is added onto the unfolded rows kernel_row(i) came from, then the
    kW width offsets are added back onto the padded pixels (kH + kW vectorised
    slice-adds of chunk-sized, in-cache arrays instead of an element scatter).

    Args:
        x, weight: as given to the forward. grad_out: (N, C_out, H_out, W_out),
            any memory layout.
        needs_input_grad: which of (x, weight, bias) need a gradient.

    Returns:
        (grad_x (N, C, H, W) | None, grad_weight (C_out, C, kH, kW) | None,
        grad_bias (C_out,) | None), dtype of x; grad_x is channels-last in
        memory, like the forward's output.
    """
    need_x, need_w, need_b = (tuple(needs_input_grad) + (False, False, False))[:3]
    xp = np
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dtype = x.dtype
    grad_b = grad_out.sum(axis=(0, 2, 3)) if need_b else None
    if not (need_x or need_w):
        return None, None, grad_b

    unit_stride = stride == (1, 1)
    grad_x = empty_channels_last(xp, (n, c, h, w), dtype) if need_x else None
    grad_x_nhwc = grad_x.transpose(0, 2, 3, 1) if need_x else None
    if need_x and unit_stride:
        # Transposed convolution: kernel flipped in i and j, C and C_out
        # swapped, padding d(k-1) - p per side (negative means crop).
        flipped = _kernel_row_weights(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # kH x (kW*C_out, C)
        t_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    elif need_x:
        # Strided: d x_pad = sum over kernel offsets (i, j) of g @ weight[:, :, i, j], each
        # added at rows h_out*sH + i*dH and columns w_out*sW + j*dW. Those
        # positions are strided, so the sums go into a buffer that keeps the
        # padded rows (and columns) of each residue mod sH (sW) apart:
        #   d_phases[r, q, n, rw, qw, c] = d x_pad[n, c, q*sH + r, qw*sW + rw]
        # where offset (i, j) covers the CONTIGUOUS block q = i*dH//sH + h_out,
        # qw = j*dW//sW + w_out of phase (i*dH % sH, j*dW % sW).
        row_weights = [[xp.ascontiguousarray(weight[:, :, i, j]) for j in range(kw)] for i in range(kh)]  # (C_out, C)
        q_rows = max(max(i * dh // sh for i in range(kh)) + ho, -(-(h + 2 * ph) // sh))
        q_cols = max(max(j * dw // sw for j in range(kw)) + wo, -(-(w + 2 * pw) // sw))
        # For each phase: which padded positions are real pixels, as (first q, end q, first pixel).
        row_phases = [_phase_span(r, sh, ph, h) for r in range(sh)]
        col_phases = [_phase_span(r, sw, pw, w) for r in range(sw)]
    nb = _images_per_chunk(xp, n, ho * wo * kh * kw * c * c_out, ho * wo)

    # Unit stride with both gradients: d weight comes from the SAME unfolded
    # output gradient that the transposed convolution builds for d x, against
    # x's plain rows (no unfold of x; see the docstring).
    w_from_g = need_w and need_x and unit_stride

    def work(starts: list[int]) -> Any:
        if not (need_x and unit_stride):  # g as (rows, C_out), rows (h, n, w), for the products below
            g_buf = workspace(xp, ("rows", 2), (nb * ho * wo * c_out,), dtype)
        if w_from_g:
            x_buf = workspace(xp, ("rows", 3), (nb * h * w * c,), dtype)  # x as (rows, C), rows (h, n, w)
            grad_w_rows = xp.zeros((kh, c, kw * c_out), dtype=dtype)  # this thread's share
            product = workspace(xp, ("product",), (_max_blocks(nb * h * w, c, kw * c_out), c, kw * c_out), dtype)
        elif need_w:
            windows_x = _RowWindows(xp, c, (h, w), (kh, kw), stride, padding, dilation, (ho, wo), dtype)
            grad_w_rows = xp.zeros((kh, c_out, kw * c), dtype=dtype)  # this thread's share
            product = workspace(xp, ("product",), (_max_blocks(nb * ho * wo, c_out, kw * c), c_out, kw * c), dtype)
        if need_x and unit_stride:
            windows_g = _RowWindows(xp, c_out, (ho, wo), (kh, kw), (1, 1), t_pad, dilation, (h, w), dtype, role="g")
            dx_rows = workspace(xp, ("rows", 0), (nb * h * w * c,), dtype)
            scratch = workspace(xp, ("rows", 1), (nb * h * w * c,), dtype)
        elif need_x:
            d_phases = workspace(xp, ("phases",), (sh, q_rows, nb, sw, q_cols, c), dtype)
            d_offset = workspace(xp, ("rows", 0), (nb * ho * wo * c,), dtype)
        for n0 in starts:
            m = min(nb, n - n0)
            rows = m * ho * wo
            g_chunk = grad_out[n0 : n0 + m]
            if not (need_x and unit_stride):
                g_rows = g_buf[: rows * c_out].reshape(rows, c_out)
                g_rows.reshape(ho, m, wo, c_out)[...] = g_chunk.transpose(2, 0, 3, 1)
            if need_w and not w_from_g:
                windows_x.fill(x[n0 : n0 + m])
                for i in range(kh):
                    _accumulate_products(xp, g_rows, windows_x.kernel_row(i), grad_w_rows[i], product)
            if need_x and unit_stride:
                windows_g.fill(g_chunk)
                rows_x = m * h * w
                if w_from_g:
                    # dW[o, c, i, j] = sum over x's pixels of x * (g unfolded at kernel row kH-1-i, column kW-1-j).
                    x_rows = x_buf[: rows_x * c].reshape(rows_x, c)
                    x_rows.reshape(h, m, w, c)[...] = x[n0 : n0 + m].transpose(2, 0, 3, 1)
                    for i in range(kh):
                        _accumulate_products(xp, x_rows, windows_g.kernel_row(kh - 1 - i), grad_w_rows[i], product)
                res = _accumulate_kernel_rows(
                    xp,
                    windows_g,
                    flipped,
                    dx_rows[: rows_x * c].reshape(rows_x, c),
                    scratch[: rows_x * c].reshape(rows_x, c),
                )
                grad_x_nhwc[n0 : n0 + m] = res.reshape(h, m, w, c).transpose(1, 0, 2, 3)
            elif need_x:
                acc = d_phases[:, :, :m]
                acc[...] = 0
                for i in range(kh):
                    r, q0 = i * dh % sh, i * dh // sh
                    for j in range(kw):
                        rw, qw0 = j * dw % sw, j * dw // sw
                        contrib = xp.matmul(g_rows, row_weights[i][j], out=d_offset[: rows * c].reshape(rows, c))
                        acc[r, q0 : q0 + ho, :, rw, qw0 : qw0 + wo, :] += contrib.reshape(ho, m, wo, c)
                for r, (qa, qb, y0) in enumerate(row_phases):
                    for rw, (qwa, qwb, x0) in enumerate(col_phases):
                        if qb > qa and qwb > qwa:  # this phase holds real pixels (not only padding)
                            phase = acc[r, qa:qb, :, rw, qwa:qwb, :]
                            grad_x_nhwc[n0 : n0 + m, y0::sh, x0::sw] = phase.transpose(1, 0, 2, 3)
        return grad_w_rows if need_w else None

    partials = run_chunks(xp, n, nb, work, flops=2 * n * ho * wo * c * kh * kw * c_out)
    grad_w = None
    if need_w:
        total = partials[0]
        for part in partials[1:]:
            total = total + part
        if w_from_g:
            # (kH, C, kW*C_out) with (kW-1-j, o) order -> (C_out, C, kH, kW)
            grad_w = xp.ascontiguousarray(total.reshape(kh, c, kw, c_out)[:, :, ::-1].transpose(3, 1, 0, 2))
        else:
            # (kH, C_out, kW*C) with (j, c) order -> (C_out, C, kH, kW)
            grad_w = xp.ascontiguousarray(total.reshape(kh, c_out, kw, c).transpose(1, 3, 0, 2))
    return grad_x, grad_w, grad_b


dispatch.register("conv2d_forward", "cpu")(conv2d_forward)
dispatch.register("conv2d_backward", "cpu")(conv2d_backward)
