"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 convolution with 2.25x fewer multiplications.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016).
In one dimension, two outputs of a 3-tap filter g over inputs d0..d3,

    y0 = d0 g0 + d1 g1 + d2 g2,    y1 = d1 g0 + d2 g1 + d3 g2,

take 4 multiplications instead of 6::

    m0 = (d0 - d2) g0,   m1 = (d1 + d2) (g0 + g1 + g2) / 2,
    m2 = (d2 - d1) (g0 - g1 + g2) / 2,   m3 = (d1 - d3) g2,
    y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3.

In matrices, y = A^T [(G g) * (B^T d)]. Nested over rows and columns, a 4x4
input tile d gives a 2x2 output tile with 16 products instead of 36::

    Y = A^T [ (G W G^T) * (B^T D B) ] A        (* elementwise)

The filter side U = G W G^T is computed once per call. Summed over the input
channels, each of the 16 positions of the 4x4 transformed tile is a matrix
product over the channels, for all tiles at once:

    M[p] = V[p] @ U[p],   V[p]: (tiles, C),  U[p]: (C, C_out),  p = 0..15

The gradients reuse the same transforms. d x is itself such a convolution
(of the output gradient with the flipped kernel, conv.py point 5). For d W,
backpropagating through Y = A^T [U * V] A gives

    dU[p] = V[p]^T @ Z[p],   Z = A dY A^T per tile,   dW = G^T dU G,

the sum over all tiles of the batch done as a matrix product per position.

The transforms are additions and subtractions on strided views. They cost
memory passes, so the method pays only where the products dominate: many
channels on small images (README.md, point 9). Exact in exact arithmetic;
in floating point the results differ from direct convolution by rounding.

Shapes: x (N, C, H, W), H and W even; weight (C_out, C, 3, 3); stride 1,
padding 1, dilation 1. The result is (N, C_out, H, W), channels-last in
memory like the other fast convolutions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .layout import empty_channels_last
from .memory import workspace
from .threads import num_threads, run_chunks

__all__ = ["applies", "conv3x3", "weight_grad3x3"]

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# d W's transform uses A with the sign of its last row flipped (so A dY A^T
# takes only sums and differences); G's last row takes that sign back.
_G_SIGNED = _G * np.array([[1.0], [1.0], [1.0], [-1.0]])

# Below this many channels the transforms, which work on runs of C numbers,
# cost more than the products save (README.md, point 9).
MIN_CHANNELS = 64
# Tiles per chunk: enough for efficient products, few enough to stay near cache.
_CHUNK_TILES = 256
# Tiles per block of d W's sum over tiles (see conv.py, point 8).
_SUM_BLOCK = 128


def applies(x_shape: tuple, weight_shape: tuple, stride: tuple, padding: tuple, dilation: tuple) -> bool:
    """Whether :func:`conv3x3` computes this convolution, and is worth it."""
    (_, c, h, w), (c_out, _, kh, kw) = x_shape, weight_shape
    return (
        (kh, kw) == (3, 3)
        and tuple(stride) == (1, 1)
        and tuple(padding) == (1, 1)
        and tuple(dilation) == (1, 1)
        and h % 2 == 0
        and w % 2 == 0
        and min(c, c_out) >= MIN_CHANNELS
    )


