"""Classification loss and metric: ``cross_entropy`` and ``accuracy``.

``cross_entropy`` is one :class:`CrossEntropy` Function (log-softmax and the
negative log-likelihood fused, see :mod:`minires.kernels.cross_entropy` for
the mathematics and why fusing them is what makes large logits safe), not a
chain of exp/sum/log operations: the fused backward is simply
``softmax - target``.

``accuracy`` is a plain number for logging, not differentiable.
"""

from __future__ import annotations

import numbers
from typing import Any

from ...backend import device_of, get_array_module
from ...dispatch import kernel
from ...function import Function
from ...tensor import Tensor

__all__ = ["cross_entropy", "accuracy", "CrossEntropy"]

_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropy(Function):
    """Softmax cross-entropy of ``(N, K)`` logits against ``(N,)`` class indices.

    Positional input: the logits. Keyword parameters: ``target`` (raw integer
    array), ``label_smoothing``, ``reduction``. Output: ``()`` for "mean" and
    "sum", ``(N,)`` for "none".
    """

    @staticmethod
    def forward(ctx, logits, *, target, label_smoothing, reduction):
        losses, probs = kernel("cross_entropy_forward", logits)(logits, target, label_smoothing)
        ctx.save_for_backward(probs, target)
        ctx.label_smoothing = label_smoothing
        ctx.reduction = reduction
        if reduction == "none":
            return losses
        total = losses.sum()
        return total / losses.shape[0] if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad):
        probs, target = ctx.saved_tensors
        xp = get_array_module(probs)
        n = probs.shape[0]
        if ctx.reduction == "none":
            grad_losses = grad
        else:
            # Every example's loss enters the sum once, the mean with weight 1/N.
            scale = grad / n if ctx.reduction == "mean" else grad
            grad_losses = xp.broadcast_to(xp.asarray(scale, dtype=probs.dtype), (n,))
        return kernel("cross_entropy_backward", probs)(grad_losses, probs, target, ctx.label_smoothing)


def _logits_tensor(logits: Any, fn: str) -> Tensor:
    if not isinstance(logits, Tensor):
        logits = Tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"{fn} expects logits of shape (N, K), got {logits.ndim}-D shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"{fn} needs floating-point logits, got dtype {logits.dtype}")
    n, k = logits.shape
    if n == 0:
        raise ValueError(f"{fn} got an empty batch (logits shape {logits.shape})")
    if k == 0:
        raise ValueError(f"{fn} got logits with no classes (shape {logits.shape})")
    return logits


def _target_array(target: Any, logits: Tensor, fn: str) -> Any:
    """The target as a raw integer array on the logits' device, shape and range checked."""
    if isinstance(target, Tensor):
        target = target.data
    elif not hasattr(target, "dtype"):
        target = logits.xp.asarray(target)  # a list: build it where the logits live
    if target.dtype.kind not in "iu":
        hint = ""
        if target.dtype.kind == "f":
            hint = " (class probabilities / one-hot targets are not supported; pass class indices, e.g. argmax)"
        raise TypeError(f"{fn}: target must hold integer class indices, got dtype {target.dtype}{hint}")
    if target.ndim != 1:
        raise ValueError(f"{fn}: target must have shape (N,), got {target.ndim}-D shape {tuple(target.shape)}")
    n, k = logits.shape
    if target.shape[0] != n:
        raise ValueError(
            f"{fn}: batch size mismatch: logits have shape {logits.shape} (N={n}) but target has shape "
            f"{tuple(target.shape)} (N={target.shape[0]})"
        )
    if device_of(target) != logits.device:
        raise ValueError(f"{fn}: target is on {device_of(target)} but logits are on {logits.device}")
    xp = get_array_module(target)
    bad = xp.flatnonzero((target < 0) | (target >= k))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{fn}: target[{i}] = {int(target[i])} is out of range for {k} classes (valid: 0..{k - 1}); "
            f"{int(bad.size)} bad value(s) in total"
        )
    return target.astype(xp.int64, copy=False)


def cross_entropy(
    logits: Tensor,
    target: Any,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy loss (PyTorch's ``F.cross_entropy`` for class-index targets).

    Args:
        logits: ``(N, K)`` Tensor of unnormalised class scores.
        target: ``(N,)`` integer class indices in [0, K): a Tensor, an array
            or a list.
        label_smoothing: eps in [0, 1]; the target distribution becomes
            ``(1 - eps) * onehot + eps / K``.
        reduction: "mean" (over the batch; a ``()`` Tensor), "sum" (``()``)
            or "none" (the ``(N,)`` per-example losses).

    Returns:
        A Tensor in the logits' dtype.

    Raises:
        TypeError: non-floating logits, non-integer target.
        ValueError: wrong ranks, batch size mismatch, a target outside
            [0, K) (PyTorch's ignore_index=-100 is not supported), bad
            label_smoothing or reduction.

    Example::

        loss = cross_entropy(model(images), labels)
        loss.backward()
    """
    logits = _logits_tensor(logits, "cross_entropy")
    target = _target_array(target, logits, "cross_entropy")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, numbers.Real)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    return CrossEntropy.apply(
        logits, target=target, label_smoothing=float(label_smoothing), reduction=reduction
    )


def accuracy(logits: Any, target: Any, topk: int = 1) -> float:
    """Fraction of examples whose true class is among the ``topk`` highest logits.

    Args:
        logits: ``(N, K)`` Tensor or array.
        target: ``(N,)`` integer class indices in [0, K).
        topk: 1 (the argmax must be the target) up to K.

    Returns:
        A Python float in [0, 1]. Ties between equal logits count the class
        with the lower index first (it is the one ``argmax`` returns).
    """
    logits = _logits_tensor(logits, "accuracy")
    target = _target_array(target, logits, "accuracy")
    n, k = logits.shape
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or not 1 <= topk <= k:
        raise ValueError(f"topk must be an integer in [1, {k}] for {k} classes, got {topk!r}")
    z = logits.data
    xp = get_array_module(z)
    if topk == 1:
        hits = z.argmax(axis=1) == target
    else:
        # The target is in the top k exactly when fewer than k classes beat it;
        # a class with an equal logit beats it when its index is lower.
        z_true = z[xp.arange(n), target][:, None]
        index = xp.arange(k)[None, :]
        beats = (z > z_true) | ((z == z_true) & (index < target[:, None]))
        hits = beats.sum(axis=1) < topk
    return float(hits.sum()) / n
