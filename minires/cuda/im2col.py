"""im2col, col2im and the convolution on the GPU: two CUDA kernels and cuBLAS.

The mathematics is in :mod:`minires.kernels.im2col` (the layout, and why
col2im is the adjoint of im2col and therefore SUMS overlapping windows) and
:mod:`minires.kernels.conv` (the convolution as a matrix product, and its
backward). This module runs the same computation on a GPU:

* ``im2col``: one thread per entry of the column matrix. Each thread works out
  which input pixel its entry is a copy of (or that it lies in the zero
  padding) and copies it. Pure gather: every thread writes its own entry.
* ``col2im``: one thread per INPUT pixel. The obvious GPU col2im is a scatter
  (one thread per column entry, ``atomicAdd`` into the pixel it came from),
  but floating-point atomics add in whatever order the threads arrive, so the
  result changes from run to run in the last bits. Here each pixel instead
  finds, by arithmetic, the (at most kH*kW) column entries that are copies of
  it and adds them up itself, in a fixed order (tap i, then tap j): no atomics,
  and bit-for-bit the same result every run. The sum runs in the same order as
  the NumPy reference adds its taps.
* the convolution: ``y = W_mat @ cols`` as ONE large cuBLAS GEMM per chunk of
  the batch. For that, the columns of all images of the chunk sit side by side
  in a ``(K, N*L)`` matrix (``K = C*kH*kW``, ``L = H_out*W_out``) rather than
  the ``(N, K, L)`` batch of matrices that :func:`im2col` returns: one
  ``(C_out, K) @ (K, N*L)`` product keeps the GPU far busier than N small
  ones. Both kernels take a flag saying which of the two layouts the columns
  use. The backward pass recomputes the columns (cheaper on a GPU than keeping
  kH*kW copies of every layer's input alive until backward) and needs two more
  GEMMs: ``dW = g @ cols^T`` and ``dcols = W_mat^T @ g``, then ``dx = col2im(dcols)``.

The batch is split into chunks only when the column matrix of the whole batch
would exceed ``COLS_BUDGET_BYTES`` (large ImageNet-sized layers); for CIFAR
ResNets at batch 128 it is one chunk (at most 75 MB of columns).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import dispatch
from ..backend import get_array_module
from ..kernels.im2col import output_hw, pair
from . import THREADS, c_type, grid_size, kernel_function, supported

__all__ = [
    "im2col",
    "col2im",
    "conv2d_forward",
    "conv2d_backward",
    "IM2COL_SOURCE",
    "COLS_BUDGET_BYTES",
    "INDEX32_LIMIT",
]

Pair = tuple[int, int]

# The column matrix of one chunk of the batch stays below this size.
COLS_BUDGET_BYTES = 512 << 20

# Kernels index with 32-bit ints when every array has fewer elements than
# this: each index computed inside stays below the largest array's size, and
# the grid-stride loop may step up to one grid (far below 2**25 threads) past
# the end before it stops, so int never overflows.
INDEX32_LIMIT = 2**31 - 2**25

IM2COL_SOURCE = r"""
// im2col / col2im for minires (see minires/kernels/cuda/im2col.py).
//
// Shapes: the image x is (N, C, H, W), C-contiguous. The column matrix has
// K = C*kH*kW rows, indexed k = (c*kH + i)*kW + j (tap (i, j) of channel c),
// and L = Ho*Wo columns per image, indexed l = ho*Wo + wo (window position).
// Two layouts of the columns:
//   k_major == 0:  cols[n][k][l]   (N, K, L), PyTorch's unfold layout
//   k_major == 1:  cols[k][n][l]   (K, N*L), every image side by side, so a
//                                  convolution is ONE matrix product
// Entry (n, k, l) is a copy of x[n][c][h][w] with
//   h = ho*sH - pH + i*dH,   w = wo*sW - pW + j*dW
// or 0 when (h, w) falls in the zero padding.
//
// Template parameters: T is the element type (float or double); I is the
// integer type for indices, int when every index fits in 31 bits (integer
// division, used a lot here, is several times faster in 32 bits on a GPU)
// and long long for very large arrays.
//
// Both kernels use a grid-stride loop: thread t handles items t, t + G,
// t + 2G, ... where G is the number of threads in the grid, so any grid size
// covers any number of items.

