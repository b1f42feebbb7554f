"""im2col and col2im: how a convolution becomes one matrix product.

A 2-D convolution slides a ``kH x kW`` window over every input channel and
takes a dot product with the kernel at each stop. ``im2col`` ("image to
columns") copies every window into a column of a matrix, so that all those
dot products become ONE matrix product that BLAS (or cuBLAS) runs at full
speed::

    x     (N, C, H, W)
    cols  (N, C*kH*kW, L)      L = H_out * W_out window positions
    y     = weight.reshape(C_out, C*kH*kW) @ cols      -> (N, C_out, L)

The layout is PyTorch's ``unfold``/``fold``: the row index of ``cols`` runs
over (c, kh, kw) with kw fastest, the column index over the output positions
(h_out, w_out) with w_out fastest. Column ``l = h_out * W_out + w_out`` holds
the window whose top-left corner sits at ``(h_out * sH - pH, w_out * sW - pW)``
in the unpadded input, and its entries are ``dH`` (``dW``) pixels apart
(dilation). The output size is PyTorch's::

    H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH) + 1

Why col2im SUMS overlapping windows
-----------------------------------
``im2col`` is a linear map A from images to column matrices: each entry of
``cols`` is a copy of one input pixel (or a zero from the padding). When
windows overlap (stride smaller than the kernel), one pixel is copied into
several entries. ``col2im`` is the ADJOINT (transpose) A^T of that map, the
unique linear map with

    <im2col(x), y> = <x, col2im(y)>     for every x and y.

Reading the equation entry by entry: pixel x[n, c, h, w] appears in the left
sum once for every entry of ``cols`` it was copied to, so col2im(y)[n, c, h, w]
must be the SUM of y over exactly those entries. That is what backpropagation
needs: if ``cols = im2col(x)`` and the loss gradient with respect to ``cols``
is ``y``, the gradient with respect to ``x`` is ``col2im(y)`` (a pixel used
three times receives three gradient contributions). Entries that came from the
zero padding have no pixel to go back to and are dropped.

col2im is therefore NOT the inverse of im2col: ``col2im(im2col(x))`` multiplies
each pixel by the number of windows that contain it (9 for the interior of a
3x3, stride-1 convolution). It is an inverse only when windows neither overlap
nor skip pixels (stride == kernel size, no padding).

Implementation, with no Python loop over pixels: im2col copies once from a
strided VIEW of the padded input with axes (n, c, kh, kw, h_out, w_out);
col2im adds offset (i, j) of all windows onto its strided grid of pixels, one
``+=`` per offset, exact because one offset never hits a pixel twice.
"""

from __future__ import annotations

import operator
from typing import Any

from ..backend import get_array_module

__all__ = [
    "im2col",
    "col2im",
    "pair",
    "conv_output_size",
    "output_hw",
    "sliding_windows",
]


# ---------------------------------------------------------------------------
# Argument checking shared by convolution and pooling
# ---------------------------------------------------------------------------


def pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """Turn an int or a pair of ints into ``(height, width)``, checking ``>= minimum``.

    Raises TypeError for non-integers (floats and bools included: a stride of
    1.5 is a bug, not something to round) and ValueError for values below
    ``minimum``, naming ``name`` and the offending value.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r} with {len(value)} entries")
        items = tuple(value)
    else:
        items = (value, value)
    result = []
    for item in items:
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        result.append(operator.index(item))
    if min(result) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return result[0], result[1]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """PyTorch's output length along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1.

    May be zero or negative when the (dilated) kernel is larger than the padded
    input; :func:`output_hw` turns that into an error.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_hw(
    input_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    what: str = "convolution",
) -> tuple[int, int]:
    """``(H_out, W_out)`` of a sliding-window operation; ValueError if either is < 1."""
    out = tuple(
        conv_output_size(input_hw[a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)
    )
    if min(out) < 1:
        span = tuple(dilation[a] * (kernel[a] - 1) + 1 for a in (0, 1))
        padded = tuple(input_hw[a] + 2 * padding[a] for a in (0, 1))
        raise ValueError(
            f"{what}: kernel {kernel} (spanning {span} with dilation {dilation}) is larger than the "
            f"padded input {padded} (input {tuple(input_hw)}, padding {padding}); output size would be {out}"
        )
    return out[0], out[1]


# ---------------------------------------------------------------------------
# The strided window view
# ---------------------------------------------------------------------------


def sliding_windows(
    padded: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    channels_last: bool = False,
) -> Any:
    """A strided view of every window of an already padded 4-D array (no copy).

    Args:
        padded: (N, C, Hp, Wp), or (N, Hp, Wp, C) when ``channels_last``.
        kernel, stride, dilation: pairs (height, width).
        out_hw: (H_out, W_out), the number of window positions.

    Returns:
        (N, C, kH, kW, H_out, W_out), or (N, H_out, W_out, kH, kW, C) when
        ``channels_last``. Element ``[n, c, i, j, h, w]`` is
        ``padded[n, c, h*sH + i*dH, w*sW + j*dW]``. Windows overlap, so the
        view aliases memory: read it (or copy it), never write to it.
    """
    xp = get_array_module(padded)
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    if channels_last:
        s_n, s_h, s_w, s_c = padded.strides
        shape = (padded.shape[0], ho, wo, kh, kw, padded.shape[3])
        strides = (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c)
    else:
        s_n, s_c, s_h, s_w = padded.strides
        shape = (padded.shape[0], padded.shape[1], kh, kw, ho, wo)
        strides = (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw)
    return xp.lib.stride_tricks.as_strided(padded, shape=shape, strides=strides)


def _check_4d(name: str, x: Any) -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) array, got shape {tuple(getattr(x, 'shape', ()))}")


