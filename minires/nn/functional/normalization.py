"""Functional batch normalisation: ``batch_norm`` and its two Functions.

The arithmetic (and its derivation) lives in :mod:`minires.kernels.batch_norm`
(the implementation that runs is chosen by :mod:`minires.dispatch`); this
module checks the arguments, chooses training or evaluation mode, and
connects the kernels to autograd:

* :class:`BatchNormTrain` normalises with the batch's own statistics; its
  backward is the hand-derived closed form (every output depends on every
  input of its channel). As a side effect its forward updates the running
  statistics in place.
* :class:`BatchNormEval` normalises with fixed running statistics: a
  per-channel affine map, whose backward is one multiplication.

``weight`` and ``bias`` are optional, so the Functions take them as a variable
number of positional inputs (``x``, then whichever of weight/bias exist) and
return one gradient for each.
"""

from __future__ import annotations

import numbers
from typing import Any

from ...backend import device_of, get_array_module
from ...dispatch import kernel
from ...function import Function
from ...tensor import Tensor

__all__ = ["batch_norm", "BatchNormTrain", "BatchNormEval"]


def split_affine(params: Any, has_weight: bool, has_bias: bool) -> tuple:
    """(weight, bias) from the positional inputs after x, with None for the absent ones."""
    params = list(params)
    weight = params.pop(0) if has_weight else None
    bias = params.pop(0) if has_bias else None
    return weight, bias


def affine_grads(dx: Any, dweight: Any, bias_grad: Any, has_weight: bool, has_bias: bool) -> tuple:
    """One gradient per positional input: dx, then dweight and dbias for the parameters that exist."""
    return (dx,) + ((dweight,) if has_weight else ()) + ((bias_grad,) if has_bias else ())


class BatchNormTrain(Function):
    """Training-mode batch norm: batch statistics, closed-form backward.

    Positional inputs: ``x`` ``(N, C, *spatial)``, then ``weight`` ``(C,)`` if
    ``has_weight``, then ``bias`` ``(C,)`` if ``has_bias``. Keyword parameters:
    ``eps``, ``momentum``, and ``running_mean``/``running_var`` (raw ``(C,)``
    arrays updated in place, or None to skip the update).
    """

    @staticmethod
    def forward(ctx, x, *params, has_weight, has_bias, eps, momentum, running_mean, running_var):
        weight, bias = split_affine(params, has_weight, has_bias)
        y, mean, var, inv_std = kernel("batch_norm_train_forward", x)(x, weight, bias, eps)
        if running_mean is not None:
            count = x.size // x.shape[1]
            kernel("update_running_stats", x)(running_mean, running_var, mean, var, count, momentum)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.has_weight, ctx.has_bias = has_weight, has_bias
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, inv_std, weight = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        backward = kernel("batch_norm_train_backward", x)
        dx, dweight, dbias = backward(grad, x, mean, inv_std, weight, need_dx=need_dx)
        return affine_grads(dx, dweight, dbias, ctx.has_weight, ctx.has_bias)


class BatchNormEval(Function):
    """Evaluation-mode batch norm: fixed statistics, so a per-channel affine map.

    Inputs as :class:`BatchNormTrain`; ``running_mean``/``running_var`` are
    read, never written.
    """

    @staticmethod
    def forward(ctx, x, *params, has_weight, has_bias, eps, running_mean, running_var):
        weight, bias = split_affine(params, has_weight, has_bias)
        xp = get_array_module(x)
        y = kernel("batch_norm_eval_forward", x)(x, running_mean, running_var, weight, bias, eps)
        # Copies of the constants used: the running buffers may be updated by a
        # training step before this node's backward runs.
        mean = running_mean.astype(x.dtype, copy=True)
        inv_std = (1.0 / xp.sqrt(running_var.astype(xp.float64) + eps)).astype(x.dtype)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.has_weight, ctx.has_bias = has_weight, has_bias
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, inv_std, weight = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        need_dparams = any(ctx.needs_input_grad[1:])
        backward = kernel("batch_norm_eval_backward", x)
        dx, dweight, dbias = backward(grad, x, mean, inv_std, weight, need_dx=need_dx, need_dparams=need_dparams)
        return affine_grads(dx, dweight, dbias, ctx.has_weight, ctx.has_bias)




# ---------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------


