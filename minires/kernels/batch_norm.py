"""Batch normalisation: the mathematics, a readable reference, and a fast path.

Batch normalisation (Ioffe and Szegedy, 2015) rescales every channel of a
layer's output to zero mean and unit variance over the mini-batch, then lets
the network choose its own scale and shift back. ResNets put one after every
convolution: it keeps the signals of a deep stack in a range where ReLU and
the next convolution work well.

Shapes: ``x`` is ``(N, C)`` or ``(N, C, L)`` or ``(N, C, H, W)``. Every channel
``c`` is normalised over all its ``m = N * H * W`` values (the batch axis and
the spatial axes); ``weight`` (gamma), ``bias`` (beta) and the statistics have
shape ``(C,)``.

Forward (training mode), for one channel with values x_1 .. x_m::

    mu      = (1/m) sum_i x_i
    var     = (1/m) sum_i (x_i - mu)^2          biased: divide by m, not m - 1
    s       = 1 / sqrt(var + eps)               "inv_std"
    xhat_i  = (x_i - mu) * s                    zero mean, unit variance
    y_i     = gamma * xhat_i + beta

In evaluation mode ``mu`` and ``var`` are the running averages collected
during training instead of the batch's own statistics, so ``y`` is a fixed
per-channel affine map of ``x``. The running averages follow PyTorch::

    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

The running variance uses the UNBIASED estimate (Bessel's correction, m - 1):
it estimates the variance of the whole data distribution, while the batch
normalisation itself uses the biased one, as the formula above says.

Backward (training mode), derived by hand
-----------------------------------------
Given g_i = dL/dy_i, the parameter gradients are direct::

    dbeta  = sum_i g_i
    dgamma = sum_i g_i * xhat_i

For the input, every xhat_j depends on every x_i, directly and through mu and
var. Differentiate, using dmu/dx_i = 1/m and dvar/dx_i = (2/m)(x_i - mu) (the
term through mu drops out of dvar because sum_j (x_j - mu) = 0)::

    dxhat_j/dx_i = s * (delta_ij - 1/m) - (x_j - mu) * s^3 * (1/m)(x_i - mu)
                 = (s/m) * (m delta_ij - 1 - xhat_j xhat_i)

and dL/dxhat_j = gamma g_j, so by the chain rule::

    dx_i = sum_j gamma g_j dxhat_j/dx_i
         = (gamma s / m) * (m g_i - sum_j g_j - xhat_i * sum_j g_j xhat_j)
         = (gamma s / m) * (m g_i - dbeta - xhat_i * dgamma)

Read it as: take the upstream gradient, remove its mean and its component
along xhat, scale by gamma * s. The gradient cannot move the batch mean or
the batch variance of x, because normalisation would undo such a move:
``sum_i dx_i = 0`` exactly, per channel. (This is also why a gradient check
with an all-ones upstream gradient is vacuous here: sum_i y_i = m * beta
whatever x is, so its gradient with respect to x is zero.)

Computing the three sums once and then the elementwise formula costs two
passes over the data instead of the many passes an autograd graph of
primitive operations (subtract, square, mean, sqrt, divide, ...) would take,
and saves no intermediate but x itself.

Backward (evaluation mode): mu and s are constants, so ``dx = gamma * s * g``
and the parameter gradients have the same formulas as in training.

Implementations in this file
----------------------------
``*_reference`` functions spell the formulas out with whole-array NumPy
expressions: easy to check against the mathematics above, but they create a
full-size temporary for nearly every operator. The functions without the
suffix compute the same numbers with fewer passes over memory; tests compare
the two. Both work on NumPy and CuPy arrays alike (``xp`` is whichever module
owns the arrays). How the fast path saves work:

* Per-channel sums as a matrix-vector product: viewing x as an ``(N, C*L)``
  matrix, ``ones(N) @ x`` sums over the batch in one BLAS call (which uses
  every core), leaving a small ``(C, L)`` array to finish.
* Per-channel dot products (sum_i a_i b_i) with ``einsum``, which multiplies
  and adds in one loop without materialising ``a * b``.
* Per-channel factors are repeated into one contiguous row of length
  ``C * L`` and broadcast over the batch axis of the ``(N, C*L)`` view: NumPy
  then runs long contiguous inner loops, up to twice as fast (measured with
  NumPy 2.4) as broadcasting a ``(C, 1)`` column over ``(N, C, L)``, which
  runs one short inner loop per (sample, channel) pair.
* Channels-last inputs stay channels-last. A 4-D x whose memory is (N, H,
  W, C) (what the fast convolution returns, see :mod:`minires.kernels.conv`)
  is viewed as the ``(N, H*W*C)`` matrix of its own memory, and the
  per-channel rows are TILED (c0 c1 ... c0 c1 ...) instead of repeated: the
  same long contiguous loops, no transpose, and y and dx come back in x's
  layout. Copying it to NCHW first would cost a full transpose each way
  (measured: about a third of batch norm's time in a ResNet-20 step).
* Both cores: in training mode the slices (next point) are shared among
  the kernel threads of :func:`minires.kernels.conv.run_chunks`, each thread
  summing its own slices into partial sums that are added at the end.
* Cache blocking on the CPU: the batch is processed in slices of about
  ``_CHUNK_BYTES``, and all the operations on one slice run back to back while
  it sits in the CPU cache. A temporary the size of one slice is reused for
  every slice instead of allocating a full-size one.
* Numerical care: sums such as ``sum((x - mu)^2)`` and ``sum(g * (x - mu))``
  are taken over explicitly centred values. The shortcut
  ``sum(g * x) - mu * sum(g)`` subtracts two nearly equal large numbers when
  |mu| is large against the standard deviation and loses the digits float32
  has. The centred values cost no extra buffer: the forward writes them into
  the output array (then scales them in place), the backward into the array
  that becomes dx.

float32 inputs give float32 outputs. Sums are first taken per column of the
``(N, C*L)`` matrix over one thread's rows (at most N numbers each, in x's
dtype), then combined per channel in float64, which costs nothing and keeps
the few per-channel numbers (C of them) exact enough.

On the GPU (CuPy float32/float64 arrays), the training-mode forward and
backward and the running-statistics update hand over to fused CUDA kernels in
:mod:`minires.kernels.cuda.batch_norm` (one reduction pass and one
elementwise pass each way, same numbers); evaluation mode runs the xp-generic
code below on CuPy as whole-array operations.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..backend import get_array_module
from .aligned import empty_aligned
from .conv import run_chunks

__all__ = [
    "batch_norm_relu_train_forward",
    "batch_norm_relu_train_forward_reference",
    "batch_norm_relu_train_backward",
    "batch_norm_relu_train_backward_reference",
    "batch_norm_train_forward",
    "batch_norm_train_forward_reference",
    "batch_norm_train_backward",
    "batch_norm_train_backward_reference",
    "batch_norm_eval_forward",
    "batch_norm_eval_forward_reference",
    "batch_norm_eval_backward",
    "batch_norm_eval_backward_reference",
    "update_running_stats",
    "channel_sum",
    "channel_dot",
]

# Size of the batch slices the CPU path works on: small enough that a slice of
# x, of the output and of one temporary stay in a core's L2 cache together,
# large enough that NumPy's per-call overhead (a few microseconds per
# operation, several operations per slice, held under the GIL while two
# threads share the slices) stays small. On the 2-core machine of
# benchmarks/README.md, batch norm over the ResNet-20 shapes with 2 threads:
# 80 ms per step with 1 MB slices, 108 ms with 256 kB (with 1 thread 256 kB
# was about 10% faster). (Tests shrink it to exercise slices that do not
# divide the batch.)
_CHUNK_BYTES = 1 << 20


# ---------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------


def _channel_shape(ndim: int) -> tuple:
    """Shape that broadcasts a (C,) vector against an (N, C, *spatial) array: (1, C, 1, ...)."""
    return (1, -1) + (1,) * (ndim - 2)


def _reduce_axes(ndim: int) -> tuple:
    """Every axis but the channel axis: (0, 2, 3) for NCHW, (0,) for (N, C)."""
    return (0,) + tuple(range(2, ndim))


def _channels_last(a: Any) -> bool:
    """True for a 4-D array stored channels-last, i.e. a transposed C-contiguous (N, H, W, C) buffer.

    An array that is ALSO C-contiguous (C == 1 or H*W == 1) counts as NCHW:
    both orders are then the same memory.
    """
    return a.ndim == 4 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _as_rows(a: Any, channels_last: bool) -> Any:
    """``(N, C, *spatial)`` as an ``(N, K)`` matrix (K = C*L) in NCHW or channels-last order.

    A view when ``a`` already has that memory order, else a copy into it
    (e.g. an upstream gradient whose layout differs from x's).
    """
    xp = get_array_module(a)
    n = a.shape[0]
    if channels_last:
        return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(n, -1)
    return xp.ascontiguousarray(a).reshape(n, -1)


def _from_rows(a2: Any, shape: tuple, channels_last: bool) -> Any:
    """Inverse of :func:`_as_rows`: the ``(N, K)`` matrix back as an array of ``shape`` (a view)."""
    if channels_last:
        n, c, h, w = shape
        return a2.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return a2.reshape(shape)


def _row(values: Any, length: int, dtype: Any, channels_last: bool = False) -> Any:
    """Per-channel ``values`` (C,) laid out as one row of the ``(N, K)`` matrix, K = C * length.

    NCHW: each value repeated ``length`` times (c0 c0 ... c1 c1 ...);
    channels-last: the whole vector tiled ``length`` times (c0 c1 ... c0 c1 ...).
    Broadcast over the batch axis, the row gives channel c's value to every
    element of channel c.
    """
    xp = get_array_module(values)
    values = values.astype(dtype, copy=False)
    return xp.tile(values, length) if channels_last else xp.repeat(values, length)


def _fold(columns: Any, channels: int, channels_last: bool) -> Any:
    """Totals per column of the ``(N, K)`` matrix, (K,), -> totals per channel, float64 (C,)."""
    xp = get_array_module(columns)
    if channels_last:
        return columns.reshape(-1, channels).sum(axis=0, dtype=xp.float64)
    return columns.reshape(channels, -1).sum(axis=1, dtype=xp.float64)


def _column_sum(a2: Any) -> Any:
    """Sum over the rows of an ``(N, K)`` matrix: ``ones(N) @ a``, one BLAS pass."""
    xp = get_array_module(a2)
    return xp.ones(a2.shape[0], dtype=a2.dtype) @ a2


def _column_dot(a2: Any, b2: Any) -> Any:
    """``sum over n of a[n, k] * b[n, k]`` for every column k, without materialising ``a * b``."""
    xp = get_array_module(a2, b2)
    return xp.einsum("nk,nk->k", a2, b2)


def _slice_rows(n: int, row_bytes: int, xp: Any) -> int:
    """Samples per batch slice: about ``_CHUNK_BYTES`` of them (the whole batch on the GPU)."""
    if xp is not np:
        return max(n, 1)  # no cache to block for; fewer, larger kernels are better
    return max(1, _CHUNK_BYTES // max(1, row_bytes))


def _batch_slices(n: int, row_bytes: int, xp: Any) -> list:
    """Slices of the batch axis of about ``_CHUNK_BYTES`` each (one slice on the GPU)."""
    step = _slice_rows(n, row_bytes, xp)
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _over_slices(xp: Any, n: int, row_bytes: int, body: Callable[[list], Any], size: int) -> list:
    """Run ``body(slices)`` on the batch slices of :func:`_batch_slices`, shared among threads.

    The slices are dealt to the kernel threads of
    :func:`minires.kernels.conv.run_chunks` (NumPy releases the GIL inside
    each operation, so two threads run two slices at once); ``body`` gets
    one thread's list of slices and returns its partial result. Returns the
    list of partial results, one per thread, in a fixed order (so sums of
    them are reproducible run to run). ``size``: elements of the array, to
    decide whether threads are worth their hand-off.
    """
    step = _slice_rows(n, row_bytes, xp)
    return run_chunks(
        xp, n, step, lambda starts: body([slice(s, min(n, s + step)) for s in starts]), flops=4 * size
    )


def channel_sum(a3: Any) -> Any:
    """Per-channel sum of an ``(N, C, L)`` array, as float64 ``(C,)``.

    ``ones(N) @ a.reshape(N, C*L)`` sums over the batch with one BLAS
    matrix-vector product (multi-threaded, one pass over ``a``); the
    ``(C, L)`` remainder is small.
    """
    n, c, length = a3.shape
    return _fold(_column_sum(a3.reshape(n, c * length)), c, channels_last=False)


def channel_dot(a3: Any, b3: Any) -> Any:
    """Per-channel dot product ``sum over n, l of a[n, c, l] * b[n, c, l]``, as float64 ``(C,)``."""
    n, c, length = a3.shape
    return _fold(_column_dot(a3.reshape(n, c * length), b3.reshape(n, c * length)), c, channels_last=False)


def _centered_channel_dot(
    g2: Any, x2: Any, mean: Any, channels: int, channels_last: bool, centred_out: Any = None
) -> Any:
    """``sum(g * (x - mean))`` per channel, float64 (C,), centring slice by slice.

    ``g2`` and ``x2`` are ``(N, K)`` matrices from :func:`_as_rows` (same
    order). Not ``channel_dot(g, x) - mean * channel_sum(g)``: see "Numerical
    care" in the module docstring. The centred values go to a small scratch
    buffer that stays in cache, or, when the caller passes ``centred_out`` (an
    ``(N, K)`` array), into that array, for the caller to reuse.
    """
    xp = get_array_module(g2, x2)
    n, k = x2.shape
    mean_row = _row(mean, k // channels, x2.dtype, channels_last)
    slices = _batch_slices(n, k * x2.itemsize, xp)
    if centred_out is None:
        scratch = xp.empty((slices[0].stop - slices[0].start, k), dtype=x2.dtype)
    total = xp.zeros(k, dtype=x2.dtype)
    for s in slices:
        centred = scratch[: s.stop - s.start] if centred_out is None else centred_out[s]
        xp.subtract(x2[s], mean_row, out=centred)
        total += _column_dot(g2[s], centred)
    return _fold(total, channels, channels_last)


# ---------------------------------------------------------------------------
# Training mode
# ---------------------------------------------------------------------------


def batch_norm_train_forward_reference(x: Any, weight: Any, bias: Any, eps: float) -> tuple:
    """Training-mode forward, written as the formulas read (see the module docstring).

    Args:
        x: ``(N, C, *spatial)`` with at least two values per channel.
        weight, bias: ``(C,)`` or None (None: gamma = 1, beta = 0).
        eps: added to the variance before the square root.

    Returns:
        ``(y, mean, var, inv_std)``: y has x's shape; the others are ``(C,)``,
        var is the biased batch variance. All in x's dtype.
    """
    xp = get_array_module(x)
    axes = _reduce_axes(x.ndim)
    shape = _channel_shape(x.ndim)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)  # ddof=0: the biased variance
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y, mean, var, inv_std


def batch_norm_train_forward(x: Any, weight: Any, bias: Any, eps: float) -> tuple:
    """Training-mode forward, fast path: same contract as :func:`batch_norm_train_forward_reference`.

    Three passes over memory, each slice by slice and shared among the
    kernel threads: the sums for the means; ``y = x - mean`` written
    straight into the output buffer and the sum of its squares taken while
    the slice is in cache; ``y *= gamma * s; y += beta`` in place. Saves
    nothing but what it returns: backward recomputes the centred values
    from x.
    """
    xp = get_array_module(x)
    if xp is not np:  # GPU: fused CUDA kernels, one reduction pass + one elementwise pass (kernels/cuda/batch_norm.py)
        from .cuda import batch_norm as cuda_bn
        if cuda_bn.supported(x, weight, bias):
            return cuda_bn.batch_norm_train_forward(x, weight, bias, eps)
    return _train_forward(x, weight, bias, eps)


def _train_forward(x: Any, weight: Any, bias: Any, eps: float, residual: Any = None, relu: bool = False) -> tuple:
    """The CPU forward above; with ``residual`` and/or ``relu``, the last pass also adds and clamps (fused, below)."""
    xp = get_array_module(x)
    cl = _channels_last(x)
    x2 = _as_rows(x, cl)
    n, k = x2.shape
    c = x.shape[1]
    length = k // c
    m = n * length
    dtype = x2.dtype

    row_bytes = k * x2.itemsize

    def column_sums(slices: list) -> Any:
        total = xp.zeros(k, dtype=dtype)
        for s in slices:
            total += _column_sum(x2[s])
        return total

    mean = (_fold(sum(_over_slices(xp, n, row_bytes, column_sums, x.size)), c, cl) / m).astype(dtype)
    mean_row = _row(mean, length, dtype, cl)
    y2 = empty_aligned(xp, x2.shape, dtype)  # starts a memory page (see .aligned)

    def centre(slices: list) -> Any:
        sum_sq = xp.zeros(k, dtype=dtype)
        for s in slices:
            centred = y2[s]
            xp.subtract(x2[s], mean_row, out=centred)
            sum_sq += _column_dot(centred, centred)
        return sum_sq

    var = _fold(sum(_over_slices(xp, n, row_bytes, centre, x.size)), c, cl) / m
    inv_std = 1.0 / xp.sqrt(var + eps)

    scale = inv_std if weight is None else inv_std * weight.astype(xp.float64)
    scale_row = _row(scale, length, dtype, cl)
    bias_row = None if bias is None else _row(bias, length, dtype, cl)
    r2 = None if residual is None else _as_rows(residual, cl)

    def scale_and_shift(slices: list) -> None:
        for s in slices:
            out = y2[s]
            out *= scale_row
            if bias_row is not None:
                out += bias_row
            if r2 is not None:
                out += r2[s]
            if relu:
                xp.maximum(out, 0, out=out)

    _over_slices(xp, n, row_bytes, scale_and_shift, x.size)
    return _from_rows(y2, x.shape, cl), mean, var.astype(dtype), inv_std.astype(dtype)


def batch_norm_train_backward_reference(
    grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any
) -> tuple:
    """Training-mode backward, the closed form of the module docstring as written.

    Args:
        grad: dL/dy, x's shape.
        x: the forward input.
        mean, inv_std: ``(C,)`` batch statistics returned by the forward.
        weight: ``(C,)`` gamma, or None for gamma = 1.

    Returns:
        ``(dx, dweight, dbias)``: dx has x's shape, the others ``(C,)``
        (computed even when the layer has no weight/bias; the caller drops them).
    """
    axes = _reduce_axes(x.ndim)
    shape = _channel_shape(x.ndim)
    m = x.size // x.shape[1]
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    dbias = grad.sum(axis=axes)
    dweight = (grad * xhat).sum(axis=axes)
    gamma = 1.0 if weight is None else weight.reshape(shape)
    dx = (gamma * inv_std.reshape(shape) / m) * (
        m * grad - dbias.reshape(shape) - xhat * dweight.reshape(shape)
    )
    return dx, dweight, dbias


def batch_norm_train_backward(
    grad: Any,
    x: Any,
    mean: Any,
    inv_std: Any,
    weight: Any,
    need_dx: bool = True,
) -> tuple:
    """Training-mode backward, fast path: same contract as the reference.

    ``need_dx=False`` skips the input gradient (returns None for it), e.g. for
    a first layer whose input needs no gradient.

    Two passes over memory, each slice by slice while the slice is in cache
    (slices shared among the kernel threads): the first takes dbias = sum(g) and dgamma = s * sum(g * (x - mean)); the
    second writes dx as ``a * g + b * (x - mean) + c`` with per-channel
    a, b, c::

        a = gamma * s,   b = -gamma * s^3 * sum(g (x - mu)) / m,   c = -gamma * s * sum(g) / m

    which is the closed form with xhat = (x - mu) s expanded.
    """
    xp = get_array_module(grad, x)
    if xp is not np:  # GPU: fused CUDA kernels, one reduction pass + one elementwise pass (kernels/cuda/batch_norm.py)
        from .cuda import batch_norm as cuda_bn
        if cuda_bn.supported(grad, x, mean, inv_std, weight):
            return cuda_bn.batch_norm_train_backward(grad, x, mean, inv_std, weight, need_dx=need_dx)
    dx, dweight, dbias, _ = _train_backward(grad, x, mean, inv_std, weight, need_dx)
    return dx, dweight, dbias


def _train_backward(
    grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool, relu_out: Any = None, keep_dz: bool = False
) -> tuple:
    """The CPU backward above, returning ``(dx, dweight, dbias, dz)``.

    With ``relu_out`` (the output y of a fused ``relu(bn(x) [+ r])``), the
    first pass gates the gradient with y's mask while each slice is in cache,
    ``dz = grad * (y > 0)`` (the gradient of the ReLU's input), and the rest
    runs on dz. ``dz`` is returned when ``keep_dz`` (the residual's gradient),
    else its buffer becomes dx; without ``relu_out`` it is None.
    """
    xp = get_array_module(grad, x)
    cl = _channels_last(x)
    x2 = _as_rows(x, cl)
    g2 = _as_rows(grad, cl)  # in x's memory order (a copy only if grad's differs)
    y2 = None if relu_out is None else _as_rows(relu_out, cl)
    dz2 = None if y2 is None else empty_aligned(xp, x2.shape, x2.dtype)
    n, k = x2.shape
    c = x.shape[1]
    length = k // c
    m = n * length
    dtype = x2.dtype

    mean_row = _row(mean, length, dtype, cl)
    row_bytes = k * x2.itemsize
    rows_per_slice = _slice_rows(n, row_bytes, xp)

    def sums(slices: list) -> Any:
        # Both sums from each slice while it is in cache. The centred values
        # go to a small scratch buffer, not to memory: pass 2 recomputes them,
        # which is cheaper than writing and re-reading a full-size array.
        scratch = empty_aligned(xp, (rows_per_slice, k), dtype)
        sum_g_cols = xp.zeros(k, dtype=dtype)
        dot_cols = xp.zeros(k, dtype=dtype)
        for sl in slices:
            g_slice, centred = g2[sl], scratch[: sl.stop - sl.start]
            if y2 is not None:
                # "not y <= 0" rather than "y > 0": NaN passes, as in relu_backward.
                g_slice = xp.multiply(g_slice, ~(y2[sl] <= 0), out=dz2[sl])
            sum_g_cols += _column_sum(g_slice)
            xp.subtract(x2[sl], mean_row, out=centred)
            dot_cols += _column_dot(g_slice, centred)
        return xp.stack([sum_g_cols, dot_cols])

    totals = sum(_over_slices(xp, n, row_bytes, sums, x.size))
    sum_g, sum_g_centred = _fold(totals[0], c, cl), _fold(totals[1], c, cl)
    s = inv_std.astype(xp.float64)
    dbias = sum_g
    dweight = sum_g_centred * s
    dz = None if (dz2 is None or not keep_dz) else _from_rows(dz2, x.shape, cl)
    if not need_dx:
        return None, dweight.astype(dtype), dbias.astype(dtype), dz
    if dz2 is not None:
        g2 = dz2  # pass 2 runs on the gated gradient

    gamma = xp.ones(c, dtype=xp.float64) if weight is None else weight.astype(xp.float64)
    a = gamma * s
    b = -gamma * s**3 * sum_g_centred / m
    c_shift = -gamma * s * sum_g / m
    a_row, b_row, c_row = (_row(v, length, dtype, cl) for v in (a, b, c_shift))

    # dx may overwrite the gated gradient in place when nobody keeps it:
    # each slice reads its g before writing dx (scaled_g first).
    dx2 = dz2 if (dz2 is not None and not keep_dz) else empty_aligned(xp, (n, k), dtype)

    def input_gradient(slices: list) -> None:  # pass 2: dx = b * (x - mean) + a * g + c
        scratch = empty_aligned(xp, (rows_per_slice, k), dtype)
        for sl in slices:
            scaled_g = scratch[: sl.stop - sl.start]
            xp.multiply(g2[sl], a_row, out=scaled_g)
            out = dx2[sl]
            xp.subtract(x2[sl], mean_row, out=out)
            out *= b_row
            out += scaled_g
            out += c_row

    _over_slices(xp, n, row_bytes, input_gradient, x.size)
    return _from_rows(dx2, x.shape, cl), dweight.astype(dtype), dbias.astype(dtype), dz


# ---------------------------------------------------------------------------
# Fused with the ReLU that follows (and a residual addition before it)
# ---------------------------------------------------------------------------
#
# In a ResNet every batch norm is followed by a ReLU, the last one of a
# residual block after adding the shortcut: z = bn(x) + r, y = relu(z).
# Run as three operations, the addition and the ReLU each make one more full
# pass over memory forward and the ReLU another backward, and each allocates
# a full-size array. Fused, they become two more operations on the slice
# that the batch norm's last pass already holds in cache, and the ReLU's
# backward mask is applied inside the batch norm's first backward pass. Same
# numbers; the unfused composition is the reference. (On the GPU the fused
# functions run the separate CUDA kernels one after another.)


def batch_norm_relu_train_forward_reference(x: Any, weight: Any, bias: Any, eps: float, residual: Any = None) -> tuple:
    """``relu(bn(x) + residual)`` from the reference batch norm: ``(y, mean, var, inv_std)``.

    ``residual`` has x's shape, or is None (``relu(bn(x))``).
    """
    xp = get_array_module(x)
    z, mean, var, inv_std = batch_norm_train_forward_reference(x, weight, bias, eps)
    if residual is not None:
        z = z + residual
    return xp.maximum(z, 0), mean, var, inv_std


def batch_norm_relu_train_forward(x: Any, weight: Any, bias: Any, eps: float, residual: Any = None) -> tuple:
    """Fused ``relu(bn(x) + residual)``, same contract as the reference above.

    The batch norm's passes as in :func:`batch_norm_train_forward`; the last
    one also adds the residual slice and clamps at zero. y comes back in x's
    memory layout (a residual in another layout is copied to x's first).
    """
    xp = get_array_module(x)
    if xp is not np:
        from .relu import relu_forward

        z, mean, var, inv_std = batch_norm_train_forward(x, weight, bias, eps)
        if residual is not None:
            z = z + residual
        return relu_forward(z), mean, var, inv_std
    return _train_forward(x, weight, bias, eps, residual=residual, relu=True)


def batch_norm_relu_train_backward_reference(
    grad: Any, y: Any, x: Any, mean: Any, inv_std: Any, weight: Any
) -> tuple:
    """Gradients of ``y = relu(bn(x) + r)``: ``(dx, dweight, dbias, dz)``.

    ``dz = grad * (y > 0)`` (NaN in y passes, as in relu_backward) is the
    gradient of the ReLU's input, so also the residual's; the batch norm's
    gradients are those of the reference with dz as the upstream gradient.
    """
    dz = grad * ~(y <= 0)
    dx, dweight, dbias = batch_norm_train_backward_reference(dz, x, mean, inv_std, weight)
    return dx, dweight, dbias, dz


def batch_norm_relu_train_backward(
    grad: Any, y: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool = True, need_dz: bool = True
) -> tuple:
    """Fused backward of ``y = relu(bn(x) + r)``, same contract as the reference.

    ``need_dz=False`` (no residual, or its gradient not needed) returns None
    for dz and lets dx reuse its buffer; ``need_dx=False`` returns None for dx.
    """
    xp = get_array_module(grad, x)
    if xp is not np:
        from .relu import relu_backward

        dz = relu_backward(grad, y)
        dx, dweight, dbias = batch_norm_train_backward(dz, x, mean, inv_std, weight, need_dx=need_dx)
        return dx, dweight, dbias, (dz if need_dz else None)
    return _train_backward(grad, x, mean, inv_std, weight, need_dx, relu_out=y, keep_dz=need_dz)


# ---------------------------------------------------------------------------
# Evaluation mode: a fixed per-channel affine map
# ---------------------------------------------------------------------------


def batch_norm_eval_forward_reference(
    x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float
) -> Any:
    """Evaluation-mode forward as written: normalise with the running statistics.

    Args:
        x: ``(N, C, *spatial)``; any N, even 1.
        running_mean, running_var: ``(C,)``.
        weight, bias: ``(C,)`` or None.

    Returns:
        y, x's shape and dtype.
    """
    xp = get_array_module(x)
    shape = _channel_shape(x.ndim)
    inv_std = 1.0 / xp.sqrt(running_var + eps)
    y = (x - running_mean.reshape(shape)) * inv_std.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y.astype(x.dtype, copy=False)


def batch_norm_eval_forward(
    x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float
) -> Any:
    """Evaluation-mode forward, fast path: ``y = x * scale + shift`` per channel.

    ``scale = gamma * s`` and ``shift = beta - mean * scale`` fold the four
    operations of the reference into two (as PyTorch's CPU kernel does),
    computed slice by slice so the second finds the slice in cache.
    """
    xp = get_array_module(x)
    cl = _channels_last(x)
    x2 = _as_rows(x, cl)
    n, k = x2.shape
    c = x.shape[1]
    length = k // c
    dtype = x2.dtype
    s = 1.0 / xp.sqrt(running_var.astype(xp.float64) + eps)
    scale = s if weight is None else s * weight.astype(xp.float64)
    shift = -running_mean.astype(xp.float64) * scale
    if bias is not None:
        shift = shift + bias.astype(xp.float64)
    scale_row, shift_row = _row(scale, length, dtype, cl), _row(shift, length, dtype, cl)
    y2 = xp.empty_like(x2)
    for sl in _batch_slices(n, k * x2.itemsize, xp):
        out = y2[sl]
        xp.multiply(x2[sl], scale_row, out=out)
        out += shift_row
    return _from_rows(y2, x.shape, cl)


def batch_norm_eval_backward_reference(
    grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any
) -> tuple:
    """Evaluation-mode backward as written: the affine map's gradients.

    ``mean`` and ``inv_std`` are the constants the forward used (running mean
    and ``1/sqrt(running_var + eps)``). Returns ``(dx, dweight, dbias)``.
    """
    axes = _reduce_axes(x.ndim)
    shape = _channel_shape(x.ndim)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
    gamma = 1.0 if weight is None else weight.reshape(shape)
    dx = grad * gamma * inv_std.reshape(shape)
    return dx.astype(x.dtype, copy=False), (grad * xhat).sum(axis=axes), grad.sum(axis=axes)


def batch_norm_eval_backward(
    grad: Any,
    x: Any,
    mean: Any,
    inv_std: Any,
    weight: Any,
    need_dx: bool = True,
    need_dparams: bool = True,
) -> tuple:
    """Evaluation-mode backward, fast path: same contract as the reference.

    dx is one multiplication. The parameter sums (skipped when
    ``need_dparams`` is False, returning None for both) use the same
    BLAS sum and centred dot product as training mode.
    """
    xp = get_array_module(grad, x)
    cl = _channels_last(x)
    g2 = _as_rows(grad, cl)
    n, k = g2.shape
    c = x.shape[1]
    length = k // c
    dtype = g2.dtype
    dweight = dbias = dx = None
    if need_dparams:
        x2 = _as_rows(x, cl)
        dbias = _fold(_column_sum(g2), c, cl).astype(dtype)
        dweight = (_centered_channel_dot(g2, x2, mean, c, cl) * inv_std.astype(xp.float64)).astype(dtype)
    if need_dx:
        a = inv_std.astype(xp.float64)
        if weight is not None:
            a = a * weight.astype(xp.float64)
        dx = _from_rows(xp.multiply(g2, _row(a, length, dtype, cl)), x.shape, cl)
    return dx, dweight, dbias


# ---------------------------------------------------------------------------
# Running statistics
# ---------------------------------------------------------------------------


def update_running_stats(
    running_mean: Any, running_var: Any, batch_mean: Any, batch_var: Any, count: int, momentum: float
) -> None:
    """Update the running averages IN PLACE with PyTorch's rule (module docstring).

    Args:
        running_mean, running_var: ``(C,)`` arrays, overwritten.
        batch_mean, batch_var: ``(C,)`` this batch's mean and BIASED variance.
        count: values per channel in the batch (m = N * H * W), at least 2.
        momentum: weight of the new batch, in [0, 1].
    """
    if count < 2:
        raise ValueError(f"the unbiased variance needs at least 2 values per channel, got {count}")
    xp = get_array_module(running_mean)
    if xp is not np:  # GPU: one elementwise CUDA kernel, in place on the device (kernels/cuda/batch_norm.py)
        from .cuda import batch_norm as cuda_bn
        if cuda_bn.supported(running_mean, running_var, batch_mean, batch_var):
            return cuda_bn.update_running_stats(running_mean, running_var, batch_mean, batch_var, count, momentum)
    unbiased = batch_var.astype(xp.float64) * (count / (count - 1))
    new_mean = (1.0 - momentum) * running_mean.astype(xp.float64) + momentum * batch_mean.astype(xp.float64)
    new_var = (1.0 - momentum) * running_var.astype(xp.float64) + momentum * unbiased
    running_mean[...] = new_mean  # assignment into the existing buffer: the caller's array changes
    running_var[...] = new_var
