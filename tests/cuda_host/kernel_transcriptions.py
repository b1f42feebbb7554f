"""The CUDA kernels of minires/cuda, transcribed into NumPy, for the CuPy stand-in (``fake_cupy.py``).

One function per kernel, named like it, taking the same arguments in the
same order (arrays as flat NumPy views of device memory, scalars as the
NumPy type of their C parameter). Each follows its CUDA source step by step,
with the loop over threads replaced by NumPy operations on arrays of thread
indices:

* a grid-stride loop becomes rounds over ``launch.grid_stride(total)``;
* a block's threads and the blocks of a grid become axes of an array
  (``[c, s, t]`` = channel, slice, thread for the batch-norm reductions),
  and a thread's own sequential loop becomes rounds in which every thread
  takes its next value;
* a shared-memory tree reduction becomes its halving steps on those arrays.

Arithmetic keeps the CUDA types: T arrays stay float32 or float64, the
accumulators of the reductions are float64 like the kernels' ``double``, and
index arithmetic is done in int64 and checked to fit the kernel's index type
(a 32-bit ``int`` overflowing would be a real bug).

The transcriptions were written for particular versions of the sources. So
that a kernel changed later is not tested against its old logic, each source
is identified by a fingerprint (its code without comments and spacing): a
changed source fails with a message to update the transcription and its
fingerprint here.
"""

from __future__ import annotations

import numpy as np
from fake_cupy import Launch, fingerprint

__all__ = ["RAW_KERNELS", "ELEMENTWISE_KERNELS", "check_source", "check_elementwise"]

# fingerprint(code) of the sources the transcriptions below follow.
RAW_SOURCE_FINGERPRINTS = {
    "minires.cuda.im2col.IM2COL_SOURCE": "95bd5482c459cd63",
    "minires.cuda.batch_norm.BATCH_NORM_SOURCE": "3482c6311f95ed35",
}
ELEMENTWISE_FINGERPRINTS = {
    "minires_relu_forward": "7fc341b57a4ea98e",
    "minires_relu_backward": "65e0ba5a883e3591",
    "minires_bn_normalize": "7cd62edfd3c406a2",
    "minires_bn_backward_dx": "114fd2dac88d706a",
    "minires_bn_update_running": "678d0c694413481f",
}


def elementwise_fingerprint(spec: dict) -> str:
    return fingerprint(" | ".join((spec["in_params"], spec["out_params"], spec["operation"])))


def check_source(code: str) -> None:
    """Refuse a RawModule source whose kernels were not transcribed in exactly this version."""
    if fingerprint(code) not in RAW_SOURCE_FINGERPRINTS.values():
        raise AssertionError(
            f"this CUDA source (fingerprint {fingerprint(code)}) is not the one the NumPy transcriptions in "
            "tests/cuda_host/kernel_transcriptions.py follow: update the transcriptions of its kernels, then "
            "its entry in RAW_SOURCE_FINGERPRINTS"
        )


def check_elementwise(spec: dict) -> None:
    """The same for an ElementwiseKernel: its parameters and body must be the transcribed ones."""
    expected = ELEMENTWISE_FINGERPRINTS.get(spec["name"])
    if elementwise_fingerprint(spec) != expected:
        raise AssertionError(
            f"elementwise kernel {spec['name']} (fingerprint {elementwise_fingerprint(spec)}) changed since its "
            "NumPy transcription in tests/cuda_host/kernel_transcriptions.py: update it and ELEMENTWISE_FINGERPRINTS"
        )


def _fits(values: np.ndarray, index_type: type, what: str) -> np.ndarray:
    """``values`` (int64), checked to be representable in the kernel's index type."""
    info = np.iinfo(index_type)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise OverflowError(f"{what} leaves the range of the kernel's {np.dtype(index_type).name} index type")
    return values


# ---------------------------------------------------------------------------
# im2col.py: im2col_gather, col2im_gather (template <T, I>)
# ---------------------------------------------------------------------------


