# %% [markdown]
# # 2. Convolution as im2col + one matrix product
#
# A convolution layer slides a small kernel over an image and takes a dot product at every
# position. Written as loops that is millions of tiny dot products, and Python is slow at tiny
# things. Fast implementations avoid that in several ways. The most common one rearranges the work
# so that it becomes a few large matrix products (GEMMs), which BLAS libraries run close to the
# machine's peak; the classic rearrangement is **im2col**, and it is how minires's reference
# convolution works (`minires.kernels.im2col`, used by `minires.nn.functional.conv2d`). It is not
# the only way: GPU libraries such as cuDNN also form the matrix product implicitly, tile by tile,
# without building the column matrix; Winograd's algorithm computes 3x3 convolutions with fewer
# multiplications; FFT-based methods pay off for large kernels; and CPU libraries such as oneDNN
# often use direct convolution kernels, written for the machine's vector registers and caches.
# Which is fastest depends on the layer's shape and on the hardware.
#
# **By the end of this notebook you will understand**
#
# * exactly what a 2-D convolution computes, and the formula for its output size;
# * how im2col copies every window of the input into one column of a matrix, so that the whole
#   convolution becomes a single matrix product;
# * what that column matrix looks like, and why it costs about $k^2$ times the memory of the input;
# * why **col2im**, which the backward pass uses, is the *adjoint* of im2col and not its inverse,
#   and why it therefore *sums* overlapping windows;
# * how much faster the matrix-product formulation is than loops.
#
# **Your turn.** You will write `im2col` (section 2) and `col2im` (section 5) yourself. Each stub is
# followed by a check cell that fails, saying what is wrong, until your function is right; the rest
# of the notebook uses minires's own `im2col` and `col2im`, so it runs either way. The solutions
# are in `tutorials/solutions/02_convolution_im2col.py`: try first.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import minires
from minires import Tensor
from minires.kernels.im2col import col2im, im2col
from minires.nn import functional as F

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")


# %% [markdown]
# ## 1. What a convolution computes
#
# Input $x$ has shape $(N, C, H, W)$ (batch, channels, height, width: "NCHW"), the weight has shape
# $(O, C, k_H, k_W)$: $O$ output channels, each a $C \times k_H \times k_W$ kernel. With stride $s$
# and zero padding $p$,
#
# $$y[n, o, h, w] = \sum_{c,\,i,\,j} \mathrm{weight}[o, c, i, j]\;
#   x_{\mathrm{pad}}[n, c,\; h s + i,\; w s + j],
#   \qquad H_{out} = \left\lfloor \frac{H + 2p - k_H}{s} \right\rfloor + 1 .$$
#
# (Strictly this is a cross-correlation, as in every deep-learning library: the kernel is not
# flipped.) The direct translation into loops:

# %%
def conv2d_loops(x, weight, stride=1, padding=0):
    """Direct convolution: x (N, C, H, W), weight (O, C, k, k) -> (N, O, H_out, W_out)."""
    n, c, h, w = x.shape
    o, _, k, _ = weight.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    y = np.zeros((n, o, h_out, w_out), dtype=x.dtype)
    for b in range(n):
        for f in range(o):
            for r in range(h_out):
                for q in range(w_out):
                    window = xpad[b, :, r * stride:r * stride + k, q * stride:q * stride + k]
                    y[b, f, r, q] = np.sum(window * weight[f])  # one dot product of C*k*k numbers
    return y


rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 7, 7))
weight = rng.standard_normal((4, 3, 3, 3))
y_loops = conv2d_loops(x, weight, stride=2, padding=1)
y_minires = F.conv2d(Tensor(x), Tensor(weight), stride=2, padding=1).numpy()
print("output shape:", y_loops.shape, "| max |loops - minires|:", np.abs(y_loops - y_minires).max())

