"""2-D convolution on raw arrays: the mathematics, a readable reference, a fast path.

Shapes (PyTorch's): input x (N, C, H, W), weight (C_out, C, kH, kW), optional
bias (C_out,), output y (N, C_out, H_out, W_out) with

    H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH) + 1      (same for W)

    y[n, o, h, w] = b[o] + sum_{c, i, j} weight[o, c, i, j] * x_pad[n, c, h sH + i dH, w sW + j dW]

(strictly a cross-correlation, as in every deep-learning library).

Forward as one matrix product
-----------------------------
With ``cols = im2col(x)`` of shape (N, C kH kW, L) (see :mod:`.im2col`),
``y = W_mat @ cols`` where ``W_mat = weight.reshape(C_out, C kH kW)``.

Backward
--------
Given the upstream gradient ``g = dLoss/dy`` (same shape as y):

* ``d bias = sum of g over (n, h, w)``: the bias is added at every position.
* ``d weight = sum_n g[n] @ cols[n]^T``: one more matrix product with the
  SAME columns (each weight met exactly the pixels in its column).
* ``d cols = W_mat^T @ g`` and ``d x = col2im(d cols)``: col2im is the adjoint
  of im2col, so it routes each column's gradient back to the pixels it was
  copied from, summing where windows overlapped.

The reference functions below are exactly these formulas.

Why a second, fast path, and what it does differently
-----------------------------------------------------
The reference is correct but slow on a CPU. For a 3x3 convolution, im2col
writes 9 copies of the input and col2im reads 9 back with read-modify-write
passes; at CIFAR sizes (batch 128, 16 channels, 32x32) that is 75 MB per
layer, far more than any cache, and the matrix products starve while memory
traffic dominates. The fast path keeps the same mathematics and changes seven
things, each one measured (``benchmarks/bench_layers.py``; numbers in
``benchmarks/README.md``):

1. **Channels-last inside, NCHW outside.** Each chunk of images is copied
   into a zero-bordered buffer in (row, image, column, channel) order, so the
   C values of a pixel are adjacent and the copies below move runs of
   ``kW * C`` numbers instead of single floats. Results come out of the GEMMs
   in the same order, and the arrays the fast path RETURNS (y, and d x in
   the backward pass) are NCHW in shape but channels-last in memory: an
   (N, H, W, C) C-contiguous buffer seen through ``transpose(0, 3, 1, 2)``,
   exactly PyTorch's ``channels_last`` memory format (see
   :func:`empty_channels_last`). Indexing, shapes and values are those of
   any NCHW array; only the strides differ. Why: copying a chunk between
   NCHW and the (row, image, column, channel) order is a full transpose
   that gathers single floats, while between channels-last and that order
   it moves whole contiguous image rows (``W * C`` numbers). Conv outputs
   flow through batch norm, ReLU and the residual addition (elementwise
   code that keeps the layout) into the next convolution, so in a ResNet
   every convolution after the first reads and writes channels-last, and
   the transposes, about a fifth of the convolution time in NCHW, become
   plain copies. Any input layout is accepted.
2. **Unfold the width only: 3 copies, not 9.** Instead of full im2col, each
   pixel is copied kW times (its row of windows, see :class:`_RowWindows`),
   and the kH kernel rows become kH matrix products on row ranges of that
   buffer, summed: ``y = sum_i tap(i) @ W_i``. Because rows of the buffer
   are adjacent in memory, ``tap(i)`` is a plain 2-D view that BLAS reads
   directly. Same arithmetic, a third of the copying.
3. **Chunks that fit in cache.** The batch is processed a few images at a
   time (about 8 million multiply-adds per chunk), so the buffers of one
   chunk mostly stay in the core's L2 cache and are reused by the next. The
   full-batch column matrix never exists; the backward pass recomputes a
   chunk's columns rather than saving them (recomputing in cache is cheaper
   than writing them to memory and reading them back).
4. **Both cores, all the time.** NumPy copies run on one core, BLAS on all.
   Chunks are dealt to a small thread pool (NumPy releases the GIL inside
   copies and BLAS calls) while BLAS is limited to one thread, so the threads
   share the cores instead of queueing behind each other's BLAS calls. This
   needs the ``threadpoolctl`` package; without it the chunks run one after
   another on the calling thread and BLAS keeps its own threads.
5. **No scatter for d x when the stride is 1.** Substituting
   h = h_out - i dH + pH into the forward sum shows that for unit stride

       d x = conv(g padded by dH (kH - 1) - pH,
                  weight flipped in i and j with C and C_out swapped, same dilation)

   i.e. the input gradient is itself a convolution (the "transposed
   convolution") and reuses the machinery above: copies and GEMMs, no
   read-modify-write scatter. For stride > 1 the adjoint is applied step by
   step (GEMM, then kH + kW strided slice-adds per chunk, in cache).
6. **d weight from the same unfolded gradient.** With unit stride the
   backward pass unfolds g anyway (point 5). Reading the weight gradient
   off that unfold, ``dW[:, :, i, j] = sum over x's pixels of x (outer)
   g_tap(kH-1-i, kW-1-j)``, needs x only as plain rows, so x is not
   unfolded a second time and g is not copied a second time.
7. **Products in BLAS-sized blocks.** OpenBLAS has kernels for small
   matrices that skip its packing copies; the skinny products of a
   16- or 32-channel layer run 20-50% faster in blocks of about a million
   multiply-adds, passed as one stacked matmul call (see
   ``_SMALL_GEMM_WORK``).

On CuPy arrays (float32/float64) both functions hand over to
:mod:`minires.kernels.cuda.im2col`: an im2col CUDA kernel and one large cuBLAS
GEMM for the whole batch (a GPU wants few, large launches, not cache-sized
chunks and threads). Other dtypes on CuPy run the code below with the whole
batch as a single chunk.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from functools import lru_cache
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from ..backend import get_array_module
from .aligned import empty_aligned, zeros_aligned
from .im2col import col2im, im2col, output_hw

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_forward_reference",
    "conv2d_backward_reference",
    "num_threads",
    "run_chunks",
    "single_threaded_blas",
    "empty_channels_last",
    "is_channels_last",
]

Pair = tuple[int, int]


# ---------------------------------------------------------------------------
# Reference path: im2col + GEMM, col2im for the input gradient
# ---------------------------------------------------------------------------


def conv2d_forward_reference(
    x: Any, weight: Any, bias: Any, stride: Pair, padding: Pair, dilation: Pair
) -> Any:
    """y = W_mat @ im2col(x) (+ bias): the textbook formulation.

    Args:
        x: (N, C, H, W). weight: (C_out, C, kH, kW). bias: (C_out,) or None.
        stride, padding, dilation: (height, width) pairs, already validated.

    Returns:
        y: (N, C_out, H_out, W_out), dtype of x.
    """
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, dilation)
    cols = im2col(x, (kh, kw), stride, padding, dilation)  # (N, C kH kW, L)
    y = weight.reshape(c_out, -1) @ cols  # (C_out, K) @ (N, K, L) -> (N, C_out, L)
    if bias is not None:
        y += bias.reshape(1, c_out, 1)
    return y.reshape(n, c_out, ho, wo)


def conv2d_backward_reference(
    x: Any,
    weight: Any,
    grad_out: Any,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    needs_input_grad: Sequence[bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """Gradients of the reference forward: (d x, d weight, d bias).

    Args:
        x, weight: as given to the forward. grad_out: (N, C_out, H_out, W_out).
        needs_input_grad: which of (x, weight, bias) need a gradient; the
            others are returned as None.

    Returns:
        (grad_x (N, C, H, W) | None, grad_weight (C_out, C, kH, kW) | None,
        grad_bias (C_out,) | None).
    """
    need_x, need_w, need_b = (tuple(needs_input_grad) + (False, False, False))[:3]
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    g = grad_out.reshape(n, c_out, -1)  # (N, C_out, L)
    grad_x = grad_w = grad_b = None
    if need_b:
        grad_b = grad_out.sum(axis=(0, 2, 3))
    if need_w:
        cols = im2col(x, (kh, kw), stride, padding, dilation)  # (N, K, L)
        # sum over n of g[n] @ cols[n]^T
        grad_w = (g @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    if need_x:
        dcols = weight.reshape(c_out, -1).T @ g  # (K, C_out) @ (N, C_out, L) -> (N, K, L)
        grad_x = col2im(dcols, (n, c, h, w), (kh, kw), stride, padding, dilation)
    return grad_x, grad_w, grad_b


# ---------------------------------------------------------------------------
# Channels-last memory format
# ---------------------------------------------------------------------------


def empty_channels_last(xp: Any, shape: Sequence[int], dtype: Any) -> Any:
    """An uninitialised array of NCHW ``shape`` (N, C, H, W) stored channels-last.

    The memory is a C-contiguous (N, H, W, C) buffer; the returned array is
    its ``transpose(0, 3, 1, 2)`` view, so ``a[n, c, h, w]`` indexes as usual
    while the C values of each pixel are adjacent in memory (PyTorch's
    ``torch.channels_last``). The buffer starts a memory page (see
    :mod:`.aligned`).
    """
    n, c, h, w = shape
    return empty_aligned(xp, (n, h, w, c), dtype).transpose(0, 3, 1, 2)


def is_channels_last(a: Any) -> bool:
    """True when the 4-D (N, C, H, W) array ``a`` is a transposed C-contiguous (N, H, W, C) buffer."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


