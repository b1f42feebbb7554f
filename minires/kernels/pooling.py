"""Max and average pooling on raw arrays, forward and backward.

Pooling slides a kH x kW window over each channel separately (no weights)
and keeps one number per window position: the maximum, or the mean. Shapes:
x (N, C, H, W) -> y (N, C, H_out, W_out), with the same output-size rule as
convolution (dilation 1):

    H_out = floor((H + 2 pH - kH) / sH) + 1

Two views of the same computation
---------------------------------
*Reference* (the im2col view): ``im2col`` lays every window out as a column,
so pooling is a reduction over the kH*kW entries of each column (max or
mean), and its backward is ``col2im`` of the gradient spread back over the
columns: the whole gradient goes to the argmax entry for max pooling, an
equal share 1/(kH*kW) to every entry for average pooling. col2im sums where
windows overlap, exactly as backpropagation requires (see :mod:`.im2col`).

*Fast* (the tap view): instead of materialising kH*kW copies of the input,
loop over the kH*kW taps (i, j): tap (i, j) of all windows at once is the
strided slice ``x_pad[:, :, i::sH, j::sW]`` (trimmed to H_out x W_out). The
forward keeps a running max (and which tap produced it) or a running sum;
the backward adds each tap's share of the gradient onto that strided slice.
Within one tap no pixel appears twice, so the slice ``+=`` is exact even when
windows overlap. kH*kW vectorised passes, no Python loop over pixels.

Padding: average pooling pads with zeros and divides by kH*kW everywhere
(PyTorch's default ``count_include_pad=True``). Max pooling pads with -inf so
padding never wins. As in PyTorch, padding may be at most half the kernel,
which guarantees every window holds at least one real pixel.

Ties and NaN: the FIRST maximal tap in (i, j) order wins, like ``argmax``; a
NaN counts as larger than any number, so a window containing NaN outputs NaN
(as in PyTorch) and its gradient goes to the first NaN.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .conv import empty_channels_last
from .im2col import col2im, im2col, output_hw

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "max_pool2d_forward_reference",
    "max_pool2d_backward_reference",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "avg_pool2d_forward_reference",
    "avg_pool2d_backward_reference",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
]

Pair = tuple[int, int]


def _pad(x: Any, padding: Pair, value: float) -> Any:
    if not any(padding):
        return x
    xp = get_array_module(x)
    ph, pw = padding
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _tap_slices(kernel: Pair, stride: Pair, out_hw: Pair) -> list[tuple[int, slice, slice]]:
    """(tap index i*kW + j, row slice, column slice) of every tap over a padded input."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    return [
        (i * kw + j, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def _crop(padded: Any, padding: Pair, hw: Pair) -> Any:
    if not any(padding):
        return padded
    xp = get_array_module(padded)
    (ph, pw), (h, w) = padding, hw
    return xp.ascontiguousarray(padded[:, :, ph : ph + h, pw : pw + w])


def _index_dtype(xp: Any, taps: int) -> Any:
    # The winning tap of each window: one byte is enough for kernels up to 16x16.
    return xp.uint8 if taps <= 256 else xp.int32


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


def max_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Any, Any]:
    """Fast max pooling (tap loop).

    Args:
        x: (N, C, H, W) floating array. kernel, stride, padding: validated pairs.

    Returns:
        y: (N, C, H_out, W_out), dtype of x.
        argmax: (N, C, H_out, W_out) integer array, the winning tap ``i*kW + j``
            of each window (what backward needs; the input is not kept).
    """
    xp = get_array_module(x)
    out_hw = output_hw(x.shape[2:], kernel, stride, padding, (1, 1), what="max_pool2d")
    padded = _pad(x, padding, float("-inf"))
    best = argmax = None
    for t, rows, cols in _tap_slices(kernel, stride, out_hw):
        tap = padded[:, :, rows, cols]
        if best is None:
            best = tap.copy()
            argmax = xp.zeros(best.shape, dtype=_index_dtype(xp, kernel[0] * kernel[1]))
            continue
        # Strictly greater: earlier taps win ties. (v != v) is "v is NaN": a
        # NaN beats any number but not an earlier NaN.
        better = (tap > best) | ((tap != tap) & (best == best))
        xp.copyto(best, tap, where=better)
        argmax[better] = t
    return best, argmax


def max_pool2d_backward(
    grad_out: Any, argmax: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair
) -> Any:
    """Route each window's gradient to its winning input pixel.

    Args:
        grad_out: (N, C, H_out, W_out). argmax: from :func:`max_pool2d_forward`.
        input_shape: (N, C, H, W) of the forward input.

    Returns:
        dLoss/dx: (N, C, H, W), dtype of grad_out. Pixels that won several
        overlapping windows receive the sum of those windows' gradients.
    """
    xp = get_array_module(grad_out)
    n, c, h, w = input_shape
    out_hw = grad_out.shape[2:]
    d_padded = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=grad_out.dtype)
    for t, rows, cols in _tap_slices(kernel, stride, out_hw):
        d_padded[:, :, rows, cols] += grad_out * (argmax == t)
    return _crop(d_padded, padding, (h, w))