# %% [markdown]
# ## 2. im2col: every window becomes a column
#
# Look at the inner loop: each output value is the dot product of one kernel with one window.
# **im2col** ("image to columns") copies every window into a column of a matrix. For one image,
# the columns matrix has one **row per kernel tap** $(c, i, j)$, i.e. $C k_H k_W$ rows, and one
# **column per output position** $(h, w)$, i.e. $L = H_{out} W_{out}$ columns. minires uses
# PyTorch's `unfold` layout: rows run over $(c, i, j)$ with $j$ fastest, columns over $(h, w)$
# with $w$ fastest.
#
# A 4x4 image holding the numbers 0..15 and a 3x3 kernel (no padding, stride 1) has four window
# positions, so its column matrix is $9 \times 4$:

# %%
toy = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
cols = im2col(toy, kernel_size=3)  # (N, C*k*k, L) = (1, 9, 4)
print("columns shape:", cols.shape)
print(cols[0].astype(int))

window = (0, 1)  # the window at output position (h, w) = (0, 1): image rows 0-2, columns 1-3
column = window[0] * 2 + window[1]  # its column in the matrix (positions run over (h, w), w fastest)

fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
for ax, data, title in [(axes[0], toy[0, 0], "image (4x4)"), (axes[1], cols[0], "columns (9 taps x 4 windows)")]:
    ax.imshow(data, cmap="viridis")
    for (r, q), v in np.ndenumerate(data):
        ax.text(q, r, int(v), ha="center", va="center", color="w", fontsize=9)
    ax.set_title(title)
# The same nine numbers, outlined twice: a 3x3 window of the image is one column of the matrix.
axes[0].add_patch(plt.Rectangle((window[1] - 0.5, window[0] - 0.5), 3, 3, fill=False, ec="C3", lw=3))
axes[1].add_patch(plt.Rectangle((column - 0.5, -0.5), 1, 9, fill=False, ec="C3", lw=3))
axes[0].set_xlabel(f"the window at output position {window}", color="C3")
axes[1].set_xlabel("window position (h, w)")
axes[1].set_ylabel("kernel tap (i, j)")
axes[1].set_xticks(range(4), ["(0,0)", "(0,1)", "(1,0)", "(1,1)"])
axes[1].set_yticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)])
axes[0].set_xticks([])
axes[0].set_yticks([])
plt.show()

# %% [markdown]
# Column 0 is the top-left window $[0, 1, 2, 4, 5, 6, 8, 9, 10]$, read row by row; the red
# outlines show window $(0, 1)$, the one shifted one pixel to the right, and its column
# $[1, 2, 3, 5, 6, 7, 9, 10, 11]$. Read the matrix
# the other way and it is just as informative: **row $(i, j)$ is the image shifted by $(i, j)$**,
# one entry per window. With padding 1, each of the nine rows of a 3x3 convolution, reshaped to
# $H \times W$, is a shifted copy of the whole image, with zeros moving in from the border:

# %%
size = 16
yy, xx = np.mgrid[0:size, 0:size]
ring = ((np.hypot(yy - 7.5, xx - 7.5) < 6) & (np.hypot(yy - 7.5, xx - 7.5) > 3)).astype(np.float64)
ring[2:5, 9:14] = 1.0  # a bar, so that the shifts are easy to see
ring_cols = im2col(ring.reshape(1, 1, size, size), kernel_size=3, padding=1)
print("columns shape:", ring_cols.shape, "(9 taps, 16 x 16 = 256 windows)")

