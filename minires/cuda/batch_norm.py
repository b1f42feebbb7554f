"""Training-mode batch normalisation on the GPU: fused reduction and elementwise kernels.

The formulas and their derivation are in :mod:`minires.kernels.batch_norm`;
the numbers computed here are the same. What changes is how the work is laid
out on a GPU, where every pass over the activations is a trip through GPU
memory (the expensive part: the arithmetic is nearly free):

Forward, two passes over x:

1. ``bn_stats_partial``: ONE read of x gives each channel's mean and variance.
   A grid of (splits x C) blocks: each block summarises one slice of one
   channel as (count, mean, M2), M2 being the sum of squared deviations from
   the mean. Each thread sums its values shifted by one value K of the
   channel, ``sum(v - K)`` and ``sum((v - K)^2)``, in double precision; the
   threads then combine their summaries through shared memory with Chan's
   merge formula (below). Neither step subtracts two large nearly-equal sums:
   the ``E[x^2] - E[x]^2`` shortcut does, and loses every digit of a float32
   variance when |mean| >> std; the shift by K (a value of the same channel,
   so within a few standard deviations of the mean) removes that.
   ``bn_stats_finalize`` (one thread per channel, reading only the small
   table of partial summaries) merges the slices and writes mean, biased
   variance, ``inv_std = 1 / sqrt(var + eps)`` and ``scale = gamma * inv_std``.
2. ``bn_normalize`` (elementwise): ``y = (x - mean[c]) * scale[c] + beta[c]``.

Backward, two passes over (g, x):

1. ``bn_backward_partial`` + ``bn_backward_finalize``: ONE read of g and x
   gives, per channel, ``sum(g)`` and ``sum(g * (x - mean))`` (centred, as in
   the CPU path, for the same numerical reason), hence ``dbeta``, ``dgamma``
   and three per-channel coefficients.
2. ``bn_backward_dx`` (elementwise): the closed form
   ``dx = a[c] * g + b[c] * (x - mean[c]) + k[c]`` with
   ``a = gamma*s``, ``b = -gamma*s^3*sum(g (x - mean))/m``, ``k = -gamma*s*sum(g)/m``.

Running statistics: ``bn_update_running`` (elementwise over the C channels)
applies PyTorch's momentum rule in place, on the device: no value ever
travels to the host during a training step.

Chan's merge of two summaries (n_a, mean_a, M2_a) and (n_b, mean_b, M2_b)
of disjoint sets of values (Chan, Golub and LeVeque, 1979)::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

The split of a channel into slices and the order of the merges are fixed for
a given input shape and GPU, so the results are deterministic (no atomics).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dispatch
from ..backend import get_array_module
from . import THREADS, c_type, kernel_function, multiprocessor_count, supported

__all__ = [
    "supported",
    "batch_norm_train_forward",
    "batch_norm_train_backward",
    "update_running_stats",
    "BATCH_NORM_SOURCE",
]

BATCH_NORM_SOURCE = r"""
// Batch-norm reductions for minires (see minires/kernels/cuda/batch_norm.py).
//
// x is (N, C, HW), C-contiguous: channel c of sample n is the HW values
// starting at (n*C + c)*HW. A channel's m = N*HW values are numbered
// j = n*HW + p (p = position inside the image), so consecutive j are
// (mostly) consecutive addresses and neighbouring threads read neighbouring
// floats: coalesced memory access.
//
// Grid of the *_partial kernels: blockIdx.y = channel c, blockIdx.x = slice s
// of that channel (0 <= s < splits). Block s takes the values
// j = s*blockDim + t, then every (splits*blockDim)-th after that.
// blockDim.x must be a power of two, at most 256 (the shared arrays' size).
//
// partial is a (quantities, C, splits) table of doubles, one column per block.

#define MAX_THREADS 256

// Merge summary b = (n_b, mean_b, m2_b) into summary a (Chan et al.).
__device__ __forceinline__ void chan_merge(double& n_a, double& mean_a, double& m2_a,
                                           const double n_b, const double mean_b, const double m2_b)
{
    const double n = n_a + n_b;
    if (n_b == 0.0) return;              // nothing to add (also avoids 0/0 below)
    const double delta = mean_b - mean_a;
    const double frac_b = n_b / n;
    mean_a += delta * frac_b;
    m2_a += m2_b + delta * delta * n_a * frac_b;
    n_a = n;
}