template <typename T, typename I>
__global__ void im2col_gather(
    const T* __restrict__ x, T* __restrict__ cols,
    const I N, const I C, const I H, const I W,
    const I kH, const I kW, const I sH, const I sW,
    const I pH, const I pW, const I dH, const I dW,
    const I Ho, const I Wo, const int k_major)
{
    const I L = Ho * Wo;
    const I K = C * kH * kW;
    const I total = N * K * L;
    for (I e = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; e < total; e += (I)blockDim.x * (I)gridDim.x) {
        // Which entry of the column matrix is e? The window position l is the
        // fastest-varying index in both layouts, so consecutive threads read
        // (mostly) consecutive pixels of one image row: coalesced loads.
        const I l = e % L;
        const I rest = e / L;
        const I n = k_major ? rest % N : rest / K;
        const I k = k_major ? rest / N : rest % K;
        // Unpack k = (c*kH + i)*kW + j and l = ho*Wo + wo.
        const I j = k % kW;
        const I i = (k / kW) % kH;
        const I c = k / (kW * kH);
        const I wo = l % Wo;
        const I ho = l / Wo;
        // The input pixel this entry copies, in unpadded coordinates.
        const I h = ho * sH - pH + i * dH;
        const I w = wo * sW - pW + j * dW;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        cols[e] = inside ? x[((n * C + c) * H + h) * W + w] : T(0);
    }
}