fig, axes = plt.subplots(3, 3, figsize=(6, 6))
for tap, ax in enumerate(axes.flat):
    i, j = divmod(tap, 3)
    ax.imshow(ring_cols[0, tap].reshape(size, size), cmap="gray_r")
    ax.axhline(7.5, color="C3", lw=0.8)  # fixed reference lines make the one-pixel shifts visible
    ax.axvline(7.5, color="C3", lw=0.8)
    ax.set_title(f"row (i={i}, j={j})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("The 9 rows of im2col(image), each reshaped to 16 x 16")
plt.show()

# %% [markdown]
# **Your turn: im2col.** Complete `my_im2col` below, for a square $k \times k$ kernel, a stride and
# a zero padding: it must return exactly what minires's `im2col` returns, an array of shape
# $(N, C k^2, H_{out} W_{out})$ with rows ordered $(c, i, j)$ and columns $(h, w)$, $j$ and $w$
# fastest. The figure above suggests the way to do it without a loop over pixels: row $(i, j)$ of
# the matrix is the padded image read with a stride, starting at $(i, j)$, so **one NumPy slice per
# kernel tap** fills it for all channels, windows and images at once.

# %% tags=["stub"]
def my_im2col(x, k, stride=1, padding=0):
    """x (N, C, H, W) -> columns (N, C*k*k, H_out*W_out): one column per window, rows ordered (c, i, j)."""
    n, c, h, w = x.shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # noqa: F841 (for your code)
    cols = np.empty((n, c, k, k, h_out, w_out), dtype=x.dtype)
    # Your code: for every tap (i, j), set cols[:, :, i, j] to the pixels that tap sees in all windows,
    # xpad[:, :, i + stride * r, j + stride * q] for r < h_out and q < w_out: one slice of xpad.
    raise NotImplementedError("implement my_im2col above")
    return cols.reshape(n, c * k * k, h_out * w_out)


# %% tags=["check", "raises-exception"]
def check_my_im2col():
    """my_im2col against minires's im2col, for several kernel sizes, strides and paddings."""
    rng = np.random.default_rng(7)
    for shape, k, stride, padding in [((2, 3, 7, 7), 3, 1, 1), ((2, 3, 7, 7), 3, 2, 1), ((1, 2, 6, 9), 2, 2, 0),
                                      ((2, 1, 5, 5), 1, 1, 0), ((1, 2, 8, 7), 5, 3, 2)]:
        x = rng.standard_normal(shape)
        setting = f"x of shape {shape}, k={k}, stride={stride}, padding={padding}"
        try:
            mine = my_im2col(x, k, stride=stride, padding=padding)
        except NotImplementedError as err:
            raise AssertionError(f"{err}, then run this cell again") from None
        expected = im2col(x, k, stride=stride, padding=padding)
        assert np.shape(mine) == expected.shape, (
            f"my_im2col returns shape {np.shape(mine)} for {setting}; expected {expected.shape} = "
            f"(N, C*k*k, H_out*W_out)")
        wrong = np.argwhere(mine != expected)
        if len(wrong):
            img, row, col = wrong[0]
            channel, tap = divmod(row, k * k)
            w_out = (shape[3] + 2 * padding - k) // stride + 1
            raise AssertionError(
                f"my_im2col is wrong for {setting}: {len(wrong)} of {expected.size} entries differ. The first is "
                f"image {img}, row {row} (channel {channel}, tap (i, j) = {divmod(tap, k)}), column {col} "
                f"(window (h, w) = {divmod(col, w_out)}): {mine[img, row, col]:.4f} instead of "
                f"{expected[img, row, col]:.4f}")
    print("check passed: my_im2col equals minires's im2col in all five settings")


check_my_im2col()


# %% [markdown]
# ## 3. The whole convolution is one matrix product
#
# Reshape the weight into a matrix $W_{mat}$ of shape $(O, C k_H k_W)$: row $o$ is kernel $o$
# flattened in the same $(c, i, j)$ order as the rows of the columns matrix. Then every output
# value is (row of $W_{mat}$) $\cdot$ (column of cols), and all of them together are
#
# $$Y = W_{mat}\; \mathrm{cols}, \qquad (O, C k^2) \times (C k^2, L) \to (O, L),$$
#
# which reshapes to $(O, H_{out}, W_{out})$. NumPy's `@` broadcasts this over the batch axis.

# %%
def conv2d_im2col(x, weight, stride=1, padding=0):
    """Convolution as im2col + one matrix product: x (N, C, H, W), weight (O, C, k, k)."""
    n, _, h, w = x.shape
    o, _, k, _ = weight.shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    cols = im2col(x, k, stride=stride, padding=padding)  # (N, C*k*k, L)
    y = weight.reshape(o, -1) @ cols                     # (O, C*k*k) @ (N, C*k*k, L) -> (N, O, L)
    return y.reshape(n, o, h_out, w_out)


y_gemm = conv2d_im2col(x, weight, stride=2, padding=1)
print("max |im2col+GEMM - loops|:", np.abs(y_gemm - y_loops).max())

try:
    import torch
except ImportError:
    torch = None
    print("(PyTorch not installed: skipping the optional cross-check)")
if torch is not None:
    y_torch = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), stride=2, padding=1)
    print("max |im2col+GEMM - torch|:", np.abs(y_gemm - y_torch.numpy()).max())