template <typename T>
__global__ void bn_stats_partial(const T* __restrict__ x, double* __restrict__ partial,
                                 const int N, const int C, const long long HW, const int splits)
{
    const int c = blockIdx.y;
    const int s = blockIdx.x;
    const int t = threadIdx.x;
    const long long m = (long long)N * HW;

    // 1. Each thread sums its values, SHIFTED by one value of the channel
    //    (its first, x[0][c][0]): sum(v - K) and sum((v - K)^2), in double.
    //    Without the shift, sum(v^2) - sum(v)^2/n cancels catastrophically
    //    when |mean| >> std; with it, the numbers summed are of the size of
    //    the spread. (Cheaper than Welford's update, which divides per value.)
    const double K = (double)x[(long long)c * HW];
    double count = 0.0, sum = 0.0, sum_sq = 0.0;
    // j = n*HW + p; (n, p) follow j by addition: a 64-bit division per value
    // would cost more than loading it.
    const long long stride = (long long)splits * blockDim.x;
    const long long step_n = stride / HW, step_p = stride % HW;
    long long j = (long long)s * blockDim.x + t;
    long long n = j / HW, p = j % HW;
    for (; j < m; j += stride) {
        const double d = (double)x[(n * C + c) * HW + p] - K;
        count += 1.0;
        sum += d;
        sum_sq += d * d;
        n += step_n;
        p += step_p;
        if (p >= HW) { p -= HW; ++n; }
    }
    // The thread's summary: mean = K + sum/count, M2 = sum((v - mean)^2).
    const double mean = count > 0.0 ? K + sum / count : 0.0;
    const double m2 = count > 0.0 ? sum_sq - sum * sum / count : 0.0;

    // 2. Tree reduction in shared memory: at each step the lower half of the
    //    active threads merges in the summary of its partner in the upper half.
    __shared__ double s_count[MAX_THREADS], s_mean[MAX_THREADS], s_m2[MAX_THREADS];
    s_count[t] = count; s_mean[t] = mean; s_m2[t] = m2;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) {
            chan_merge(s_count[t], s_mean[t], s_m2[t], s_count[t + half], s_mean[t + half], s_m2[t + half]);
        }
        __syncthreads();   // every merge of this step is done before the next reads it
    }

    // 3. Thread 0 writes the block's summary: partial[q][c][s], q = count, mean, M2.
    if (t == 0) {
        partial[(0 * C + c) * splits + s] = s_count[0];
        partial[(1 * C + c) * splits + s] = s_mean[0];
        partial[(2 * C + c) * splits + s] = s_m2[0];
    }
}

// One thread per channel: merge the channel's slices (in order s = 0, 1, ...)
// and write the statistics. gamma is read only when has_gamma is 1.
template <typename T>
__global__ void bn_stats_finalize(const double* __restrict__ partial, const int C, const int splits,
                                  const double eps, const T* __restrict__ gamma, const int has_gamma,
                                  T* __restrict__ mean_out, T* __restrict__ var_out,
                                  T* __restrict__ inv_std_out, T* __restrict__ scale_out)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double count = 0.0, mean = 0.0, m2 = 0.0;
    for (int s = 0; s < splits; ++s) {
        chan_merge(count, mean, m2, partial[(0 * C + c) * splits + s],
                   partial[(1 * C + c) * splits + s], partial[(2 * C + c) * splits + s]);
    }
    const double var = m2 / count;                 // biased: divide by m, not m - 1
    const double inv_std = 1.0 / sqrt(var + eps);
    mean_out[c] = (T)mean;
    var_out[c] = (T)var;
    inv_std_out[c] = (T)inv_std;
    scale_out[c] = (T)(has_gamma ? inv_std * (double)gamma[c] : inv_std);
}

// Backward reduction: per block, sum(g) and sum(g * (x - mean[c])) over its
// slice of channel c, accumulated in double. partial[q][c][s], q = 0: sum(g),
// q = 1: sum(g * (x - mean)).
template <typename T>
__global__ void bn_backward_partial(const T* __restrict__ g, const T* __restrict__ x,
                                    const T* __restrict__ mean, double* __restrict__ partial,
                                    const int N, const int C, const long long HW, const int splits)
{
    const int c = blockIdx.y;
    const int s = blockIdx.x;
    const int t = threadIdx.x;
    const long long m = (long long)N * HW;
    const T mu = mean[c];

    double sum_g = 0.0, sum_gc = 0.0;
    const long long stride = (long long)splits * blockDim.x;   // (n, p) as in bn_stats_partial
    const long long step_n = stride / HW, step_p = stride % HW;
    long long j = (long long)s * blockDim.x + t;
    long long n = j / HW, p = j % HW;
    for (; j < m; j += stride) {
        const long long at = (n * C + c) * HW + p;
        const double gv = (double)g[at];
        sum_g += gv;
        // Centre in T first, like the CPU path (x - mean is what dx uses too).
        sum_gc += gv * (double)(x[at] - mu);
        n += step_n;
        p += step_p;
        if (p >= HW) { p -= HW; ++n; }
    }

    __shared__ double s_g[MAX_THREADS], s_gc[MAX_THREADS];
    s_g[t] = sum_g; s_gc[t] = sum_gc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) {
            s_g[t] += s_g[t + half];
            s_gc[t] += s_gc[t + half];
        }
        __syncthreads();
    }
    if (t == 0) {
        partial[(0 * C + c) * splits + s] = s_g[0];
        partial[(1 * C + c) * splits + s] = s_gc[0];
    }
}