def _images_per_chunk(n: int, tiles_per_image: int) -> int:
    """About _CHUNK_TILES tiles per chunk, and a chunk for every kernel thread."""
    return max(1, min(-(-_CHUNK_TILES // tiles_per_image), -(-n // num_threads())))


def filter_transform(weight: Any, dtype: Any) -> Any:
    """U[p] = (G W G^T)[p] for every (input, output) channel pair: (16, C, C_out), in float64 then ``dtype``."""
    u = np.einsum("ai,ocij,bj->abco", _G, weight.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, weight.shape[1], weight.shape[0]), dtype=dtype)


def _input_transform(padded: Any, rows: Any, v: Any) -> None:
    """V = B^T D B for every 4x4 tile (stride 2) of ``padded`` (m, H+2, W+2, C), into v (4, 4, m, H/2, W/2, C).

    B^T D: row combinations of the tiles' rows (d0 - d2, d1 + d2, d2 - d1,
    d1 - d3), kept in ``rows`` (4, m, H/2, W+2, C); then the same
    combinations of their columns.
    """
    th, tw = v.shape[3], v.shape[4]
    r = [padded[:, a : a + 2 * th : 2] for a in range(4)]  # row a of every tile
    np.subtract(r[0], r[2], out=rows[0])
    np.add(r[1], r[2], out=rows[1])
    np.subtract(r[2], r[1], out=rows[2])
    np.subtract(r[1], r[3], out=rows[3])
    for a in range(4):
        col = [rows[a, :, :, b : b + 2 * tw : 2] for b in range(4)]  # column b of every tile
        np.subtract(col[0], col[2], out=v[a, 0])
        np.add(col[1], col[2], out=v[a, 1])
        np.subtract(col[2], col[1], out=v[a, 2])
        np.subtract(col[1], col[3], out=v[a, 3])


def _output_transform(m_tiles: Any, sums: Any, out: Any) -> None:
    """Y = A^T M A for every tile: m_tiles (4, 4, m, H/2, W/2, C_out) -> out (m, H, W, C_out), a view.

    A^T M: row 0 is m0 + m1 + m2, row 1 is m1 - m2 - m3 (into ``sums``, (2, 4, ...));
    then the same for the columns, written straight to the even and odd pixels.
    """
    np.add(m_tiles[0], m_tiles[1], out=sums[0])
    sums[0] += m_tiles[2]
    np.subtract(m_tiles[1], m_tiles[2], out=sums[1])
    sums[1] -= m_tiles[3]
    for i in range(2):
        s = sums[i]
        even, odd = out[:, i::2, 0::2], out[:, i::2, 1::2]
        np.add(s[0], s[1], out=even)
        even += s[2]
        np.subtract(s[1], s[2], out=odd)
        odd -= s[3]


def _transformed_input(x_chunk: Any, key: tuple) -> Any:
    """V for a chunk of images x_chunk (m, H, W, C): (4, 4, m, H/2, W/2, C), in this thread's scratch buffers."""
    m, h, w, c = x_chunk.shape
    padded = workspace(np, key + ("padded",), (m, h + 2, w + 2, c), x_chunk.dtype, zeroed=True)
    rows = workspace(np, key + ("rows",), (4, m, h // 2, w + 2, c), x_chunk.dtype)
    v = workspace(np, key + ("v",), (4, 4, m, h // 2, w // 2, c), x_chunk.dtype)
    padded[:, 1 : h + 1, 1 : w + 1] = x_chunk  # only the interior is written: the border stays zero
    _input_transform(padded, rows, v)
    return v


def conv3x3(x: Any, weight: Any, bias: Any = None) -> Any:
    """y = conv2d(x, weight, bias, stride 1, padding 1) by F(2x2, 3x3), chunk by chunk on the kernel threads.

    Args:
        x: (N, C, H, W), any memory layout, H and W even. weight: (C_out, C, 3, 3).
        bias: (C_out,) or None.

    Returns:
        (N, C_out, H, W), dtype of x, channels-last in memory.
    """
    n, c, h, w = x.shape
    c_out = weight.shape[0]
    th, tw = h // 2, w // 2
    u = filter_transform(weight, x.dtype)
    out = empty_channels_last(np, (n, c_out, h, w), x.dtype)
    out_nhwc, x_nhwc = out.transpose(0, 2, 3, 1), x.transpose(0, 2, 3, 1)
    per_chunk = _images_per_chunk(n, th * tw)

    def work(starts: list[int]) -> None:
        for n0 in starts:
            m = min(per_chunk, n - n0)
            key = ("winograd", c, c_out, h, w, m)  # the last, smaller chunk gets buffers of its own
            v = _transformed_input(x_nhwc[n0 : n0 + m], key)
            products = workspace(np, key + ("m",), (4, 4, m, th, tw, c_out), x.dtype)
            sums = workspace(np, key + ("sums",), (2, 4, m, th, tw, c_out), x.dtype)
            tiles = m * th * tw
            np.matmul(v.reshape(16, tiles, c), u, out=products.reshape(16, tiles, c_out))
            _output_transform(products, sums, out_nhwc[n0 : n0 + m])
            if bias is not None:
                out_nhwc[n0 : n0 + m] += bias

    run_chunks(np, n, per_chunk, work, flops=n * h * w * c * c_out * 4)  # 16 products per 4 outputs
    return out


def _gradient_transform(grad_tiles: Any, rows: Any, z: Any) -> None:
    """Z = A dY A^T (last row's sign flipped) per 2x2 tile: grad (m, H, W, C_out) -> z (4, 4, m, H/2, W/2, C_out).

    Row combinations y0, y0 + y1, y0 - y1, y1 of the tile's two rows (into
    ``rows``, (4, m, H/2, W, C_out)), then the same of its two columns.
    """
    y = [grad_tiles[:, i::2] for i in range(2)]
    np.copyto(rows[0], y[0])
    np.add(y[0], y[1], out=rows[1])
    np.subtract(y[0], y[1], out=rows[2])
    np.copyto(rows[3], y[1])
    for a in range(4):
        col = [rows[a, :, :, j::2] for j in range(2)]
        np.copyto(z[a, 0], col[0])
        np.add(col[0], col[1], out=z[a, 1])
        np.subtract(col[0], col[1], out=z[a, 2])
        np.copyto(z[a, 3], col[1])


def weight_grad3x3(x: Any, grad: Any) -> Any:
    """d weight of conv2d(x, weight, stride 1, padding 1) by F(2x2, 3x3): (C_out, C, 3, 3).

    Per tile position p: dU[p] = V[p]^T @ Z[p], (C, tiles) @ (tiles, C_out),
    summed over all tiles of the batch; then dW = G^T dU G.

    Args:
        x: (N, C, H, W), H and W even. grad: (N, C_out, H, W), d loss / d y.
    """
    n, c, h, w = x.shape
    c_out = grad.shape[1]
    th, tw = h // 2, w // 2
    x_nhwc, g_nhwc = x.transpose(0, 2, 3, 1), grad.transpose(0, 2, 3, 1)
    per_chunk = _images_per_chunk(n, th * tw)

    def work(starts: list[int]) -> Any:
        total = np.zeros((16, c, c_out), dtype=x.dtype)  # this thread's share of dU
        for n0 in starts:
            m = min(per_chunk, n - n0)
            key = ("winograd", c, c_out, h, w, m)
            v = _transformed_input(x_nhwc[n0 : n0 + m], key)
            g_rows = workspace(np, key + ("g rows",), (4, m, th, w, c_out), x.dtype)
            z = workspace(np, key + ("z",), (4, 4, m, th, tw, c_out), x.dtype)
            _gradient_transform(g_nhwc[n0 : n0 + m], g_rows, z)
            tiles = m * th * tw
            step = _sum_block(tiles)
            parts = workspace(np, key + ("parts",), (16, tiles // step, c, c_out), x.dtype)
            v_blocks = v.reshape(16, tiles // step, step, c).transpose(0, 1, 3, 2)
            np.matmul(v_blocks, z.reshape(16, tiles // step, step, c_out), out=parts)
            total += parts.sum(axis=1)
        return total

    partials = run_chunks(np, n, per_chunk, work, flops=n * h * w * c * c_out * 4)
    d_u = sum(partials[1:], partials[0]).astype(np.float64).reshape(4, 4, c, c_out)
    return np.einsum("ai,abco,bj->ocij", _G_SIGNED, d_u, _G_SIGNED).astype(x.dtype)


@lru_cache(maxsize=64)
def _sum_block(tiles: int) -> int:
    """Tiles per block of the sum: the largest divisor of ``tiles`` up to _SUM_BLOCK."""
    return max(d for d in range(1, min(tiles, _SUM_BLOCK) + 1) if tiles % d == 0)
