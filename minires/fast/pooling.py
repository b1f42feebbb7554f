"""Fast max and average pooling: the offset view, the same numbers as :mod:`minires.kernels.pooling`.

Instead of building kH*kW copies of the input with im2col, loop over the
kH*kW window offsets (i, j): offset (i, j) of all windows at once is the strided slice
``x_pad[:, :, i::sH, j::sW]`` (trimmed to H_out x W_out). The forward keeps a
running max (and which offset produced it) or a running sum; the backward adds
each offset's share of the gradient onto that strided slice. Within one offset no
pixel appears twice, so the slice ``+=`` is exact even when windows overlap.
Ties and NaN as the reference: the first maximal offset wins, NaN beats numbers.
These are array-module code and serve the CPU and the GPU alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dispatch
from ..backend import get_array_module
from ..kernels.im2col import output_hw
from ..kernels.pooling import crop_spatial, index_dtype, pad_spatial
from .layout import empty_channels_last

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool_backward",
]

Pair = tuple[int, int]




def _offset_slices(kernel: Pair, stride: Pair, out_hw: Pair) -> list[tuple[int, slice, slice]]:
    """(offset index i*kW + j, row slice, column slice) of every offset over a padded input."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    return [
        (i * kw + j, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]






# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


def max_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> tuple[Any, Any]:
    """Fast max pooling (offset loop).

    Args:
        x: (N, C, H, W) floating array. kernel, stride, padding: validated pairs.

    Returns:
        y: (N, C, H_out, W_out), dtype of x.
        argmax: (N, C, H_out, W_out) integer array, the winning offset ``i*kW + j``
            of each window (what backward needs; the input is not kept).
    """
    xp = get_array_module(x)
    out_hw = output_hw(x.shape[2:], kernel, stride, padding, (1, 1), what="max_pool2d")
    padded = pad_spatial(x, padding, float("-inf"))
    best = argmax = None
    for t, rows, cols in _offset_slices(kernel, stride, out_hw):
        offset = padded[:, :, rows, cols]
        if best is None:
            best = offset.copy()
            argmax = xp.zeros(best.shape, dtype=index_dtype(xp, kernel[0] * kernel[1]))
            continue
        # Strictly greater: earlier offsets win ties. (v != v) is "v is NaN": a
        # NaN beats any number but not an earlier NaN.
        better = (offset > best) | ((offset != offset) & (best == best))
        xp.copyto(best, offset, where=better)
        xp.copyto(argmax, t, where=better)  # not argmax[better] = t: a boolean mask syncs a GPU
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
    for t, rows, cols in _offset_slices(kernel, stride, out_hw):
        d_padded[:, :, rows, cols] += grad_out * (argmax == t)
    return crop_spatial(d_padded, padding, (h, w))






# ---------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------


def avg_pool2d_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair) -> Any:
    """Fast average pooling with zero padding counted (offset loop).

    Args:
        x: (N, C, H, W). kernel, stride, padding: validated pairs.

    Returns:
        y: (N, C, H_out, W_out), dtype of x; every window sum is divided by kH*kW.
    """
    out_hw = output_hw(x.shape[2:], kernel, stride, padding, (1, 1), what="avg_pool2d")
    padded = pad_spatial(x, padding, 0.0)
    total = None
    for _, rows, cols in _offset_slices(kernel, stride, out_hw):
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
    for _, rows, cols in _offset_slices(kernel, stride, grad_out.shape[2:]):
        d_padded[:, :, rows, cols] += share
    return crop_spatial(d_padded, padding, (h, w))






# ---------------------------------------------------------------------------
# Global average pooling (adaptive_avg_pool2d with output size 1)
# ---------------------------------------------------------------------------




def global_avg_pool_backward(grad_out: Any, input_shape: tuple) -> Any:
    """The reference's gradient, (N, C, 1, 1) -> (N, C, H, W), stored channels-last.

    Under the fast set a ResNet's activations are channels-last, so the
    gradient flowing back into the network takes the layout it will meet.
    """
    grad_x = empty_channels_last(np, input_shape, grad_out.dtype)
    grad_x[...] = grad_out / (input_shape[2] * input_shape[3])  # broadcast over H and W
    return grad_x


for _device in ("cpu", "cuda"):  # array-module code: faster than im2col on both
    for _name in ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"):
        dispatch.register(_name, _device)(globals()[_name])
dispatch.register("global_avg_pool_backward", "cpu")(global_avg_pool_backward)