# ---------------------------------------------------------------------------
# im2col and its adjoint
# ---------------------------------------------------------------------------


def im2col(x: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1) -> Any:
    """Copy every sliding window of ``x`` into a column (PyTorch ``unfold`` layout).

    Args:
        x: (N, C, H, W) NumPy or CuPy array.
        kernel_size, stride, padding, dilation: int or (height, width) pair.
            Zero padding is added on both sides.

    Returns:
        cols: (N, C * kH * kW, L) with L = H_out * W_out, same dtype as ``x``;
        ``cols[n, (c*kH + i)*kW + j, h*W_out + w] ==
        x_padded[n, c, h*sH + i*dH, w*sW + j*dW]``.
    """
    _check_4d("im2col input", x)
    kernel = pair("kernel_size", kernel_size, 1)
    stride_ = pair("stride", stride, 1)
    pad = pair("padding", padding, 0)
    dil = pair("dilation", dilation, 1)
    n, c, h, w = x.shape
    out_hw = output_hw((h, w), kernel, stride_, pad, dil, what="im2col")
    xp = get_array_module(x)
    padded = xp.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1]))) if any(pad) else x
    windows = sliding_windows(padded, kernel, stride_, dil, out_hw)
    # The reshape merges (c, kh, kw) and (h_out, w_out); windows overlap in
    # memory, so this is where the single copy happens.
    return windows.reshape(n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])


def col2im(
    cols: Any, input_shape: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1
) -> Any:
    """The adjoint of :func:`im2col`: add every column back onto the pixels it came from.

    Overlapping windows SUM (see the module docstring): this is the gradient of
    im2col, not its inverse.

    Args:
        cols: (N, C * kH * kW, L), laid out as :func:`im2col` returns it.
        input_shape: (N, C, H, W) of the image the columns came from.
        kernel_size, stride, padding, dilation: as given to :func:`im2col`.

    Returns:
        (N, C, H, W) array, same dtype as ``cols``.
    """
    if len(tuple(input_shape)) != 4:
        raise ValueError(f"col2im input_shape must be (N, C, H, W), got {tuple(input_shape)!r}")
    n, c, h, w = (operator.index(s) for s in input_shape)
    kernel = pair("kernel_size", kernel_size, 1)
    stride_ = pair("stride", stride, 1)
    pad = pair("padding", padding, 0)
    dil = pair("dilation", dilation, 1)
    (ho, wo) = output_hw((h, w), kernel, stride_, pad, dil, what="col2im")
    expected = (n, c * kernel[0] * kernel[1], ho * wo)
    if getattr(cols, "ndim", None) != 3 or tuple(cols.shape) != expected:
        raise ValueError(
            f"col2im: cols must have shape {expected} for input_shape {(n, c, h, w)}, kernel {kernel}, "
            f"stride {stride_}, padding {pad}, dilation {dil}; got {tuple(getattr(cols, 'shape', ()))}"
        )
    xp = get_array_module(cols)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride_, dil
    padded = xp.zeros((n, c, h + 2 * pad[0], w + 2 * pad[1]), dtype=cols.dtype)
    offsets = cols.reshape(n, c, kh, kw, ho, wo)
    for i in range(kh):
        for j in range(kw):
            # Offset (i, j) of all windows: a strided grid of distinct pixels, so
            # a vectorised += is exact (no pixel is hit twice in one add).
            padded[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw] += offsets[
                :, :, i, j
            ]
    if any(pad):
        # Cut the padding off; copy so the result does not keep the padded buffer alive.
        return xp.ascontiguousarray(padded[:, :, pad[0] : pad[0] + h, pad[1] : pad[1] + w])
    return padded