# ---------------------------------------------------------------------------
# Threads: a pool for the chunks, BLAS limited to one thread meanwhile
# ---------------------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()  # one parallel region at a time (see run_chunks)
_blas_state: dict[str, Any] = {"checked": False, "controller": None}



def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: work
    # submitted there would wait forever. Start afresh in the child.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)

# Below this many multiply-adds a problem is too small to be worth a thread hand-off (tens of microseconds).
_MIN_PARALLEL_WORK = 1 << 20


def num_threads() -> int:
    """Threads the CPU kernels use: ``MINIRES_NUM_THREADS`` if set, else the usable cores."""
    env = os.environ.get("MINIRES_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MINIRES_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MINIRES_NUM_THREADS must be a positive integer, got {env!r}")
        return value
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blas_controller() -> Any:
    """threadpoolctl's controller, or None when the package is missing."""
    if not _blas_state["checked"]:
        _blas_state["checked"] = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_state["controller"] = None
        else:
            _blas_state["controller"] = ThreadpoolController()
    return _blas_state["controller"]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while the block runs (a whole training step, say).

    Why: after a multi-threaded BLAS call OpenBLAS's worker threads spin for a
    while waiting for more work; in a step that alternates BLAS calls with
    NumPy copies and with :func:`run_chunks` regions those spinning threads
    steal the cores from the code that runs next (measured on the 2-core
    machine of ``benchmarks/README.md``: a ResNet-20 step went from 1151 to
    718 ms). The convolutions get their parallelism from :func:`run_chunks`
    instead, which splits the batch over threads. A no-op without
    ``threadpoolctl``. Restores the previous BLAS thread count on exit.
    """
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def run_chunks(xp: Any, n_items: int, chunk: int, work: Callable[[list[int]], Any], flops: int = 0) -> list[Any]:
    """Split ``range(n_items)`` into chunks of ``chunk`` and hand them to ``work``.

    ``work(starts)`` processes the chunks beginning at each index in ``starts``
    (so each thread allocates its scratch buffers once) and returns a value;
    the list of those values (one per thread) is returned.

    On NumPy with more than one thread, ``threadpoolctl`` installed and a
    problem of at least ``_MIN_PARALLEL_WORK`` multiply-adds (``flops``), the
    chunks are dealt round-robin to the threads and BLAS is limited to one
    thread for the duration: the threads then share the cores instead of each
    BLAS call spawning its own. Otherwise all chunks run on the caller's thread.
    """
    starts = list(range(0, n_items, chunk))
    threads = min(num_threads(), len(starts))
    controller = _blas_controller() if xp.__name__ == "numpy" else None
    if threads <= 1 or controller is None or flops < _MIN_PARALLEL_WORK:
        return [work(starts)]
    global _pool, _pool_size
    # The lock makes concurrent callers take turns: two regions at once would
    # oversubscribe the cores, and each would restore BLAS's thread count at
    # a different moment.
    with _pool_lock:
        if _pool is None or _pool_size < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="minires-kernel")
            _pool_size = threads - 1
        with controller.limit(limits=1, user_api="blas"):
            futures = [_pool.submit(work, starts[t::threads]) for t in range(1, threads)]
            try:
                results = [work(starts[0::threads])]  # the caller does its share too
            finally:
                wait(futures)  # never leave a worker writing into buffers after an error here
            results += [f.result() for f in futures]
    return results


# ---------------------------------------------------------------------------
# Scratch buffers kept between calls
# ---------------------------------------------------------------------------

# Every call of the fast path needs a few chunk-sized scratch buffers per
# thread. Allocating them afresh costs more than it seems: buffers of a few
# hundred kB come from mmap, so every first write to each 4 kB page is a page
# fault, and the zero-bordered ones are zeroed each time (cProfile of a
# ResNet-20 step on the busy 2-core machine: about 100 ms of 1.4 s in
# numpy.zeros alone). A ResNet calls
# the same few geometries over and over, so each thread keeps its buffers,
# keyed by what they hold; least recently used ones are dropped beyond
# _WORKSPACE_ENTRIES (a few MB per thread for a CIFAR ResNet).
_WORKSPACE_ENTRIES = 64
_workspace_local = threading.local()


def _workspace(xp: Any, key: tuple, shape: tuple, dtype: Any, zeroed: bool = False) -> Any:
    """A scratch array of ``shape`` owned by the calling thread, reused by later calls with the same key.

    ``zeroed`` buffers are zero when created; callers that rely on parts of
    one staying zero (the border of a padded image) must never write there,
    and must put everything that decides WHERE they write into ``key``. Only
    NumPy buffers are kept: on the GPU this allocates afresh (CuPy has its
    own memory pool). Buffers start a memory page (see :mod:`.aligned`).
    """
    if xp.__name__ != "numpy":
        return (xp.zeros if zeroed else xp.empty)(shape, dtype=dtype)
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


# ---------------------------------------------------------------------------
# Fast path building block: a chunk of images, unfolded along the width only
# ---------------------------------------------------------------------------


class _RowWindows:
    """Scratch buffers holding a chunk of images unfolded along the WIDTH only.

    Full im2col copies each pixel kH*kW times. Unfolding only the kW taps of
    each row copies it kW times (3x instead of 9x for a 3x3 kernel); the kH
    taps are then handled by kH matrix products on shifted, contiguous row
    ranges of that buffer, added together::

        y_rows = sum_i  tap(i) @ W_i        tap(i): (H_out*m*W_out, kW*C)
                                            W_i:    (kW*C, C_out), W_i[(j, c), o] = weight[o, c, i, j]

    Layout. ``padded`` is (rows, m, Wp, C): image rows outermost, then the
    images of the chunk, then channels-last pixels. ``unfolded`` is
    (sH, Q, m, W_out, kW, C): padded row ``q*sH + r`` is stored at [r, q], so
    that for ANY stride the rows one tap needs (h_out*sH + i*dH for
    h_out = 0..H_out-1) are the consecutive rows q = i*dH//sH + h_out of phase
    r = i*dH % sH. Consecutive rows and the images inside them are adjacent in
    memory, so ``tap(i)`` is a plain 2-D view: no copy, BLAS reads it directly.
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
        # Sized for exactly m images so that tap() stays one 2-D view (the
        # last, smaller chunk of a batch gets buffers of its own). Kept by the
        # thread between calls: only the interior of ``padded`` is ever
        # written, so its zero border stays zero.
        xp = self.xp
        self.m = m
        key = ("rowwindows", self.role, self.channels, self.in_hw, self.kernel, self.stride, self.padding,
               self.dilation, self.out_hw)
        zeroed = max(self.padding) > 0 or self.rows > self.hp
        self.padded = _workspace(xp, key + ("padded",), (self.rows, m, self.wp, self.channels), self.dtype, zeroed)
        # Views used for every chunk, made once here (each costs microseconds
        # of Python while holding the GIL, i.e. while the other thread waits).
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = self.kernel, self.stride, self.dilation, self.out_hw
        (ph, pw), (h, w) = self.padding, self.in_hw
        lo_h, lo_w = max(ph, 0), max(pw, 0)  # where the image starts in the buffer
        self._cut_h, self._cut_w = max(-ph, 0), max(-pw, 0)  # rows/cols cropped off each side
        self._interior = self.padded[lo_h : lo_h + h - 2 * self._cut_h, :, lo_w : lo_w + w - 2 * self._cut_w, :]
        if self.direct:
            self._taps = [self.padded[i * dh : i * dh + ho].reshape(ho * m * wo, self.channels) for i in range(kh)]
            return
        self.unfolded = _workspace(xp, key + ("unfolded",), (sh, self.q, m, wo, kw, self.channels), self.dtype)
        s_row, s_img, s_col, s_ch = self.padded.strides
        self._windows = xp.lib.stride_tricks.as_strided(
            self.padded,
            shape=(sh, self.q, m, wo, kw, self.channels),
            strides=(s_row, sh * s_row, s_img, sw * s_col, dw * s_col, s_ch),
        )
        # Kernel row i reads phase i*dH % sH, rows q0 = i*dH // sH onwards.
        self._taps = [
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

    def tap(self, i: int) -> Any:
        """The (H_out*m*W_out, kW*C) matrix of kernel row i (a view)."""
        return self._taps[i]


def _phase_span(r: int, s: int, pad: int, size: int) -> tuple[int, int, int]:
    """Padded positions q*s + r (q = 0, 1, ...) that are real pixels 0..size-1: (first q, end q, first pixel)."""
    first = max(0, -(-(pad - r) // s))  # smallest q with q*s + r >= pad
    end = max(first, (size - 1 + pad - r) // s + 1)  # one past the largest q with q*s + r - pad < size
    return first, end, first * s + r - pad


def _tap_weights(weight: Any) -> list[Any]:
    """Weight (C_out, C, kH, kW) -> kH matrices (kW*C, C_out), rows in (j, c) order."""
    c_out, c, kh, kw = weight.shape
    xp = get_array_module(weight)
    return [xp.ascontiguousarray(weight[:, :, i, :].transpose(2, 1, 0)).reshape(kw * c, c_out) for i in range(kh)]


# OpenBLAS (the BLAS NumPy ships) multiplies small matrices with kernels that
# skip its packing copies, and the skinny products of a small convolution
# run much faster that way. Measured on the 2-core machine of
# benchmarks/README.md, one thread: (rows, 48) @ (48, 16) at 88-106 GFLOP/s
# in blocks of 1024 rows against 62-77 GFLOP/s for 2048 rows or more;
# (rows, 96) @ (96, 32) at 118-147 in blocks of 256 against 88-108. Those
# kernels take products of at most about a million multiply-adds
# (rows * K * N). The blocks go to BLAS as ONE stacked matmul call,
# (blocks, rows, K) @ (K, N): NumPy then loops over the blocks with the GIL
# released once, whereas a Python loop of small matmul calls makes two kernel
# threads hand the GIL back and forth at every call (measured: two threads
# together slower than one). For 64 channels the blocks would be under 128
# rows, where nothing is gained, so such products stay whole.
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


def _accumulate_taps(xp: Any, windows: _RowWindows, tap_weights: list[Any], out: Any, scratch: Any) -> Any:
    """out = sum_i windows.tap(i) @ tap_weights[i]   (out and scratch: (rows, C_out) buffers).

    Each product runs in row blocks sized for BLAS's small-matrix kernels
    (see ``_SMALL_GEMM_WORK``).
    """
    rows = out.shape[0]
    k, n_out = tap_weights[0].shape
    step = _gemm_block_rows(rows, k, n_out) if xp.__name__ == "numpy" else rows
    for i, weights in enumerate(tap_weights):
        target = out if i == 0 else scratch
        xp.matmul(_blocks(windows.tap(i), step), weights, out=_blocks(target, step))
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
    step = _gemm_block_rows(rows, a_cols, b_cols) if xp.__name__ == "numpy" else rows
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
# stem. Measured with benchmarks/bench_layers.py on the 2-core machine
# described in benchmarks/README.md: chunks of 2M multiply-adds were a little
# faster on one thread but scaled badly to two (the whole conv stack: 590 ms
# with 2 threads vs 367 ms with 8M chunks); a minimum of 256 rows left the 8x8
# layers with 32 tiny chunks whose Python overhead kept two threads from
# helping (2048 rows: fwd + bwd of the 64-channel 8x8 layer 13.2 -> 10.6 ms,
# benchmarks/README.md, "Training step").
_CHUNK_WORK = 1 << 23
_MIN_CHUNK_ROWS = 2048


def _images_per_chunk(xp: Any, n: int, work_per_image: int, rows_per_image: int) -> int:
    if xp.__name__ != "numpy":
        return max(n, 1)  # GPU: one big launch beats many small ones
    by_work = -(-_CHUNK_WORK // max(work_per_image, 1))
    by_rows = -(-_MIN_CHUNK_ROWS // max(rows_per_image, 1))
    by_threads = -(-n // num_threads())  # ceil: leave every thread a chunk
    return max(1, min(max(by_work, by_rows), by_threads))


# ---------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------


def conv2d_forward(x: Any, weight: Any, bias: Any, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """Fast convolution forward (same result as :func:`conv2d_forward_reference`).

    Args:
        x: (N, C, H, W), any memory layout. weight: (C_out, C, kH, kW).
        bias: (C_out,) or None. stride, padding, dilation: validated pairs.

    Returns:
        y: (N, C_out, H_out, W_out), dtype of x; channels-last in memory on
        NumPy (module docstring, point 1).
    """
    xp = get_array_module(x)
    if xp.__name__ != "numpy":  # GPU: im2col CUDA kernel + one cuBLAS GEMM (kernels/cuda/im2col.py)
        from .cuda import im2col as cuda_im2col
        if cuda_im2col.supported(x, weight):
            return cuda_im2col.conv2d_forward(x, weight, bias, stride, padding, dilation)
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, dilation)
    tap_w = _tap_weights(weight)
    out = empty_channels_last(xp, (n, c_out, ho, wo), x.dtype)
    out_nhwc = out.transpose(0, 2, 3, 1)  # the buffer itself, (N, H_out, W_out, C_out)
    nb = _images_per_chunk(xp, n, ho * wo * kh * kw * c * c_out, ho * wo)

    def work(starts: list[int]) -> None:
        windows = _RowWindows(xp, c, (h, w), (kh, kw), stride, padding, dilation, (ho, wo), x.dtype)
        result = _workspace(xp, ("rows", 0), (nb * ho * wo * c_out,), x.dtype)
        scratch = _workspace(xp, ("rows", 1), (nb * ho * wo * c_out,), x.dtype)
        for n0 in starts:
            m = min(nb, n - n0)
            rows = m * ho * wo
            windows.fill(x[n0 : n0 + m])
            res = _accumulate_taps(
                xp,
                windows,
                tap_w,
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
    ``x_rows^T @ g_tap(kH-1-i)`` with x as a (rows, C) matrix in (h, n, w)
    order and g_tap the transposed convolution's unfold of g (module
    docstring, point 6); its columns run over the kernel columns in reverse.

    d weight otherwise: for kernel row i, ``dW_i = g^T @ tap(i)`` with g as a
    (rows, C_out) matrix whose rows match the forward's (h, n, w) order
    (copied from grad_out in runs of W_out * C_out numbers when grad_out is
    channels-last; BLAS reads its transpose without a copy).

    d x, unit stride: the transposed convolution (module docstring, point 4),
    computed with the same row-unfold machinery on the output gradient.

    d x, stride > 1: the adjoint of the forward, step by step: each
    ``g @ W_i^T`` is added onto the unfolded rows tap(i) came from, then the
    kW width taps are added back onto the padded pixels (kH + kW vectorised
    slice-adds of chunk-sized, in-cache arrays instead of an element scatter).

    Args:
        x, weight: as given to the forward. grad_out: (N, C_out, H_out, W_out),
            any memory layout.
        needs_input_grad: which of (x, weight, bias) need a gradient.

    Returns:
        (grad_x (N, C, H, W) | None, grad_weight (C_out, C, kH, kW) | None,
        grad_bias (C_out,) | None), dtype of x; grad_x is channels-last in
        memory on NumPy, like the forward's output.
    """
    need_x, need_w, need_b = (tuple(needs_input_grad) + (False, False, False))[:3]
    xp = get_array_module(x)
    if xp.__name__ != "numpy":  # GPU: im2col/col2im CUDA kernels + cuBLAS GEMMs (kernels/cuda/im2col.py)
        from .cuda import im2col as cuda_im2col
        if cuda_im2col.supported(x, weight, grad_out):
            return cuda_im2col.conv2d_backward(x, weight, grad_out, stride, padding, dilation, needs_input_grad)
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
        flipped = _tap_weights(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # kH x (kW*C_out, C)
        t_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    elif need_x:
        # Strided: d x_pad = sum over taps (i, j) of g @ weight[:, :, i, j], each
        # added at rows h_out*sH + i*dH and columns w_out*sW + j*dW. Those
        # positions are strided, so the sums go into a buffer that keeps the
        # padded rows (and columns) of each residue mod sH (sW) apart:
        #   d_phases[r, q, n, rw, qw, c] = d x_pad[n, c, q*sH + r, qw*sW + rw]
        # where tap (i, j) covers the CONTIGUOUS block q = i*dH//sH + h_out,
        # qw = j*dW//sW + w_out of phase (i*dH % sH, j*dW % sW).
        tap_w = [[xp.ascontiguousarray(weight[:, :, i, j]) for j in range(kw)] for i in range(kh)]  # (C_out, C)
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
            g_buf = _workspace(xp, ("rows", 2), (nb * ho * wo * c_out,), dtype)
        if w_from_g:
            x_buf = _workspace(xp, ("rows", 3), (nb * h * w * c,), dtype)  # x as (rows, C), rows (h, n, w)
            grad_w_taps = xp.zeros((kh, c, kw * c_out), dtype=dtype)  # this thread's share
            product = _workspace(xp, ("product",), (_max_blocks(nb * h * w, c, kw * c_out), c, kw * c_out), dtype)
        elif need_w:
            windows_x = _RowWindows(xp, c, (h, w), (kh, kw), stride, padding, dilation, (ho, wo), dtype)
            grad_w_taps = xp.zeros((kh, c_out, kw * c), dtype=dtype)  # this thread's share
            product = _workspace(xp, ("product",), (_max_blocks(nb * ho * wo, c_out, kw * c), c_out, kw * c), dtype)
        if need_x and unit_stride:
            windows_g = _RowWindows(xp, c_out, (ho, wo), (kh, kw), (1, 1), t_pad, dilation, (h, w), dtype, role="g")
            dx_rows = _workspace(xp, ("rows", 0), (nb * h * w * c,), dtype)
            scratch = _workspace(xp, ("rows", 1), (nb * h * w * c,), dtype)
        elif need_x:
            d_phases = _workspace(xp, ("phases",), (sh, q_rows, nb, sw, q_cols, c), dtype)
            d_tap = _workspace(xp, ("rows", 0), (nb * ho * wo * c,), dtype)
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
                    _accumulate_products(xp, g_rows, windows_x.tap(i), grad_w_taps[i], product)
            if need_x and unit_stride:
                windows_g.fill(g_chunk)
                rows_x = m * h * w
                if w_from_g:
                    # dW[o, c, i, j] = sum over x's pixels of x * (g tap of kernel row kH-1-i, column kW-1-j).
                    x_rows = x_buf[: rows_x * c].reshape(rows_x, c)
                    x_rows.reshape(h, m, w, c)[...] = x[n0 : n0 + m].transpose(2, 0, 3, 1)
                    for i in range(kh):
                        _accumulate_products(xp, x_rows, windows_g.tap(kh - 1 - i), grad_w_taps[i], product)
                res = _accumulate_taps(
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
                        contrib = xp.matmul(g_rows, tap_w[i][j], out=d_tap[: rows * c].reshape(rows, c))
                        acc[r, q0 : q0 + ho, :, rw, qw0 : qw0 + wo, :] += contrib.reshape(ho, m, wo, c)
                for r, (qa, qb, y0) in enumerate(row_phases):
                    for rw, (qwa, qwb, x0) in enumerate(col_phases):
                        if qb > qa and qwb > qwa:  # this phase holds real pixels (not only padding)
                            phase = acc[r, qa:qb, :, rw, qwa:qwb, :]
                            grad_x_nhwc[n0 : n0 + m, y0::sh, x0::sw] = phase.transpose(1, 0, 2, 3)
        return grad_w_taps if need_w else None

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
