"""Batch normalisation (Ioffe and Szegedy, 2015) on raw arrays, training and evaluation mode.

x is (N, C), (N, C, L) or (N, C, H, W); each channel is normalised over its
m = N * H * W values; gamma (weight), beta (bias) and the statistics are (C,).

Forward, training mode, one channel with values x_1 .. x_m:

    mu = (1/m) sum_i x_i        var = (1/m) sum_i (x_i - mu)^2      (biased: / m)
    s  = 1 / sqrt(var + eps)    xhat_i = (x_i - mu) s               y_i = gamma xhat_i + beta

Evaluation mode uses the running averages for mu and var instead, so y is a
fixed per-channel affine map. The averages follow PyTorch, with the UNBIASED
batch variance (it estimates the variance of the data, not of this batch):

    running_mean = (1 - momentum) running_mean + momentum mu
    running_var  = (1 - momentum) running_var  + momentum var m / (m - 1)

Backward, training mode, with g_i = dL/dy_i. The parameter gradients are direct:
dbeta = sum_i g_i and dgamma = sum_i g_i xhat_i. Every xhat_j depends on every
x_i, through mu (dmu/dx_i = 1/m) and var (dvar/dx_i = (2/m)(x_i - mu)):

    dxhat_j/dx_i = (s/m) (m delta_ij - 1 - xhat_j xhat_i)
    dx_i = sum_j gamma g_j dxhat_j/dx_i = (gamma s / m) (m g_i - dbeta - xhat_i dgamma)

In words: remove from g its mean and its component along xhat, scale by
gamma s. So sum_i dx_i = 0: the gradient cannot move the batch mean, which
normalisation would undo (and a gradient check with an all-ones upstream
gradient would see nothing). Three sums and one elementwise formula, instead
of the many passes an autograd graph of primitive operations would take.

Backward, evaluation mode: mu and s are constants, so dx = gamma s g; the
parameter gradients have the same formulas as in training.

The fast CPU version (:mod:`minires.fast.batch_norm`) computes the same
numbers in fewer passes over memory.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = [
    "batch_norm_train_forward",
    "batch_norm_train_backward",
    "batch_norm_eval_forward",
    "batch_norm_eval_backward",
    "update_running_stats",
]


def _reduce_axes(ndim: int) -> tuple:
    """Every axis but the channel axis 1: (0,), (0, 2) or (0, 2, 3)."""
    return (0,) + tuple(range(2, ndim))


def _per_channel(values: Any, ndim: int) -> Any:
    """A (C,) array shaped (1, C, 1, ...) to broadcast against an ndim-D x."""
    return values.reshape((1, -1) + (1,) * (ndim - 2))


def _affine(xhat: Any, weight: Any, bias: Any) -> Any:
    """gamma * xhat + beta, where None means gamma = 1 or beta = 0."""
    y = xhat
    if weight is not None:
        y = y * _per_channel(weight, xhat.ndim)
    if bias is not None:
        y = y + _per_channel(bias, xhat.ndim)
    return y


def batch_norm_train_forward(x: Any, weight: Any, bias: Any, eps: float) -> tuple:
    """Training-mode forward with the batch's own statistics.

    Args:
        x: (N, C, *spatial), at least two values per channel.
        weight, bias: (C,) or None. eps: added to the variance.

    Returns:
        (y, mean, var, inv_std): y has x's shape; the rest are (C,), var biased.
    """
    xp = get_array_module(x)
    axes = _reduce_axes(x.ndim)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)  # ddof=0: the biased variance
    inv_std = 1.0 / xp.sqrt(var + eps)
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(xhat, weight, bias), mean, var, inv_std


def batch_norm_train_backward(
    grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool = True
) -> tuple:
    """Training-mode backward, the closed form of the module docstring.

    Args:
        grad: dL/dy, x's shape. x: the forward input.
        mean, inv_std: (C,) statistics returned by the forward.
        weight: (C,) gamma, or None for gamma = 1.
        need_dx: False skips dx (returned as None).

    Returns:
        (dx, dweight, dbias): dx has x's shape, the others are (C,).
    """
    axes = _reduce_axes(x.ndim)
    m = x.size // x.shape[1]
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    dbias = grad.sum(axis=axes)
    dweight = (grad * xhat).sum(axis=axes)
    if not need_dx:
        return None, dweight, dbias
    gamma = 1.0 if weight is None else _per_channel(weight, x.ndim)
    scale = gamma * _per_channel(inv_std, x.ndim) / m
    dx = scale * (m * grad - _per_channel(dbias, x.ndim) - xhat * _per_channel(dweight, x.ndim))
    return dx, dweight, dbias


def batch_norm_eval_forward(x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float) -> Any:
    """Evaluation-mode forward: normalise with the running statistics (any N, even 1).

    Returns y with x's shape and dtype.
    """
    xp = get_array_module(x)
    inv_std = 1.0 / xp.sqrt(running_var + eps)
    xhat = (x - _per_channel(running_mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(xhat, weight, bias).astype(x.dtype, copy=False)


def batch_norm_eval_backward(
    grad: Any, x: Any, mean: Any, inv_std: Any, weight: Any, need_dx: bool = True, need_dparams: bool = True
) -> tuple:
    """Evaluation-mode backward: the gradients of a per-channel affine map.

    ``mean`` and ``inv_std`` are the constants the forward used. Returns
    (dx, dweight, dbias); each is None when its flag is False.
    """
    dx = dweight = dbias = None
    if need_dx:
        gamma = 1.0 if weight is None else _per_channel(weight, x.ndim)
        dx = (grad * gamma * _per_channel(inv_std, x.ndim)).astype(x.dtype, copy=False)
    if need_dparams:
        axes = _reduce_axes(x.ndim)
        xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
        dweight, dbias = (grad * xhat).sum(axis=axes), grad.sum(axis=axes)
    return dx, dweight, dbias


def update_running_stats(
    running_mean: Any, running_var: Any, batch_mean: Any, batch_var: Any, count: int, momentum: float
) -> None:
    """Update the running averages IN PLACE with PyTorch's rule (module docstring).

    Args:
        running_mean, running_var: (C,) arrays, overwritten.
        batch_mean, batch_var: (C,) this batch's mean and BIASED variance.
        count: values per channel in the batch (m = N * H * W), at least 2.
        momentum: weight of the new batch, in [0, 1].
    """
    if count < 2:
        raise ValueError(f"the unbiased variance needs at least 2 values per channel, got {count}")
    xp = get_array_module(running_mean)
    unbiased = batch_var.astype(xp.float64) * (count / (count - 1))
    new_mean = (1.0 - momentum) * running_mean.astype(xp.float64) + momentum * batch_mean.astype(xp.float64)
    new_var = (1.0 - momentum) * running_var.astype(xp.float64) + momentum * unbiased
    running_mean[...] = new_mean  # into the existing buffer: the caller's array changes
    running_var[...] = new_var