// One thread per channel: finish the sums (slices in order), write dgamma,
// dbeta and the coefficients of dx = a*g + b*(x - mean) + k, stored as
// coef[0*C + c] = a, coef[1*C + c] = b, coef[2*C + c] = k.
template <typename T>
__global__ void bn_backward_finalize(const double* __restrict__ partial, const int C, const int splits,
                                     const double m, const T* __restrict__ inv_std,
                                     const T* __restrict__ gamma, const int has_gamma,
                                     T* __restrict__ dgamma, T* __restrict__ dbeta, T* __restrict__ coef)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sum_g = 0.0, sum_gc = 0.0;
    for (int s = 0; s < splits; ++s) {
        sum_g += partial[(0 * C + c) * splits + s];
        sum_gc += partial[(1 * C + c) * splits + s];
    }
    const double is = (double)inv_std[c];
    const double gam = has_gamma ? (double)gamma[c] : 1.0;
    dbeta[c] = (T)sum_g;
    dgamma[c] = (T)(sum_gc * is);                      // sum(g * xhat), xhat = (x - mean) * s
    coef[0 * C + c] = (T)(gam * is);
    coef[1 * C + c] = (T)(-gam * is * is * is * sum_gc / m);
    coef[2 * C + c] = (T)(-gam * is * sum_g / m);
}
"""

_NAMES = tuple(
    f"{kernel}<{t}>"
    for kernel in ("bn_stats_partial", "bn_stats_finalize", "bn_backward_partial", "bn_backward_finalize")
    for t in ("float", "double")
)

# Elementwise kernels: CuPy writes the loop; `i` is the element's index in x,
# a C-contiguous (N, C, HW) array, so its channel is (i / hw) % channels.
# `raw` arrays are indexed by hand; the others are the current element.

_NORMALIZE = dict(
    in_params="T x, raw T mean, raw T scale, raw T beta, int32 hw, int32 channels, int32 has_beta",
    out_params="T y",
    operation=r"""
    // y = (x - mean) * (gamma * inv_std) + beta, for the channel of element i.
    const int c = (int)((i / hw) % channels);
    y = (x - mean[c]) * scale[c] + (has_beta ? beta[c] : T(0));
    """,
    name="minires_bn_normalize",
)

_BACKWARD_DX = dict(
    in_params="T g, T x, raw T mean, raw T coef, int32 hw, int32 channels",
    out_params="T dx",
    operation=r"""
    // dx = a*g + b*(x - mean) + k with the channel's coefficients
    // (coef holds a, b and k for every channel, one after another).
    const int c = (int)((i / hw) % channels);
    dx = coef[c] * g + coef[channels + c] * (x - mean[c]) + coef[2 * channels + c];
    """,
    name="minires_bn_backward_dx",
)

_UPDATE_RUNNING = dict(
    in_params="T batch_mean, T batch_var, float64 momentum, float64 bessel",
    out_params="T running_mean, T running_var",
    operation=r"""
    // PyTorch's rule, in double like the CPU path; the variance uses the
    // unbiased batch variance, var * m / (m - 1) ("bessel" = m / (m - 1)).
    running_mean = (T)((1.0 - momentum) * (double)running_mean + momentum * (double)batch_mean);
    running_var = (T)((1.0 - momentum) * (double)running_var + momentum * ((double)batch_var * bessel));
    """,
    name="minires_bn_update_running",
)

_elementwise_cache: dict = {}


def _elementwise(cp: Any, spec: dict) -> Any:
    key = (id(cp), spec["name"])
    if key not in _elementwise_cache:
        _elementwise_cache[key] = cp.ElementwiseKernel(
            spec["in_params"], spec["out_params"], spec["operation"], spec["name"]
        )
    return _elementwise_cache[key]


def _splits(cp: Any, channels: int, m: int) -> int:
    """How many blocks share one channel in the reduction kernels.

    About four blocks per multiprocessor in all (enough to hide memory
    latency), but at least ~4 values per thread so that a block is worth
    launching.
    """
    wanted = -(-4 * multiprocessor_count(cp) // channels)
    useful = -(-m // (4 * THREADS))
    return max(1, min(wanted, useful))


# The reduction kernels put the channel on the grid's y axis, which CUDA limits to 65535 blocks.
MAX_CHANNELS = 65535


def _layout(x: Any) -> tuple:
    """(x as a C-contiguous array, N, C, HW) for an (N, C, *spatial) array."""
    cp = get_array_module(x)
    x = cp.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    if c > MAX_CHANNELS:
        raise ValueError(f"batch_norm on the GPU supports at most {MAX_CHANNELS} channels, got {c} (shape {x.shape})")
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    return x, n, c, hw


def batch_norm_train_forward(x: Any, weight: Any, bias: Any, eps: float) -> tuple:
    """GPU training-mode forward; same contract as
    :func:`minires.kernels.batch_norm.batch_norm_train_forward`.

    Args:
        x: (N, C, *spatial) CuPy float32/float64, at least two values per channel.
        weight, bias: (C,) or None.
        eps: added to the variance.

    Returns:
        (y, mean, var, inv_std): y has x's shape; the others (C,), var biased.
    """
    cp = get_array_module(x)
    shape = x.shape
    x, n, c, hw = _layout(x)
    dtype = x.dtype
    t = c_type(dtype)
    splits = _splits(cp, c, n * hw)
    partial = cp.empty((3, c, splits), dtype=cp.float64)
    kernel_function(cp, BATCH_NORM_SOURCE, _NAMES, f"bn_stats_partial<{t}>")(
        (splits, c), (THREADS,), (x, partial, np.int32(n), np.int32(c), np.int64(hw), np.int32(splits))
    )
    mean, var, inv_std, scale = (cp.empty(c, dtype=dtype) for _ in range(4))
    gamma = cp.ascontiguousarray(weight) if weight is not None else scale  # scale: a placeholder, never read
    kernel_function(cp, BATCH_NORM_SOURCE, _NAMES, f"bn_stats_finalize<{t}>")(
        (-(-c // THREADS),), (THREADS,),
        (partial, np.int32(c), np.int32(splits), np.float64(eps), gamma, np.int32(weight is not None),
         mean, var, inv_std, scale),
    )
    beta = bias if bias is not None else mean  # placeholder, never read when has_beta is 0
    y = cp.empty_like(x)
    _elementwise(cp, _NORMALIZE)(x, mean, scale, beta, hw, c, int(bias is not None), y)
    return y.reshape(shape), mean, var, inv_std


def batch_norm_train_backward(grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool = True) -> tuple:
    """GPU training-mode backward; same contract as
    :func:`minires.kernels.batch_norm.batch_norm_train_backward`.

    Returns:
        (dx | None, dweight, dbias): dx has x's shape, the others (C,).
    """
    cp = get_array_module(grad, x)
    shape = x.shape
    x, n, c, hw = _layout(x)
    g = cp.ascontiguousarray(grad).reshape(x.shape)
    dtype = x.dtype
    t = c_type(dtype)
    splits = _splits(cp, c, n * hw)
    partial = cp.empty((2, c, splits), dtype=cp.float64)
    mean = cp.ascontiguousarray(mean)
    kernel_function(cp, BATCH_NORM_SOURCE, _NAMES, f"bn_backward_partial<{t}>")(
        (splits, c), (THREADS,), (g, x, mean, partial, np.int32(n), np.int32(c), np.int64(hw), np.int32(splits))
    )
    dweight, dbias = cp.empty(c, dtype=dtype), cp.empty(c, dtype=dtype)
    coef = cp.empty((3, c), dtype=dtype)
    inv_std = cp.ascontiguousarray(inv_std)
    gamma = cp.ascontiguousarray(weight) if weight is not None else inv_std  # placeholder when absent
    kernel_function(cp, BATCH_NORM_SOURCE, _NAMES, f"bn_backward_finalize<{t}>")(
        (-(-c // THREADS),), (THREADS,),
        (partial, np.int32(c), np.int32(splits), np.float64(n * hw), inv_std, gamma, np.int32(weight is not None),
         dweight, dbias, coef),
    )
    if not need_dx:
        return None, dweight, dbias
    dx = cp.empty_like(x)
    _elementwise(cp, _BACKWARD_DX)(g, x, mean, coef, hw, c, dx)
    return dx.reshape(shape), dweight, dbias


def update_running_stats(
    running_mean: Any, running_var: Any, batch_mean: Any, batch_var: Any, count: int, momentum: float
) -> None:
    """GPU version of :func:`minires.kernels.batch_norm.update_running_stats` (in place, on the device)."""
    if count < 2:
        raise ValueError(f"the unbiased variance needs at least 2 values per channel, got {count}")
    cp = get_array_module(running_mean)
    _elementwise(cp, _UPDATE_RUNNING)(
        batch_mean, batch_var, float(momentum), count / (count - 1), running_mean, running_var
    )


dispatch.register("batch_norm_train_forward", "cuda", when=lambda x, weight, bias, eps: supported(x, weight, bias))(
    batch_norm_train_forward
)
dispatch.register("batch_norm_train_backward", "cuda", when=lambda *arrays: supported(*arrays))(
    batch_norm_train_backward
)
dispatch.register("update_running_stats", "cuda", when=lambda *args: supported(*args[:4]))(update_running_stats)