# %% [markdown]
# ## 4. The price: memory
#
# Every pixel is copied into the columns matrix once for every window that contains it: about
# $k_H k_W$ times for stride 1. With "same" padding ($p = \lfloor k/2 \rfloor$) there are exactly
# $H W$ windows and the columns matrix is exactly $k^2$ times larger than the input. Let us measure
# it on a CIFAR-sized layer (16 channels, 32x32).

# %%
batch = 2 if QUICK else 8
x_layer = np.zeros((batch, 16, 32, 32), dtype=np.float32)
print(f"input {x_layer.shape}, float32: {x_layer.nbytes / 2**20:.2f} MiB")
print(f"{'kernel':>6} {'stride':>6} {'columns shape':>20} {'columns MiB':>12} {'x input':>8}")
for k, s in [(1, 1), (3, 1), (5, 1), (7, 1), (3, 2)]:
    c = im2col(x_layer, k, stride=s, padding=k // 2)
    print(f"{k:>6} {s:>6} {str(c.shape):>20} {c.nbytes / 2**20:>12.2f} {c.nbytes / x_layer.nbytes:>7.2f}x")

# The same arithmetic for a real training batch: 128 images, 16 channels, 3x3, stride 1.
x_bytes = 128 * 16 * 32 * 32 * 4
print(f"\nbatch 128: input {x_bytes / 1e6:.1f} MB, columns {9 * x_bytes / 1e6:.1f} MB for ONE 3x3 layer")

# %% [markdown]
# The ratio is $k^2$ for stride 1 and about $k^2/s^2$ for stride $s$. At batch 128 one 3x3 layer of
# a CIFAR ResNet needs 75 MB of columns: far more than any CPU cache, so a naive im2col
# convolution spends much of its time moving memory rather than multiplying. minires's fast CPU
# path (the `minires.fast` package; its README tells the story, measurement by measurement) keeps the same
# mathematics but unfolds only along the width (3 copies instead of 9), works on a few images at a
# time so the buffers stay in cache, and never builds the full-batch matrix. The reference
# implementation above is the one to read; the fast one is checked against it by the tests.
#
# ## 5. col2im is the adjoint of im2col, not its inverse
#
# The backward pass of $Y = W_{mat}\,\mathrm{cols}$ gives the gradient with respect to the
# columns, $\partial L/\partial \mathrm{cols} = W_{mat}^\top\,\partial L/\partial Y$. To reach the
# input image we need the backward pass of im2col itself. im2col is a **linear** map $A$ from
# images to column matrices (each entry is a copy of one pixel or a padding zero), so its backward
# pass is multiplication by the transpose $A^\top$, the unique linear map with
#
# $$\langle A x, y \rangle = \langle x, A^\top y \rangle \quad \text{for all } x, y .$$
#
# That map is **col2im**. Read the identity entry by entry: pixel $x[n,c,h,w]$ appears in the
# left-hand sum once for every column entry it was copied to, so $(A^\top y)[n,c,h,w]$ must be the
# **sum** of $y$ over exactly those entries. Gradients from overlapping windows add up, as they
# must (a pixel used by nine windows influences the loss nine ways). Let us check the identity
# numerically for several settings:

# %%
rng = np.random.default_rng(1)
x_adj = rng.standard_normal((2, 3, 7, 7))
print(f"{'k':>2} {'stride':>6} {'pad':>3} {'dil':>3} {'<im2col(x), y>':>16} {'<x, col2im(y)>':>16} {'rel. diff':>9}")
for k, s, p, d in [(3, 1, 1, 1), (3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 0, 2), (5, 3, 2, 1)]:
    cols_x = im2col(x_adj, k, stride=s, padding=p, dilation=d)
    y_adj = rng.standard_normal(cols_x.shape)
    lhs = np.sum(cols_x * y_adj)
    rhs = np.sum(x_adj * col2im(y_adj, x_adj.shape, k, stride=s, padding=p, dilation=d))
    print(f"{k:>2} {s:>6} {p:>3} {d:>3} {lhs:>16.10f} {rhs:>16.10f} {abs(lhs - rhs) / abs(lhs):>9.1e}")

# %% [markdown]
# The two inner products agree to rounding error in every case. Now the "not an inverse" part:
# feed col2im the columns of an all-ones image. Each pixel comes back multiplied by the number of
# windows that contain it: 4 in the corners, 6 along the edges, 9 inside (3x3 kernel, stride 1,
# padding 1). Only when windows neither overlap nor skip pixels (stride = kernel size, no padding)
# is col2im(im2col(x)) equal to x.

# %%
ones = np.ones((1, 1, 6, 6))
counts = col2im(im2col(ones, 3, padding=1), ones.shape, 3, padding=1)[0, 0]

fig, ax = plt.subplots(figsize=(3.6, 3.6))
ax.imshow(counts, cmap="Blues", vmin=0)
for (r, q), v in np.ndenumerate(counts):
    ax.text(q, r, int(v), ha="center", va="center", color="w" if v > 6 else "k")
ax.set_title("col2im(im2col(ones))\n3x3, stride 1, padding 1", fontsize=10)
ax.set_xticks([])
ax.set_yticks([])
plt.show()

x_tiles = np.random.default_rng(2).standard_normal((1, 2, 6, 6))
back = col2im(im2col(x_tiles, 2, stride=2), x_tiles.shape, 2, stride=2)
print("2x2 kernel, stride 2 (non-overlapping tiles): col2im(im2col(x)) == x ?", np.array_equal(back, x_tiles))

# %% [markdown]
# **Your turn: col2im.** Complete `my_col2im` below: it takes a column matrix of shape
# $(N, C k^2, H_{out} W_{out})$ and returns an image of shape `x_shape`, in which every pixel holds
# the **sum** of the column entries that im2col copied from it (entries that came from the padding
# are dropped). Mirror your `my_im2col`: one slice per kernel tap, but now *adding* the tap's
# values onto the pixels it was read from. The check cell tests the defining property of the
# adjoint, $\langle \mathrm{im2col}(x), y\rangle = \langle x, \mathrm{col2im}(y)\rangle$ for random $x$ and
# $y$, with minires's `im2col`, and then compares with minires's `col2im` entry by entry.

# %% tags=["stub"]
def my_col2im(cols, x_shape, k, stride=1, padding=0):
    """The adjoint of im2col: columns (N, C*k*k, H_out*W_out) -> image x_shape, overlapping windows summed."""
    n, c, h, w = x_shape
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    taps = cols.reshape(n, c, k, k, h_out, w_out)  # noqa: F841 (for your code)
    xpad = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    # Your code: for every tap (i, j), ADD taps[:, :, i, j] onto the pixels of xpad it was read from.
    raise NotImplementedError("implement my_col2im above")
    return xpad[:, :, padding:padding + h, padding:padding + w]


# %% tags=["check", "raises-exception"]
def check_my_col2im():
    """The adjoint test <im2col(x), y> = <x, my_col2im(y)>, then my_col2im against minires's col2im."""
    rng = np.random.default_rng(11)
    for shape, k, stride, padding in [((2, 3, 7, 7), 3, 1, 1), ((2, 3, 7, 7), 3, 2, 1), ((1, 2, 6, 9), 2, 2, 0),
                                      ((2, 1, 5, 5), 1, 1, 0), ((1, 2, 8, 7), 5, 3, 2)]:
        setting = f"x of shape {shape}, k={k}, stride={stride}, padding={padding}"
        x = rng.standard_normal(shape)
        cols_x = im2col(x, k, stride=stride, padding=padding)
        y = rng.standard_normal(cols_x.shape)
        try:
            back = my_col2im(y, shape, k, stride=stride, padding=padding)
        except NotImplementedError as err:
            raise AssertionError(f"{err}, then run this cell again") from None
        assert np.shape(back) == shape, f"my_col2im returns shape {np.shape(back)} for {setting}; expected {shape}"
        lhs, rhs = np.sum(cols_x * y), np.sum(x * back)
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs), (
            f"my_col2im is not the adjoint of im2col for {setting}: <im2col(x), y> = {lhs:.6f} but "
            f"<x, my_col2im(y)> = {rhs:.6f}. Does it add the overlapping windows, or overwrite them?")
        expected = col2im(y, shape, k, stride=stride, padding=padding)
        error = np.abs(back - expected).max() / np.abs(expected).max()
        assert error < 1e-12, f"my_col2im differs from minires's col2im for {setting}: relative error {error:.1e}"
    print("check passed: my_col2im is the adjoint of im2col, and equals minires's col2im, in all five settings")


