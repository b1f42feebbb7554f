"""The fast CPU batch norm: the same numbers as :mod:`minires.kernels.batch_norm`, in fewer passes.

How (README.md, "Batch norm"):

* x is viewed as the (N, C*L) matrix of its own memory (channels-last or
  NCHW, no transpose); per-channel factors become one contiguous row, so
  NumPy runs long contiguous loops.
* Per-channel sums as a BLAS matrix-vector product, dot products with einsum.
* The batch in cache-sized slices, all operations on a slice back to back,
  the slices shared among the kernel threads (:mod:`.threads`).
* Sums over explicitly centred values (sum((x - mu)^2), not sum(x^2) - m mu^2),
  which keeps float32's digits; per-channel totals in float64.
* Fused ``relu(bn(x) + r)``: the ReLU and the residual addition ride on the
  last pass over each slice, and the ReLU's mask on the first backward pass.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import dispatch
from ..backend import get_array_module
from .layout import is_channels_last
from .memory import empty_aligned
from .threads import run_chunks

__all__ = [
    "batch_norm_train_forward",
    "batch_norm_train_backward",
    "batch_norm_eval_forward",
    "batch_norm_eval_backward",
    "batch_norm_relu_train_forward",
    "batch_norm_relu_train_backward",
    "channel_sum",
    "channel_dot",
]

# Size of the batch slices the CPU path works on: small enough that a slice of
# x, of the output and of one temporary stay in a core's L2 cache together,
# large enough that NumPy's per-call overhead (a few microseconds per
# operation, several operations per slice, held under the GIL while two
# threads share the slices) stays small (README.md). Tests shrink it to
# exercise slices that do not divide the batch.
_CHUNK_BYTES = 1 << 20


# ---------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------








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


def _from_rows(a_rows: Any, shape: tuple, channels_last: bool) -> Any:
    """Inverse of :func:`_as_rows`: the ``(N, K)`` matrix back as an array of ``shape`` (a view)."""
    if channels_last:
        n, c, h, w = shape
        return a_rows.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return a_rows.reshape(shape)


def _channel_row(values: Any, length: int, dtype: Any, channels_last: bool = False) -> Any:
    """Per-channel ``values`` (C,) laid out as one row of the ``(N, K)`` matrix, K = C * length.

    NCHW: each value repeated ``length`` times (c0 c0 ... c1 c1 ...);
    channels-last: the whole vector tiled ``length`` times (c0 c1 ... c0 c1 ...).
    Broadcast over the batch axis, the row gives channel c's value to every
    element of channel c.
    """
    xp = get_array_module(values)
    values = values.astype(dtype, copy=False)
    return xp.tile(values, length) if channels_last else xp.repeat(values, length)


def _channel_totals(columns: Any, channels: int, channels_last: bool) -> Any:
    """Totals per column of the ``(N, K)`` matrix, (K,), -> totals per channel, float64 (C,)."""
    xp = get_array_module(columns)
    if channels_last:
        return columns.reshape(-1, channels).sum(axis=0, dtype=xp.float64)
    return columns.reshape(channels, -1).sum(axis=1, dtype=xp.float64)


def _column_sum(a_rows: Any) -> Any:
    """Sum over the rows of an ``(N, K)`` matrix: ``ones(N) @ a``, one BLAS pass."""
    xp = get_array_module(a_rows)
    return xp.ones(a_rows.shape[0], dtype=a_rows.dtype) @ a_rows


def _column_dot(a_rows: Any, b_rows: Any) -> Any:
    """``sum over n of a[n, k] * b[n, k]`` for every column k, without materialising ``a * b``."""
    xp = get_array_module(a_rows, b_rows)
    return xp.einsum("nk,nk->k", a_rows, b_rows)


def _slice_rows(n: int, row_bytes: int, xp: Any) -> int:
    """Samples per batch slice: about ``_CHUNK_BYTES`` of them."""
    return max(1, _CHUNK_BYTES // max(1, row_bytes))


def _batch_slices(n: int, row_bytes: int, xp: Any) -> list:
    """Slices of the batch axis of about ``_CHUNK_BYTES`` each."""
    step = _slice_rows(n, row_bytes, xp)
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _over_slices(xp: Any, n: int, row_bytes: int, body: Callable[[list], Any], size: int) -> list:
    """Run ``body(slices)`` on the batch slices of :func:`_batch_slices`, shared among threads.

    The slices are dealt to the kernel threads of
    :func:`minires.fast.threads.run_chunks` (NumPy releases the GIL inside
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
    return _channel_totals(_column_sum(a3.reshape(n, c * length)), c, channels_last=False)


def channel_dot(a3: Any, b3: Any) -> Any:
    """Per-channel dot product ``sum over n, l of a[n, c, l] * b[n, c, l]``, as float64 ``(C,)``."""
    n, c, length = a3.shape
    return _channel_totals(_column_dot(a3.reshape(n, c * length), b3.reshape(n, c * length)), c, channels_last=False)


def _centered_channel_dot(
    g_rows: Any, x_rows: Any, mean: Any, channels: int, channels_last: bool, centred_out: Any = None
) -> Any:
    """``sum(g * (x - mean))`` per channel, float64 (C,), centring slice by slice.

    ``g_rows`` and ``x_rows`` are ``(N, K)`` matrices from :func:`_as_rows` (same
    order). Not ``channel_dot(g, x) - mean * channel_sum(g)``: see "Numerical
    care" in the module docstring. The centred values go to a small scratch
    buffer that stays in cache, or, when the caller passes ``centred_out`` (an
    ``(N, K)`` array), into that array, for the caller to reuse.
    """
    xp = get_array_module(g_rows, x_rows)
    n, k = x_rows.shape
    mean_row = _channel_row(mean, k // channels, x_rows.dtype, channels_last)
    slices = _batch_slices(n, k * x_rows.itemsize, xp)
    if centred_out is None:
        scratch = xp.empty((slices[0].stop - slices[0].start, k), dtype=x_rows.dtype)
    total = xp.zeros(k, dtype=x_rows.dtype)
    for s in slices:
        centred = scratch[: s.stop - s.start] if centred_out is None else centred_out[s]
        xp.subtract(x_rows[s], mean_row, out=centred)
        total += _column_dot(g_rows[s], centred)
    return _channel_totals(total, channels, channels_last)


# ---------------------------------------------------------------------------
# Training mode
# ---------------------------------------------------------------------------




def batch_norm_train_forward(x: Any, weight: Any, bias: Any, eps: float) -> tuple:
    """Training-mode forward: same contract as :func:`minires.kernels.batch_norm.batch_norm_train_forward`.

    Three passes over memory, each slice by slice and shared among the
    kernel threads: the sums for the means; ``y = x - mean`` written
    straight into the output buffer and the sum of its squares taken while
    the slice is in cache; ``y *= gamma * s; y += beta`` in place. Saves
    nothing but what it returns: backward recomputes the centred values
    from x.
    """
    return _train_forward(x, weight, bias, eps)


def _train_forward(x: Any, weight: Any, bias: Any, eps: float, residual: Any = None, relu: bool = False) -> tuple:
    """The CPU forward above; with ``residual`` and/or ``relu``, the last pass also adds and clamps (fused, below)."""
    xp = get_array_module(x)
    channels_last = is_channels_last(x)
    x_rows = _as_rows(x, channels_last)
    n, k = x_rows.shape
    c = x.shape[1]
    length = k // c
    m = n * length
    dtype = x_rows.dtype

    row_bytes = k * x_rows.itemsize

    def column_sums(slices: list) -> Any:
        total = xp.zeros(k, dtype=dtype)
        for s in slices:
            total += _column_sum(x_rows[s])
        return total

    column_totals = sum(_over_slices(xp, n, row_bytes, column_sums, x.size))
    mean = (_channel_totals(column_totals, c, channels_last) / m).astype(dtype)
    mean_row = _channel_row(mean, length, dtype, channels_last)
    y_rows = empty_aligned(xp, x_rows.shape, dtype)  # starts a memory page (see .memory)

    def centre(slices: list) -> Any:
        sum_sq = xp.zeros(k, dtype=dtype)
        for s in slices:
            centred = y_rows[s]
            xp.subtract(x_rows[s], mean_row, out=centred)
            sum_sq += _column_dot(centred, centred)
        return sum_sq

    var = _channel_totals(sum(_over_slices(xp, n, row_bytes, centre, x.size)), c, channels_last) / m
    inv_std = 1.0 / xp.sqrt(var + eps)

    scale = inv_std if weight is None else inv_std * weight.astype(xp.float64)
    scale_row = _channel_row(scale, length, dtype, channels_last)
    bias_row = None if bias is None else _channel_row(bias, length, dtype, channels_last)
    r2 = None if residual is None else _as_rows(residual, channels_last)

    def scale_and_shift(slices: list) -> None:
        for s in slices:
            out = y_rows[s]
            out *= scale_row
            if bias_row is not None:
                out += bias_row
            if r2 is not None:
                out += r2[s]
            if relu:
                xp.maximum(out, 0, out=out)

    _over_slices(xp, n, row_bytes, scale_and_shift, x.size)
    return _from_rows(y_rows, x.shape, channels_last), mean, var.astype(dtype), inv_std.astype(dtype)




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
    channels_last = is_channels_last(x)
    x_rows = _as_rows(x, channels_last)
    g_rows = _as_rows(grad, channels_last)  # in x's memory order (a copy only if grad's differs)
    y_rows = None if relu_out is None else _as_rows(relu_out, channels_last)
    dz_rows = None if y_rows is None else empty_aligned(np, x_rows.shape, x_rows.dtype)
    c, dtype = x.shape[1], x_rows.dtype
    mean_row = _channel_row(mean, x_rows.shape[1] // c, dtype, channels_last)
    sum_g, sum_g_centred = _gradient_sums(x_rows, g_rows, mean_row, c, channels_last, y_rows, dz_rows)
    s = inv_std.astype(np.float64)
    dweight, dbias = (sum_g_centred * s).astype(dtype), sum_g.astype(dtype)
    dz = None if (dz_rows is None or not keep_dz) else _from_rows(dz_rows, x.shape, channels_last)
    if not need_dx:
        return None, dweight, dbias, dz
    if dz_rows is not None:
        g_rows = dz_rows  # pass 2 runs on the gated gradient
    # dx may overwrite the gated gradient in place when nobody keeps it:
    # each slice reads its g before writing dx.
    dx_rows = dz_rows if (dz_rows is not None and not keep_dz) else empty_aligned(np, x_rows.shape, dtype)
    m = x.size // c
    gamma = np.ones(c) if weight is None else weight.astype(np.float64)
    coefficients = (gamma * s, -gamma * s**3 * sum_g_centred / m, -gamma * s * sum_g / m)  # a, b, c below
    rows = [_channel_row(v, x_rows.shape[1] // c, dtype, channels_last) for v in coefficients]
    _input_gradient(x_rows, g_rows, mean_row, rows, dx_rows)
    return _from_rows(dx_rows, x.shape, channels_last), dweight, dbias, dz


def _gradient_sums(
    x_rows: Any, g_rows: Any, mean_row: Any, c: int, channels_last: bool, y_rows: Any, dz_rows: Any
) -> tuple:
    """Pass 1: per channel, sum(g) and sum(g (x - mean)), float64; with ``y_rows``, g gated into ``dz_rows``."""
    n, k = x_rows.shape
    row_bytes = k * x_rows.itemsize
    rows_per_slice = _slice_rows(n, row_bytes, np)

    def sums(slices: list) -> Any:
        # Both sums from each slice while it is in cache. The centred values
        # go to a small scratch buffer, not to memory: pass 2 recomputes them,
        # which is cheaper than writing and re-reading a full-size array.
        scratch = empty_aligned(np, (rows_per_slice, k), x_rows.dtype)
        sum_g_cols, dot_cols = np.zeros(k, dtype=x_rows.dtype), np.zeros(k, dtype=x_rows.dtype)
        for sl in slices:
            g_slice, centred = g_rows[sl], scratch[: sl.stop - sl.start]
            if y_rows is not None:
                # "not y <= 0" rather than "y > 0": NaN passes, as in relu_backward.
                g_slice = np.multiply(g_slice, ~(y_rows[sl] <= 0), out=dz_rows[sl])
            sum_g_cols += _column_sum(g_slice)
            np.subtract(x_rows[sl], mean_row, out=centred)
            dot_cols += _column_dot(g_slice, centred)
        return np.stack([sum_g_cols, dot_cols])

    totals = sum(_over_slices(np, n, row_bytes, sums, x_rows.size))
    return _channel_totals(totals[0], c, channels_last), _channel_totals(totals[1], c, channels_last)


def _input_gradient(x_rows: Any, g_rows: Any, mean_row: Any, coefficient_rows: list, dx_rows: Any) -> None:
    """Pass 2: ``dx = b * (x - mean) + a * g + c`` slice by slice, into ``dx_rows``."""
    a_row, b_row, c_row = coefficient_rows
    n, k = x_rows.shape
    row_bytes = k * x_rows.itemsize
    rows_per_slice = _slice_rows(n, row_bytes, np)

    def input_gradient(slices: list) -> None:
        scratch = empty_aligned(np, (rows_per_slice, k), x_rows.dtype)
        for sl in slices:
            scaled_g = scratch[: sl.stop - sl.start]
            np.multiply(g_rows[sl], a_row, out=scaled_g)  # read g first: dx may reuse its buffer
            out = dx_rows[sl]
            np.subtract(x_rows[sl], mean_row, out=out)
            out *= b_row
            out += scaled_g
            out += c_row

    _over_slices(np, n, row_bytes, input_gradient, x_rows.size)


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
# numbers; the unfused composition is the reference. CPU only.




def batch_norm_relu_train_forward(x: Any, weight: Any, bias: Any, eps: float, residual: Any = None) -> tuple:
    """Fused ``relu(bn(x) + residual)``: ``(y, mean, var, inv_std)`` as the unfused batch norm gives them.

    The batch norm's passes as in :func:`batch_norm_train_forward`; the last
    one also adds the residual slice and clamps at zero. y comes back in x's
    memory layout (a residual in another layout is copied to x's first).
    """
    return _train_forward(x, weight, bias, eps, residual=residual, relu=True)




def batch_norm_relu_train_backward(
    grad: Any, y: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool = True, need_dz: bool = True
) -> tuple:
    """Fused backward of ``y = relu(bn(x) + r)``: ``(dx, dweight, dbias, dz)``, dz the gradient of r.

    ``need_dz=False`` (no residual, or its gradient not needed) returns None
    for dz and lets dx reuse its buffer; ``need_dx=False`` returns None for dx.
    """
    return _train_backward(grad, x, mean, inv_std, weight, need_dx, relu_out=y, keep_dz=need_dz)


# ---------------------------------------------------------------------------
# Evaluation mode: a fixed per-channel affine map
# ---------------------------------------------------------------------------




def batch_norm_eval_forward(
    x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float
) -> Any:
    """Evaluation-mode forward, fast path: ``y = x * scale + shift`` per channel.

    ``scale = gamma * s`` and ``shift = beta - mean * scale`` fold the four
    operations of the reference into two (as PyTorch's CPU kernel does),
    computed slice by slice so the second finds the slice in cache.
    """
    xp = get_array_module(x)
    channels_last = is_channels_last(x)
    x_rows = _as_rows(x, channels_last)
    n, k = x_rows.shape
    c = x.shape[1]
    length = k // c
    dtype = x_rows.dtype
    s = 1.0 / xp.sqrt(running_var.astype(xp.float64) + eps)
    scale = s if weight is None else s * weight.astype(xp.float64)
    shift = -running_mean.astype(xp.float64) * scale
    if bias is not None:
        shift = shift + bias.astype(xp.float64)
    scale_row = _channel_row(scale, length, dtype, channels_last)
    shift_row = _channel_row(shift, length, dtype, channels_last)
    y_rows = xp.empty_like(x_rows)
    for sl in _batch_slices(n, k * x_rows.itemsize, xp):
        out = y_rows[sl]
        xp.multiply(x_rows[sl], scale_row, out=out)
        out += shift_row
    return _from_rows(y_rows, x.shape, channels_last)




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
    channels_last = is_channels_last(x)
    g_rows = _as_rows(grad, channels_last)
    n, k = g_rows.shape
    c = x.shape[1]
    length = k // c
    dtype = g_rows.dtype
    dweight = dbias = dx = None
    if need_dparams:
        x_rows = _as_rows(x, channels_last)
        dbias = _channel_totals(_column_sum(g_rows), c, channels_last).astype(dtype)
        centred_dot = _centered_channel_dot(g_rows, x_rows, mean, c, channels_last)
        dweight = (centred_dot * inv_std.astype(xp.float64)).astype(dtype)
    if need_dx:
        a = inv_std.astype(xp.float64)
        if weight is not None:
            a = a * weight.astype(xp.float64)
        dx = _from_rows(xp.multiply(g_rows, _channel_row(a, length, dtype, channels_last)), x.shape, channels_last)
    return dx, dweight, dbias


# ---------------------------------------------------------------------------
# Running statistics
# ---------------------------------------------------------------------------


for _name in ("batch_norm_train_forward", "batch_norm_train_backward", "batch_norm_eval_forward",
              "batch_norm_eval_backward"):
    dispatch.register(_name, "cpu")(globals()[_name])