template <typename T, typename I>
__global__ void col2im_gather(
    const T* __restrict__ cols, T* __restrict__ x,
    const I N, const I C, const I H, const I W,
    const I kH, const I kW, const I sH, const I sW,
    const I pH, const I pW, const I dH, const I dW,
    const I Ho, const I Wo, const int k_major)
{
    const I L = Ho * Wo;
    const I K = C * kH * kW;
    const I total = N * C * H * W;
    for (I e = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; e < total; e += (I)blockDim.x * (I)gridDim.x) {
        // One thread per input pixel x[n][c][h][w].
        const I w = e % W;
        const I h = (e / W) % H;
        const I c = (e / (W * H)) % C;
        const I n = e / (W * H * C);
        T sum = T(0);
        for (I i = 0; i < kH; ++i) {
            // Tap i of window row ho reads input row ho*sH - pH + i*dH. It is
            // this pixel's row when hs = h + pH - i*dH is a whole multiple of
            // the stride, and the window row ho = hs / sH exists.
            const I hs = h + pH - i * dH;
            if (hs < 0 || hs % sH != 0) continue;
            const I ho = hs / sH;
            if (ho >= Ho) continue;
            for (I j = 0; j < kW; ++j) {
                const I ws = w + pW - j * dW;   // the same reasoning for columns
                if (ws < 0 || ws % sW != 0) continue;
                const I wo = ws / sW;
                if (wo >= Wo) continue;
                const I k = (c * kH + i) * kW + j;
                const I l = ho * Wo + wo;
                // Add in a fixed order (i, then j): deterministic, unlike atomics.
                sum += cols[k_major ? (k * N + n) * L + l : (n * K + k) * L + l];
            }
        }
        x[e] = sum;
    }
}
"""

_KERNEL_NAMES = tuple(
    f"{kernel}<{t}, {i}>"
    for kernel in ("im2col_gather", "col2im_gather")
    for t in ("float", "double")
    for i in ("int", "long long")
)


def _launch(name: str, src: Any, dst: Any, image_shape: Sequence[int], kernel: Pair, stride: Pair,
            padding: Pair, dilation: Pair, out_hw: Pair, k_major: bool) -> None:
    """Launch ``name`` ("im2col_gather" or "col2im_gather") reading ``src`` and writing ``dst``."""
    cp = get_array_module(src)
    n, c, h, w = (int(v) for v in image_shape)
    (kh, kw), (ho, wo) = kernel, out_hw
    largest = max(n * c * kh * kw * ho * wo, n * c * h * w)
    small = largest < INDEX32_LIMIT
    index_type, index_c = (np.int32, "int") if small else (np.int64, "long long")
    fn = kernel_function(cp, IM2COL_SOURCE, _KERNEL_NAMES, f"{name}<{c_type(src.dtype)}, {index_c}>")
    total = n * c * kh * kw * ho * wo if name == "im2col_gather" else n * c * h * w
    dims = (n, c, h, w, kh, kw, *stride, *padding, *dilation, ho, wo)
    args = (src, dst) + tuple(index_type(v) for v in dims) + (np.int32(1 if k_major else 0),)
    fn((grid_size(cp, total),), (THREADS,), args)


def _check_dtype(a: Any, what: str) -> None:
    if not supported(a):
        raise TypeError(f"{what}: the CUDA kernel supports float32 and float64, got dtype {a.dtype}")


def _geometry(kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> tuple:
    return (pair("kernel_size", kernel_size, 1), pair("stride", stride, 1), pair("padding", padding, 0),
            pair("dilation", dilation, 1))


def im2col(x: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           k_major: bool = False) -> Any:
    """GPU im2col; same contract as :func:`minires.kernels.im2col.im2col`.

    Args:
        x: (N, C, H, W) CuPy array, float32 or float64 (any memory layout).
        kernel_size, stride, padding, dilation: int or (height, width) pair.
        k_major: False: return (N, C*kH*kW, L) (PyTorch's unfold layout);
            True: return (C*kH*kW, N*L), the images side by side (what the
            convolution's single GEMM wants).
    """
    _check_dtype(x, "im2col")
    cp = get_array_module(x)
    kernel, stride_, pad, dil = _geometry(kernel_size, stride, padding, dilation)
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    ho, wo = output_hw((h, w), kernel, stride_, pad, dil, what="im2col")
    k = c * kernel[0] * kernel[1]
    cols = cp.empty((k, n * ho * wo) if k_major else (n, k, ho * wo), dtype=x.dtype)
    if cols.size:
        _launch("im2col_gather", x, cols, x.shape, kernel, stride_, pad, dil, (ho, wo), k_major)
    return cols


def col2im(cols: Any, input_shape: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, k_major: bool = False, out: Any = None) -> Any:
    """GPU col2im (the adjoint of im2col, as a gather); same contract as
    :func:`minires.kernels.im2col.col2im`.

    Args:
        cols: (N, C*kH*kW, L), or (C*kH*kW, N*L) when ``k_major``; CuPy, float32/float64.
        input_shape: (N, C, H, W).
        out: optional C-contiguous (N, C, H, W) array to write into.

    Returns:
        (N, C, H, W): each pixel holds the SUM of the column entries copied from it.
    """
    _check_dtype(cols, "col2im")
    cp = get_array_module(cols)
    n, c, h, w = (int(v) for v in input_shape)
    kernel, stride_, pad, dil = _geometry(kernel_size, stride, padding, dilation)
    ho, wo = output_hw((h, w), kernel, stride_, pad, dil, what="col2im")
    k = c * kernel[0] * kernel[1]
    expected = (k, n * ho * wo) if k_major else (n, k, ho * wo)
    if tuple(cols.shape) != expected:
        raise ValueError(
            f"col2im: cols must have shape {expected} for input_shape {(n, c, h, w)}, kernel {kernel}, "
            f"stride {stride_}, padding {pad}, dilation {dil} (k_major={k_major}); got {tuple(cols.shape)}"
        )
    cols = cp.ascontiguousarray(cols)
    if out is None:
        out = cp.empty((n, c, h, w), dtype=cols.dtype)
    elif tuple(out.shape) != (n, c, h, w) or out.dtype != cols.dtype or not out.flags.c_contiguous:
        raise ValueError(f"col2im: out must be a C-contiguous {(n, c, h, w)} {cols.dtype} array, got "
                         f"{tuple(out.shape)} {out.dtype}")
    if out.size:
        _launch("col2im_gather", cols, out, (n, c, h, w), kernel, stride_, pad, dil, (ho, wo), k_major)
    return out


# ---------------------------------------------------------------------------
# Convolution: im2col + one cuBLAS GEMM per chunk
# ---------------------------------------------------------------------------


def _images_per_gemm(n: int, k: int, length: int, itemsize: int) -> int:
    per_image = max(1, k * length * itemsize)
    return max(1, min(n, COLS_BUDGET_BYTES // per_image))


def conv2d_forward(x: Any, weight: Any, bias: Any, stride: Pair, padding: Pair, dilation: Pair) -> Any:
    """GPU convolution forward; same contract as :func:`minires.kernels.conv.conv2d_forward`.

    Args:
        x: (N, C, H, W). weight: (C_out, C, kH, kW). bias: (C_out,) or None.
        stride, padding, dilation: validated (height, width) pairs.

    Returns:
        y: (N, C_out, H_out, W_out), C-contiguous, dtype of x.
    """
    cp = get_array_module(x)
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, dilation)
    length, k = ho * wo, c * kh * kw
    w_mat = cp.ascontiguousarray(weight).reshape(c_out, k)
    out = cp.empty((n, c_out, length), dtype=x.dtype)
    chunk = _images_per_gemm(n, k, length, x.itemsize)
    for n0 in range(0, n, chunk):
        m = min(chunk, n - n0)
        cols = im2col(x[n0 : n0 + m], (kh, kw), stride, padding, dilation, k_major=True)  # (K, m*L)
        y = w_mat @ cols  # (C_out, m*L): one GEMM for all images of the chunk
        if bias is not None:
            y += bias[:, None]
        # (C_out, m, L) -> (m, C_out, L): back to NCHW.
        out[n0 : n0 + m] = y.reshape(c_out, m, length).transpose(1, 0, 2)
    return out.reshape(n, c_out, ho, wo)


def conv2d_backward(
    x: Any,
    weight: Any,
    grad_out: Any,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    needs_input_grad: Sequence[bool] = (True, True, True),
) -> tuple[Any, Any, Any]:
    """GPU convolution backward; same contract as :func:`minires.kernels.conv.conv2d_backward`.

    Per chunk of images, with ``g`` the upstream gradient as a (C_out, m*L) matrix::

        d weight += g @ cols^T          (cols recomputed with im2col)
        d x       = col2im(W_mat^T @ g)

    Returns:
        (grad_x (N, C, H, W) | None, grad_weight (C_out, C, kH, kW) | None,
        grad_bias (C_out,) | None), dtype of x.
    """
    need_x, need_w, need_b = (tuple(needs_input_grad) + (False, False, False))[:3]
    cp = get_array_module(x)
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = grad_out.shape[2], grad_out.shape[3]
    length, k = ho * wo, c * kh * kw
    grad_b = grad_out.sum(axis=(0, 2, 3)) if need_b else None
    if not (need_x or need_w):
        return None, None, grad_b
    g_all = cp.ascontiguousarray(grad_out).reshape(n, c_out, length)
    w_mat = cp.ascontiguousarray(weight).reshape(c_out, k)
    grad_w = None
    grad_x = cp.empty((n, c, h, w), dtype=x.dtype) if need_x else None
    chunk = _images_per_gemm(n, k, length, x.itemsize)
    for n0 in range(0, n, chunk):
        m = min(chunk, n - n0)
        # (m, C_out, L) -> (C_out, m*L), the layout of the forward's GEMM output.
        g = cp.ascontiguousarray(g_all[n0 : n0 + m].transpose(1, 0, 2)).reshape(c_out, m * length)
        if need_w:
            cols = im2col(x[n0 : n0 + m], (kh, kw), stride, padding, dilation, k_major=True)
            part = g @ cols.T  # (C_out, K); cuBLAS reads cols transposed, no copy
            grad_w = part if grad_w is None else grad_w + part
            del cols
        if need_x:
            d_cols = w_mat.T @ g  # (K, m*L)
            col2im(d_cols, (m, c, h, w), (kh, kw), stride, padding, dilation, k_major=True, out=grad_x[n0 : n0 + m])
    if need_w:
        grad_w = grad_w.reshape(weight.shape)
    return grad_x, grad_w, grad_b


dispatch.register("im2col", "cuda", when=lambda x, *geometry: supported(x))(im2col)
dispatch.register("col2im", "cuda", when=lambda cols, *geometry: supported(cols))(col2im)
dispatch.register("conv2d_forward", "cuda", when=lambda x, weight, bias, *geometry: supported(x, weight, bias))(
    conv2d_forward
)
dispatch.register("conv2d_backward", "cuda", when=lambda x, weight, grad, *geometry: supported(x, weight, grad))(
    conv2d_backward
)
