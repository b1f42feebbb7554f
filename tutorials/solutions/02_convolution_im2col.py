"""Solutions to the "Your turn" cells of 02_convolution_im2col.ipynb.

Try the exercises in the notebook before reading these. Each definition below has
the name of the stub it solves; ``python tutorials/execute.py 02 --solutions DIR``
runs the notebook with these in place of the stubs (the tests do the same).
"""

import numpy as np


def my_im2col(x, k, stride=1, padding=0):
    """x (N, C, H, W) -> columns (N, C*k*k, H_out*W_out): one column per window, rows ordered (c, i, j)."""
    n, c, h, w = x.shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((n, c, k, k, h_out, w_out), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            # Tap (i, j) of window (r, q) reads pixel (i + stride r, j + stride q): a strided slice.
            cols[:, :, i, j] = xpad[:, :, i:i + stride * h_out:stride, j:j + stride * w_out:stride]
    return cols.reshape(n, c * k * k, h_out * w_out)


def my_col2im(cols, x_shape, k, stride=1, padding=0):
    """The adjoint of im2col: columns (N, C*k*k, H_out*W_out) -> image x_shape, overlapping windows summed."""
    n, c, h, w = x_shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    taps = cols.reshape(n, c, k, k, h_out, w_out)
    xpad = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            # One tap of all windows never hits a pixel twice, so += on the slice is exact; taps of
            # overlapping windows land on the same pixels in different iterations and add up.
            xpad[:, :, i:i + stride * h_out:stride, j:j + stride * w_out:stride] += taps[:, :, i, j]
    return xpad[:, :, padding:padding + h, padding:padding + w]