def max_pool2d_forward_reference(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Any, Any]:
    """Max pooling as im2col + argmax over each column (same outputs as the fast path)."""
    n, c, h, w = x.shape
    ho, wo = output_hw((h, w), kernel, stride, padding, (1, 1), what="max_pool2d")
    padded = _pad(x, padding, float("-inf"))
    cols = im2col(padded, kernel, stride, 0).reshape(n, c, kernel[0] * kernel[1], ho * wo)
    xp = get_array_module(x)
    argmax = cols.argmax(axis=2)  # first maximum; NaN counts as the maximum
    y = xp.take_along_axis(cols, argmax[:, :, None, :], axis=2)[:, :, 0, :]
    return y.reshape(n, c, ho, wo), argmax.reshape(n, c, ho, wo).astype(_index_dtype(xp, kernel[0] * kernel[1]))


def max_pool2d_backward_reference(
    grad_out: Any, argmax: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair
) -> Any:
    """col2im of a one-hot spread of the gradient: all of it to the argmax entry."""
    xp = get_array_module(grad_out)
    n, c, h, w = input_shape
    taps = kernel[0] * kernel[1]
    ho, wo = grad_out.shape[2:]
    one_hot = xp.arange(taps).reshape(1, 1, taps, 1) == argmax.reshape(n, c, 1, ho * wo)
    cols = (one_hot * grad_out.reshape(n, c, 1, ho * wo)).reshape(n, c * taps, ho * wo)
    padded_shape = (n, c, h + 2 * padding[0], w + 2 * padding[1])
    d_padded = col2im(cols, padded_shape, kernel, stride, 0)
    return _crop(d_padded, padding, (h, w))


# ---------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------


def avg_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """Fast average pooling with zero padding counted (tap loop).

    Args:
        x: (N, C, H, W). kernel, stride, padding: validated pairs.

    Returns:
        y: (N, C, H_out, W_out), dtype of x; every window sum is divided by kH*kW.
    """
    out_hw = output_hw(x.shape[2:], kernel, stride, padding, (1, 1), what="avg_pool2d")
    padded = _pad(x, padding, 0.0)
    total = None
    for _, rows, cols in _tap_slices(kernel, stride, out_hw):
        if total is None:
            total = padded[:, :, rows, cols].copy()
        else:
            total += padded[:, :, rows, cols]
    total /= kernel[0] * kernel[1]  # Python int: the dtype of x is kept
    return total


def avg_pool2d_backward(grad_out: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """Every input pixel of a window receives 1/(kH*kW) of that window's gradient.

    Args:
        grad_out: (N, C, H_out, W_out). input_shape: (N, C, H, W).

    Returns:
        dLoss/dx: (N, C, H, W), dtype of grad_out.
    """
    xp = get_array_module(grad_out)
    n, c, h, w = input_shape
    share = grad_out / (kernel[0] * kernel[1])
    d_padded = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=grad_out.dtype)
    for _, rows, cols in _tap_slices(kernel, stride, grad_out.shape[2:]):
        d_padded[:, :, rows, cols] += share
    return _crop(d_padded, padding, (h, w))


def avg_pool2d_forward_reference(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """Average pooling as im2col + mean over each column (zero padding counted)."""
    n, c, h, w = x.shape
    ho, wo = output_hw((h, w), kernel, stride, padding, (1, 1), what="avg_pool2d")
    cols = im2col(x, kernel, stride, padding).reshape(n, c, kernel[0] * kernel[1], ho * wo)
    return cols.mean(axis=2).reshape(n, c, ho, wo)


def avg_pool2d_backward_reference(
    grad_out: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair
) -> Any:
    """col2im of the gradient spread evenly over each column."""
    xp = get_array_module(grad_out)
    n, c, _, _ = input_shape
    taps = kernel[0] * kernel[1]
    ho, wo = grad_out.shape[2:]
    share = grad_out.reshape(n, c, 1, ho * wo) / taps
    cols = xp.broadcast_to(share, (n, c, taps, ho * wo)).reshape(n, c * taps, ho * wo)
    return col2im(cols, input_shape, kernel, stride, padding)


# ---------------------------------------------------------------------------
# Global average pooling (adaptive_avg_pool2d with output size 1)
# ---------------------------------------------------------------------------


def global_avg_pool_forward(x: Any) -> Any:
    """Mean over each whole channel: (N, C, H, W) -> (N, C, 1, 1)."""
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_backward(grad_out: Any, input_shape: tuple, channels_last: bool = False) -> Any:
    """Each of the H*W pixels of a channel receives 1/(H*W) of its gradient: (N, C, 1, 1) -> (N, C, H, W).

    ``channels_last``: store the result channels-last in memory (as the
    input was), so that the gradient flowing back into the network has the
    layout of the activations it meets (see :mod:`minires.kernels.conv`).
    """
    xp = get_array_module(grad_out)
    h, w = input_shape[2], input_shape[3]
    if channels_last:
        grad_x = empty_channels_last(xp, input_shape, grad_out.dtype)
    else:
        grad_x = xp.empty(input_shape, dtype=grad_out.dtype)
    grad_x[...] = grad_out / (h * w)  # broadcast over H and W, materialised (callers may write to it)
    return grad_x
