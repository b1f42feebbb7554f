"""Max and average pooling on raw arrays, forward and backward, as im2col plus a reduction.

Pooling slides a kH x kW window over each channel separately (no weights) and
keeps one number per window: the maximum, or the mean. Shapes: x (N, C, H, W)
-> y (N, C, H_out, W_out), with convolution's output-size rule (dilation 1):

    H_out = floor((H + 2 pH - kH) / sH) + 1

``im2col`` lays every window out as a column, so pooling is a reduction over
the kH kW entries of each column, and its backward is ``col2im`` of the
gradient spread over the columns: all of it to the argmax entry for max
pooling, an equal share 1/(kH kW) to every entry for average pooling. col2im
sums where windows overlap, exactly as backpropagation requires (see
:mod:`.im2col`).

Padding: average pooling pads with zeros and divides by kH kW everywhere
(PyTorch's default ``count_include_pad=True``). Max pooling pads with -inf, so
padding never wins; as in PyTorch, padding is at most half the kernel, so
every window holds a real pixel.

Ties and NaN: the FIRST maximal entry in (i, j) order wins, like ``argmax``; a
NaN counts as larger than any number (as in PyTorch).

Global average pooling (the ResNets' head) is the mean over each channel.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .im2col import col2im, im2col, output_hw

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
]

Pair = tuple[int, int]


def pad_spatial(x: Any, padding: Pair, value: float) -> Any:
    """x with ``value`` added around H and W (padding = (pH, pW) on each side)."""
    if not any(padding):
        return x
    ph, pw = padding
    return get_array_module(x).pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def crop_spatial(padded: Any, padding: Pair, hw: Pair) -> Any:
    """The (H, W) interior of a padded array, as a new contiguous array."""
    if not any(padding):
        return padded
    (ph, pw), (h, w) = padding, hw
    return get_array_module(padded).ascontiguousarray(padded[:, :, ph : ph + h, pw : pw + w])


def index_dtype(xp: Any, window_size: int) -> Any:
    """Dtype of the winning-entry index: one byte is enough for kernels up to 16x16."""
    return xp.uint8 if window_size <= 256 else xp.int32


def max_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Any, Any]:
    """Max pooling as im2col + argmax over each column.

    Args:
        x: (N, C, H, W) floating array. kernel, stride, padding: validated pairs.

    Returns:
        y: (N, C, H_out, W_out), dtype of x.
        argmax: (N, C, H_out, W_out), the winning entry ``i*kW + j`` of each
            window (what the backward needs; the input is not kept).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = output_hw((h, w), kernel, stride, padding, (1, 1), what="max_pool2d")
    padded = pad_spatial(x, padding, float("-inf"))
    cols = im2col(padded, kernel, stride, 0).reshape(n, c, kernel[0] * kernel[1], ho * wo)
    argmax = cols.argmax(axis=2)  # the first maximum; NaN counts as the maximum
    y = xp.take_along_axis(cols, argmax[:, :, None, :], axis=2)[:, :, 0, :]
    return y.reshape(n, c, ho, wo), argmax.reshape(n, c, ho, wo).astype(index_dtype(xp, kernel[0] * kernel[1]))


def max_pool2d_backward(
    grad_out: Any, argmax: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair
) -> Any:
    """col2im of a one-hot spread of the gradient: all of it to each window's argmax entry.

    Returns dLoss/dx (N, C, H, W); a pixel that won several windows gets their sum.
    """
    xp = get_array_module(grad_out)
    n, c, h, w = input_shape
    window_size = kernel[0] * kernel[1]
    ho, wo = grad_out.shape[2:]
    one_hot = xp.arange(window_size).reshape(1, 1, window_size, 1) == argmax.reshape(n, c, 1, ho * wo)
    cols = (one_hot * grad_out.reshape(n, c, 1, ho * wo)).reshape(n, c * window_size, ho * wo)
    padded_shape = (n, c, h + 2 * padding[0], w + 2 * padding[1])
    return crop_spatial(col2im(cols, padded_shape, kernel, stride, 0), padding, (h, w))


def avg_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """Average pooling as im2col + mean over each column (zero padding counted): (N, C, H_out, W_out)."""
    n, c, h, w = x.shape
    ho, wo = output_hw((h, w), kernel, stride, padding, (1, 1), what="avg_pool2d")
    cols = im2col(x, kernel, stride, padding).reshape(n, c, kernel[0] * kernel[1], ho * wo)
    return cols.mean(axis=2).reshape(n, c, ho, wo)


def avg_pool2d_backward(grad_out: Any, input_shape: tuple, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """col2im of the gradient spread evenly, 1/(kH kW) to every entry of its window: (N, C, H, W)."""
    xp = get_array_module(grad_out)
    n, c, _, _ = input_shape
    window_size = kernel[0] * kernel[1]
    ho, wo = grad_out.shape[2:]
    share = grad_out.reshape(n, c, 1, ho * wo) / window_size
    cols = xp.broadcast_to(share, (n, c, window_size, ho * wo)).reshape(n, c * window_size, ho * wo)
    return col2im(cols, input_shape, kernel, stride, padding)


def global_avg_pool_forward(x: Any) -> Any:
    """Mean over each whole channel: (N, C, H, W) -> (N, C, 1, 1)."""
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_backward(grad_out: Any, input_shape: tuple) -> Any:
    """Each of the H W pixels of a channel receives 1/(H W) of its gradient: (N, C, 1, 1) -> (N, C, H, W)."""
    xp = get_array_module(grad_out)
    h, w = input_shape[2], input_shape[3]
    # Materialised, not a broadcast view: callers may write into gradients.
    return xp.broadcast_to(grad_out / (h * w), tuple(input_shape)).copy()