def _running_array(value: Any, name: str, x: Tensor, channels: int) -> Any:
    """The raw array behind a running statistic (array or grad-free Tensor), checked."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.requires_grad:
            raise ValueError(
                f"{name} must not require grad: running statistics are buffers updated in place, not parameters"
            )
        value = value.data
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be an array or a Tensor, got {type(value).__name__}")
    if tuple(value.shape) != (channels,):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but x has {channels} channels (shape {x.shape}); "
            f"expected shape ({channels},)"
        )
    if value.dtype != x.dtype:
        raise TypeError(
            f"{name} has dtype {value.dtype} but x has dtype {x.dtype}; convert one of them "
            "(e.g. module.to(dtype=...)) so that no silent promotion happens"
        )
    if device_of(value) != x.device:
        raise ValueError(f"{name} is on {device_of(value)} but x is on {x.device}")
    return value


def affine_param(value: Any, name: str, x: Tensor, channels: int) -> Tensor | None:
    """weight/bias as a checked Tensor (arrays are wrapped as constants)."""
    if value is None:
        return None
    if not isinstance(value, Tensor):
        value = Tensor(value, dtype=x.dtype, device=x.device)
    if value.shape != (channels,):
        raise ValueError(
            f"{name} has shape {value.shape} but x has {channels} channels (shape {x.shape}); "
            f"expected shape ({channels},)"
        )
    if value.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but x has dtype {x.dtype}; they must match")
    return value


def check_batch_norm_arguments(
    x: Any, running_mean: Any, running_var: Any, training: bool, momentum: Any, eps: Any, name: str = "batch_norm"
) -> tuple:
    """Checks shared by batch_norm and the fused batch_norm_relu of the fast set (``name``, for the messages).

    Returns ``(x as a Tensor, running mean array, running var array)``.
    """
    if not isinstance(x, Tensor):
        x = Tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} needs a floating-point x, got dtype {x.dtype}")
    if x.dtype.itemsize < 4:
        # The per-channel sums over N * H * W values would overflow float16 (its largest value is
        # 65504) and poison the running statistics with inf; the kernels sum in x's dtype.
        raise TypeError(
            f"{name} supports float32 and float64 x, got {x.dtype}; convert x (and the layer, with "
            "module.to(dtype=np.float32)) first"
        )
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name} expects x of shape (N, C), (N, C, L) or (N, C, H, W); got {x.ndim}-D shape {x.shape}"
        )
    n, channels = x.shape[0], x.shape[1]
    if n == 0 or channels == 0:
        raise ValueError(f"{name} got an empty input of shape {x.shape}")
    count = x.size // channels
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if momentum is None:
        raise NotImplementedError(
            f"momentum=None (cumulative moving average) is not supported by {name}; pass a float "
            "(BatchNorm2d(momentum=None) implements it by passing 1 / num_batches_tracked)"
        )
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0.0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("pass both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm with training=False normalises with the running statistics, but running_mean and "
            "running_var are None; pass them, or use training=True (batch statistics)"
        )

    r_mean = _running_array(running_mean, "running_mean", x, channels)
    r_var = _running_array(running_var, "running_var", x, channels)
    if training and r_mean is not None:
        for name, arr in (("running_mean", r_mean), ("running_var", r_var)):
            # NumPy arrays can be read-only; CuPy's flags have no `writeable` (always writable).
            if not getattr(getattr(arr, "flags", None), "writeable", True):
                raise ValueError(f"{name} is read-only but training mode updates it in place")
    return x, r_mean, r_var


def batch_norm(
    x: Tensor,
    running_mean: Any,
    running_var: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation over every axis but the channel axis (PyTorch's ``F.batch_norm``).

    Args:
        x: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``, floating point.
        running_mean, running_var: ``(C,)`` raw arrays or Tensors that do not
            require grad, same dtype and device as x; or None (only allowed
            when ``training`` is True: then nothing is tracked). In training
            mode they are UPDATED IN PLACE:
            ``running = (1 - momentum) * running + momentum * batch``, the
            variance update using the unbiased batch variance.
        weight, bias: ``(C,)`` Tensors (gamma, beta), or None for 1 and 0.
        training: True: normalise with this batch's mean and (biased)
            variance, which needs more than one value per channel.
            False: normalise with the running statistics.
        momentum: weight of this batch in the running averages, in [0, 1].
            ``None`` (PyTorch's cumulative average) is not supported here;
            :class:`minires.nn.BatchNorm2d` implements it by passing
            ``1 / num_batches_tracked``.
        eps: added to the variance before the square root.

    Returns:
        A Tensor with x's shape and dtype.

    Raises:
        ValueError: wrong rank, channel-count mismatch, one value per
            channel in training, running statistics missing in eval mode.
        TypeError: non-floating x, dtype mismatch between x and the others.
    """
    x, r_mean, r_var = check_batch_norm_arguments(x, running_mean, running_var, training, momentum, eps)
    channels = x.shape[1]
    w = affine_param(weight, "weight", x, channels)
    b = affine_param(bias, "bias", x, channels)
    params = tuple(p for p in (w, b) if p is not None)
    common = dict(has_weight=w is not None, has_bias=b is not None, eps=float(eps))
    if training:
        return BatchNormTrain.apply(
            x, *params, momentum=float(momentum), running_mean=r_mean, running_var=r_var, **common
        )
    return BatchNormEval.apply(x, *params, running_mean=r_mean, running_var=r_var, **common)