check_my_col2im()

# %% [markdown]
# The differentiable `minires.nn.functional.im2col` has exactly this backward pass, and the whole
# convolution passes a gradient check (float64, random upstream gradient, every element):

# %%
rng = np.random.default_rng(3)
xt = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
cols_t = F.im2col(xt, 3, padding=1)
upstream = rng.standard_normal(cols_t.shape)
cols_t.backward(upstream)
print("im2col backward == col2im(upstream):",
      np.allclose(xt.grad, col2im(upstream, xt.shape, 3, padding=1), rtol=0, atol=1e-12))

xg = Tensor(rng.standard_normal((2, 2, 5, 5)), requires_grad=True)
wg = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
bg = Tensor(rng.standard_normal(3), requires_grad=True)
ok = minires.gradcheck(lambda a, k, c: F.conv2d(a, k, c, stride=2, padding=1), [xg, wg, bg], seed=0)
print("gradcheck of conv2d (input, weight and bias):", ok)


# %% [markdown]
# ## 6. How much faster?
#
# We time three implementations on the same small problem: the loops of section 1, im2col + one
# matrix product (section 3), and `minires.nn.functional.conv2d`, whose fast path adds the
# memory-saving tricks described in section 4. (Sizes are kept small so the loops finish quickly;
# the gap widens with size.)