def im2col_gather(launch: Launch, x, cols, N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, k_major):
    index = type(N)  # I: np.int32 ("int") or np.int64 ("long long")
    N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo = (
        np.int64(v) for v in (N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo))
    L = Ho * Wo
    K = C * kH * kW
    total = int(_fits(np.array([N * K * L]), index, "N*K*L")[0])
    for e in launch.grid_stride(total):
        # Which entry of the column matrix is e? (l fastest in both layouts)
        l_ = e % L
        rest = e // L
        n = rest % N if k_major else rest // K
        k = rest // N if k_major else rest % K
        j = k % kW
        i = (k // kW) % kH
        c = k // (kW * kH)
        wo = l_ % Wo
        ho = l_ // Wo
        h = ho * sH - pH + i * dH
        w = wo * sW - pW + j * dW
        inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
        source = _fits(np.where(inside, ((n * C + c) * H + h) * W + w, 0), index, "the pixel index")
        cols[e] = np.where(inside, x[source], x.dtype.type(0))


def col2im_gather(launch: Launch, cols, x, N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo, k_major):
    index = type(N)
    N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo = (
        np.int64(v) for v in (N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, Ho, Wo))
    L = Ho * Wo
    K = C * kH * kW
    total = int(_fits(np.array([N * C * H * W]), index, "N*C*H*W")[0])
    for e in launch.grid_stride(total):
        # One thread per input pixel x[n][c][h][w].
        w = e % W
        h = (e // W) % H
        c = (e // (W * H)) % C
        n = e // (W * H * C)
        total_ = np.zeros(e.shape, dtype=x.dtype)  # T sum = 0, added in the kernel's order (i, then j)
        for i in range(int(kH)):
            hs = h + pH - i * dH
            row_ok = (hs >= 0) & (hs % sH == 0)
            ho = hs // sH
            row_ok &= ho < Ho
            for j in range(int(kW)):
                ws = w + pW - j * dW
                ok = row_ok & (ws >= 0) & (ws % sW == 0)
                wo = ws // sW
                ok &= wo < Wo
                k = (c * kH + i) * kW + j
                l_ = ho * Wo + wo
                at = (k * N + n) * L + l_ if k_major else (n * K + k) * L + l_
                at = _fits(np.where(ok, at, 0), index, "the column index")
                total_ += np.where(ok, cols[at], x.dtype.type(0))
        x[e] = total_


# ---------------------------------------------------------------------------
# batch_norm.py: the reductions (template <T>)
# ---------------------------------------------------------------------------


def _chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """__device__ chan_merge, elementwise: merge summary b into summary a (returns the new a)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    frac_b = n_b / np.where(n > 0, n, 1.0)
    merged_mean = mean_a + delta * frac_b
    merged_m2 = m2_a + m2_b + delta * delta * n_a * frac_b
    nothing = n_b == 0.0  # "if (n_b == 0.0) return;"
    return (np.where(nothing, n_a, n), np.where(nothing, mean_a, merged_mean), np.where(nothing, m2_a, merged_m2))


def _reduction_grid(launch: Launch, C, splits, name: str):
    """Thread coordinates [c, s, t] of a (splits x C) grid of blocks, checked against the kernel's assumptions."""
    threads = launch.block[0]
    if launch.grid[:2] != (int(splits), int(C)) or launch.grid[2] != 1:
        raise ValueError(f"{name}: the kernel reads blockIdx.x as the slice and blockIdx.y as the channel, so the "
                         f"grid must be (splits, C) = ({splits}, {C}); got {launch.grid}")
    if threads > 256 or threads & (threads - 1) or launch.block[1:] != (1, 1):
        raise ValueError(f"{name}: blockDim.x must be a power of two, at most MAX_THREADS=256; got {launch.block}")
    c = np.arange(int(C), dtype=np.int64)[:, None, None]
    s = np.arange(int(splits), dtype=np.int64)[None, :, None]
    t = np.arange(threads, dtype=np.int64)[None, None, :]
    return c, s, t, threads


def _strided_values(launch, C, splits, N, HW, c, s, t, threads):
    """Each thread's sequence of addresses (n*C + c)*HW + p, round by round, with the kernel's (n, p) stepping."""
    m = np.int64(N) * np.int64(HW)
    HW = np.int64(HW)
    stride = np.int64(splits) * threads
    step_n, step_p = stride // HW, stride % HW
    j = np.broadcast_to(s * threads + t, (int(C), int(splits), threads)).copy()
    n, p = j // HW, j % HW
    while True:
        active = j < m
        if not active.any():
            return
        yield active, np.where(active, (n * C + c) * HW + p, 0)
        n = n + step_n
        p = p + step_p
        wrapped = p >= HW
        p = np.where(wrapped, p - HW, p)
        n = np.where(wrapped, n + 1, n)
        j = j + stride


def bn_stats_partial(launch: Launch, x, partial, N, C, HW, splits):
    c, s, t, threads = _reduction_grid(launch, C, splits, "bn_stats_partial")
    shape = (int(C), int(splits), threads)
    K = x[c * np.int64(HW)].astype(np.float64)  # the shift: the channel's first value
    count, total, total_sq = (np.zeros(shape) for _ in range(3))
    for active, at in _strided_values(launch, C, splits, N, HW, c, s, t, threads):
        d = x[at].astype(np.float64) - K
        count += active
        total += np.where(active, d, 0.0)
        total_sq += np.where(active, d * d, 0.0)
    some = count > 0.0
    mean = np.where(some, K + total / np.where(some, count, 1.0), 0.0)
    m2 = np.where(some, total_sq - total * total / np.where(some, count, 1.0), 0.0)
    half = threads // 2
    while half > 0:  # the shared-memory tree: the lower half merges in the upper half
        lower, upper = slice(0, half), slice(half, 2 * half)
        merged = _chan_merge(count[..., lower], mean[..., lower], m2[..., lower],
                             count[..., upper], mean[..., upper], m2[..., upper])
        count[..., lower], mean[..., lower], m2[..., lower] = merged
        half //= 2
    for q, summary in enumerate((count, mean, m2)):  # thread 0 writes partial[q][c][s]
        partial[(q * int(C) + c[:, :, 0]) * int(splits) + s[:, :, 0]] = summary[..., 0]


def _channel_threads(launch: Launch, C, name: str):
    c = np.arange(launch.threads, dtype=np.int64)  # blockIdx.x * blockDim.x + threadIdx.x
    if launch.threads < int(C):
        raise ValueError(f"{name}: {launch.threads} threads for {C} channels: some channels are never written")
    return c[c < int(C)]  # "if (c >= C) return;"


def bn_stats_finalize(launch: Launch, partial, C, splits, eps, gamma, has_gamma, mean_out, var_out, inv_std_out,
                      scale_out):
    c = _channel_threads(launch, C, "bn_stats_finalize")
    T = mean_out.dtype.type
    count, mean, m2 = np.zeros(c.shape), np.zeros(c.shape), np.zeros(c.shape)
    for s in range(int(splits)):
        count, mean, m2 = _chan_merge(count, mean, m2, partial[(0 * C + c) * splits + s],
                                      partial[(1 * C + c) * splits + s], partial[(2 * C + c) * splits + s])
    var = m2 / count  # biased
    inv_std = 1.0 / np.sqrt(var + eps)
    mean_out[c] = mean.astype(T)
    var_out[c] = var.astype(T)
    inv_std_out[c] = inv_std.astype(T)
    scale_out[c] = (inv_std * gamma[c].astype(np.float64) if has_gamma else inv_std).astype(T)


def bn_backward_partial(launch: Launch, g, x, mean, partial, N, C, HW, splits):
    c, s, t, threads = _reduction_grid(launch, C, splits, "bn_backward_partial")
    shape = (int(C), int(splits), threads)
    mu = mean[c]  # T
    sum_g, sum_gc = np.zeros(shape), np.zeros(shape)
    for active, at in _strided_values(launch, C, splits, N, HW, c, s, t, threads):
        gv = g[at].astype(np.float64)
        sum_g += np.where(active, gv, 0.0)
        sum_gc += np.where(active, gv * (x[at] - mu).astype(np.float64), 0.0)  # centred in T first
    half = threads // 2
    while half > 0:
        sum_g[..., :half] += sum_g[..., half:2 * half]
        sum_gc[..., :half] += sum_gc[..., half:2 * half]
        half //= 2
    for q, summary in enumerate((sum_g, sum_gc)):
        partial[(q * int(C) + c[:, :, 0]) * int(splits) + s[:, :, 0]] = summary[..., 0]


def bn_backward_finalize(launch: Launch, partial, C, splits, m, inv_std, gamma, has_gamma, dgamma, dbeta, coef):
    c = _channel_threads(launch, C, "bn_backward_finalize")
    T = dgamma.dtype.type
    sum_g, sum_gc = np.zeros(c.shape), np.zeros(c.shape)
    for s in range(int(splits)):  # in order, like the kernel
        sum_g += partial[(0 * C + c) * splits + s]
        sum_gc += partial[(1 * C + c) * splits + s]
    is_ = inv_std[c].astype(np.float64)
    gam = gamma[c].astype(np.float64) if has_gamma else np.ones(c.shape)
    dbeta[c] = sum_g.astype(T)
    dgamma[c] = (sum_gc * is_).astype(T)
    coef[0 * C + c] = (gam * is_).astype(T)
    coef[1 * C + c] = (-gam * is_ * is_ * is_ * sum_gc / m).astype(T)
    coef[2 * C + c] = (-gam * is_ * sum_g / m).astype(T)


RAW_KERNELS = {f.__name__: f for f in (im2col_gather, col2im_gather, bn_stats_partial, bn_stats_finalize,
                                      bn_backward_partial, bn_backward_finalize)}


# ---------------------------------------------------------------------------
# ElementwiseKernels: i is the element's index; raw arrays are indexed by hand
# ---------------------------------------------------------------------------


def minires_relu_forward(i, x, y):
    return {"y": np.where((x > 0) | (x != x), x, x.dtype.type(0))}


def minires_relu_backward(i, g, y, dx):
    return {"dx": np.where(y <= 0, g.dtype.type(0), g)}


def minires_bn_normalize(i, x, mean, scale, beta, hw, channels, has_beta, y):
    c = ((i // np.int64(hw)) % channels).astype(np.int32)
    return {"y": (x - mean[c]) * scale[c] + (beta[c] if has_beta else x.dtype.type(0))}


def minires_bn_backward_dx(i, g, x, mean, coef, hw, channels, dx):
    c = ((i // np.int64(hw)) % channels).astype(np.int32)
    return {"dx": coef[c] * g + coef[channels + c] * (x - mean[c]) + coef[2 * channels + c]}


def minires_bn_update_running(i, batch_mean, batch_var, momentum, bessel, running_mean, running_var):
    as_double = np.float64
    return {
        "running_mean": (1.0 - momentum) * running_mean.astype(as_double) + momentum * batch_mean.astype(as_double),
        "running_var": (1.0 - momentum) * running_var.astype(as_double)
        + momentum * (batch_var.astype(as_double) * bessel),
    }


ELEMENTWISE_KERNELS = {f.__name__: f for f in (minires_relu_forward, minires_relu_backward, minires_bn_normalize,
                                              minires_bn_backward_dx, minires_bn_update_running)}
