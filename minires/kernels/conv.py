"""2-D convolution on raw arrays: im2col, then one matrix product.

Shapes (PyTorch's): x (N, C, H, W), weight (C_out, C, kH, kW), bias (C_out,)
or None, y (N, C_out, H_out, W_out), with

    H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH) + 1        (same for W)
    y[n, o, h, w] = b[o] + sum_{c,i,j} weight[o, c, i, j] * x_pad[n, c, h sH + i dH, w sW + j dW]

(a cross-correlation, as in every deep-learning library).

Forward. ``cols = im2col(x)`` has shape (N, K, L) with K = C kH kW and
L = H_out W_out: column l holds the window that output pixel l sees (see
:mod:`.im2col`). With ``W_mat = weight.reshape(C_out, K)``, ``y = W_mat @ cols``.

Backward. Given g = dLoss/dy, reshaped to (N, C_out, L):

* d bias   = sum of g over (n, h, w): the bias is added at every position.
* d weight = sum_n g[n] @ cols[n]^T: each weight met exactly the pixels of
  its row of cols, so the same columns give its gradient.
* d x      = col2im(W_mat^T @ g): the gradient of each column entry, routed
  back to the pixel it was copied from. col2im is the ADJOINT of im2col,
  so pixels shared by overlapping windows receive the sum of their entries.

The fast CPU version (:mod:`minires.fast.conv`) computes the same numbers
without ever building the full column matrix.
"""

from __future__ import annotations

from typing import Any, Sequence

from .im2col import col2im, im2col, output_hw

__all__ = ["conv2d_forward", "conv2d_backward"]

Pair = tuple[int, int]


def conv2d_forward(x: Any, weight: Any, bias: Any, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """y = W_mat @ im2col(x) (+ bias).

    Args:
        x: (N, C, H, W). weight: (C_out, C, kH, kW). bias: (C_out,) or None.
        stride, padding, dilation: (height, width) pairs, already validated.

    Returns:
        y: (N, C_out, H_out, W_out), dtype of x.
    """
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, dilation)
    cols = im2col(x, (kh, kw), stride, padding, dilation)  # (N, K, L)
    y = weight.reshape(c_out, -1) @ cols  # (C_out, K) @ (N, K, L) -> (N, C_out, L)
    if bias is not None:
        y += bias.reshape(1, c_out, 1)
    return y.reshape(n, c_out, ho, wo)


def conv2d_backward(
    x: Any,
    weight: Any,
    grad_out: Any,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    needs_input_grad: Sequence[bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """(d x, d weight, d bias) of :func:`conv2d_forward`.

    Args:
        x, weight: as given to the forward. grad_out: (N, C_out, H_out, W_out).
        needs_input_grad: which of (x, weight, bias) need a gradient; the
            others come back as None.

    Returns:
        (d x (N, C, H, W) | None, d weight (C_out, C, kH, kW) | None, d bias (C_out,) | None).
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
        grad_w = (g @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    if need_x:
        grad_cols = weight.reshape(c_out, -1).T @ g  # (K, C_out) @ (N, C_out, L) -> (N, K, L)
        grad_x = col2im(grad_cols, (n, c, h, w), (kh, kw), stride, padding, dilation)
    return grad_x, grad_w, grad_b