# %%
def best_time(fn, repeats):
    """Best wall-clock time of `repeats` calls, in milliseconds (the minimum is the least noisy)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


n, c, hw, o = (2, 4, 10, 8) if QUICK else (8, 16, 16, 16)
rng = np.random.default_rng(4)
xb = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
wb = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
reference = conv2d_loops(xb, wb, padding=1)
candidates = {
    "loops": lambda: conv2d_loops(xb, wb, padding=1),
    "im2col + GEMM": lambda: conv2d_im2col(xb, wb, padding=1),
    "minires F.conv2d": lambda: F.conv2d(Tensor(xb), Tensor(wb), padding=1).numpy(),
}
print(f"x {xb.shape}, weight {wb.shape}, padding 1, float32")
print(f"{'implementation':>18} {'time (ms)':>10} {'speed-up':>9} {'max |error|':>12}")
base = None
for name, fn in candidates.items():
    ms = best_time(fn, 1 if name == "loops" else 5)
    base = base or ms
    err = np.abs(fn() - reference).max()
    print(f"{name:>18} {ms:>10.2f} {base / ms:>8.0f}x {err:>12.1e}")

# %% [markdown]
# The loops spend almost all of their time in the Python interpreter, one small dot product at a
# time; the matrix product hands all the arithmetic to BLAS in one call. On a problem this small the
# columns fit in cache anyway, so the fast path's extra machinery (chunks, threads) buys nothing
# over the plain im2col version; its gains appear at training sizes, where the columns of a whole
# batch would not fit (`benchmarks/bench_layers.py` measures them). The small differences in the
# last column are float32 rounding: the implementations add the same numbers in different orders.
#
# ## Summary
#
# * A convolution is one dot product per (output channel, window). im2col puts every window in a
#   column so that all of them become one matrix product $W_{mat}\,\mathrm{cols}$.
# * The columns matrix costs about $k^2/s^2$ times the memory of the input.
# * The backward pass needs col2im, the **adjoint** (transpose) of im2col: it adds each column
#   entry back onto the pixel it came from, summing overlapping windows. It is not an inverse.
#
# ## Exercises
#
# **Exercise 1 (shapes).** A 3x3 convolution with stride 2 and padding 1 is applied to a batch of
# shape $(8, 16, 32, 32)$. Predict the shape of the columns matrix and of the output for 32 output
# channels, then check with `im2col` and `F.conv2d`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
# H_out = floor((32 + 2*1 - 3) / 2) + 1 = 16, so L = 16 * 16 = 256 windows and C*k*k = 16*9 = 144 rows.
xe = np.zeros((8, 16, 32, 32), dtype=np.float32)
print("columns:", im2col(xe, 3, stride=2, padding=1).shape, "expected (8, 144, 256)")
we = np.zeros((32, 16, 3, 3), dtype=np.float32)
print("output:", F.conv2d(Tensor(xe), Tensor(we), stride=2, padding=1).shape, "expected (8, 32, 16, 16)")

# %% [markdown]
# **Exercise 2 (the weight gradient).** The weight gradient reuses the same columns:
# $\partial L/\partial W_{mat} = \sum_n G_n\,\mathrm{cols}_n^\top$, where
# $G_n = \partial L/\partial Y_n$ has shape $(O, L)$. Compute it with NumPy for a random upstream
# gradient and compare with `weight.grad` after `F.conv2d(...).backward(upstream)`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
rng = np.random.default_rng(5)
xs = rng.standard_normal((3, 2, 6, 6))
ws = Tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
out = F.conv2d(Tensor(xs), ws, padding=1)
g = rng.standard_normal(out.shape)
out.backward(g)

cols_s = im2col(xs, 3, padding=1)                          # (N, C*k*k, L)
g_mat = g.reshape(g.shape[0], g.shape[1], -1)              # (N, O, L)
dw = (g_mat @ cols_s.transpose(0, 2, 1)).sum(axis=0)       # sum over n of G_n cols_n^T -> (O, C*k*k)
print("max |by hand - autograd|:", np.abs(dw.reshape(ws.shape) - ws.grad).max())

# %% [markdown]
# **Exercise 3 (predict the counts).** For a 7x7 image, a 3x3 kernel, stride 2 and padding 1,
# predict how many windows contain each pixel, then compute `col2im(im2col(ones))` and compare.
# Which pixels are in 4 windows, which in 2, which in 1?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# Windows start at padded rows 0, 2, 4, 6, i.e. they cover image rows {-1,0,1}, {1,2,3}, {3,4,5}, {5,6,7}:
# odd rows lie in two windows, even rows in one. A pixel's count is (row count) x (column count):
# 4 where row and column are both odd, 2 where exactly one is odd, 1 where both are even.
ones7 = np.ones((1, 1, 7, 7))
print(col2im(im2col(ones7, 3, stride=2, padding=1), ones7.shape, 3, stride=2, padding=1)[0, 0].astype(int))
