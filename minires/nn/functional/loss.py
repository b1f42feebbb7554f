"""Classification loss and metric: ``cross_entropy`` and ``accuracy``.

``cross_entropy`` is one :class:`CrossEntropy` Function (log-softmax and the
negative log-likelihood fused, see :mod:`minires.kernels.cross_entropy` for
the mathematics and why fusing them is what makes large logits safe), not a
chain of exp/sum/log operations: the fused backward is simply
``softmax - target``.

``accuracy`` is a plain number for logging, not differentiable.

Checking the labels without stalling a GPU. A label outside ``[0, K)`` must
not pass silently (it would index another row's logits). On the host the check
is free and raises a ValueError naming the bad label. On a GPU, reading the
answer of a check back to the host waits for every queued kernel (a *sync*),
which would stall every training step. Labels start on the host, so the usual
case costs nothing: a NumPy target with CuPy logits is checked on the host and
then copied to the device. A target that is already on the device is not read
back: an out-of-range label makes that example's loss (and its gradient) NaN
instead, computed on the device, so the trainer's deferred finiteness check
(which reads the losses in batches) stops the run.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ...backend import device_of, get_array_module, to_device
from ...dispatch import kernel
from ...function import Function
from ...tensor import Tensor

__all__ = ["cross_entropy", "accuracy", "CrossEntropy"]

_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropy(Function):
    """Softmax cross-entropy of ``(N, K)`` logits against ``(N,)`` class indices.

    Positional input: the logits. Keyword parameters: ``target`` (raw integer
    array, every value in [0, K)), ``bad`` (None, or an ``(N,)`` boolean array:
    the examples whose label was out of range, see :func:`cross_entropy`),
    ``label_smoothing``, ``reduction``. Output: ``()`` for "mean" and "sum",
    ``(N,)`` for "none".
    """

    @staticmethod
    def forward(ctx, logits, *, target, label_smoothing, reduction, bad=None):
        losses, probs = kernel("cross_entropy_forward", logits)(logits, target, label_smoothing)
        if bad is not None:
            losses = _poison(losses, bad)
        ctx.save_for_backward(probs, target)
        ctx.bad = bad
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
        grad_logits = kernel("cross_entropy_backward", probs)(grad_losses, probs, target, ctx.label_smoothing)
        if ctx.bad is not None:
            # NaN too: an update computed from a wrong label must not look like a good one.
            grad_logits = _poison(grad_logits, ctx.bad[:, None])
        return grad_logits


def _poison(values: Any, bad: Any) -> Any:
    """``values`` with NaN where ``bad`` is True (broadcast), on the values' device, without a sync."""
    xp = get_array_module(values)
    return xp.where(bad, xp.asarray(xp.nan, dtype=values.dtype), values)


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


def _on_device(array: Any) -> bool:
    """Whether ``array`` lives on a GPU, where reading a value back costs a sync."""
    return device_of(array).type != "cpu"


def _target_array(target: Any, logits: Tensor, fn: str, defer_device_check: bool = False) -> tuple[Any, Any]:
    """The target as a raw int64 array on the logits' device, and the examples to poison.

    Returns ``(target, bad)``. ``bad`` is None when every label was checked:
    always for a host (NumPy) target, which is checked on the host (free) and
    then moved to the logits' device. For a target already on a GPU with
    ``defer_device_check``, nothing is read back: ``bad`` is the ``(N,)``
    device mask of out-of-range labels and the returned target has them
    clipped into range, so that indexing with it stays inside the logits.
    """
    if isinstance(target, Tensor):
        target = target.data
    elif not hasattr(target, "dtype"):
        target = np.asarray(target)  # a list: labels come from the host, checked there
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
        if _on_device(target):
            raise ValueError(f"{fn}: target is on {device_of(target)} but logits are on {logits.device}")
        _check_range(target, k, fn)  # on the host, then one copy to the logits' device
        return to_device(target.astype(np.int64, copy=False), logits.device), None
    xp = get_array_module(target)
    if defer_device_check and _on_device(target):
        bad = (target < 0) | (target >= k)  # stays on the device: no sync
        return xp.clip(target, 0, k - 1).astype(xp.int64, copy=False), bad
    _check_range(target, k, fn)
    return target.astype(xp.int64, copy=False), None


def _check_range(target: Any, k: int, fn: str) -> None:
    """Raise a ValueError naming the first label outside [0, k) (reads the target: a sync on a GPU)."""
    xp = get_array_module(target)
    bad = xp.flatnonzero((target < 0) | (target >= k))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{fn}: target[{i}] = {int(target[i])} is out of range for {k} classes (valid: 0..{k - 1}); "
            f"{int(bad.size)} bad value(s) in total"
        )


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
            or a list. A host (NumPy) target is checked on the host and moved
            to the logits' device. A target already on a GPU is not read back
            (that would wait for the GPU on every step): an example whose label
            is out of range gets a NaN loss and a NaN gradient instead, so a
            "mean" or "sum" loss is NaN, deterministically, and the trainer's
            finiteness check stops the run.
        label_smoothing: eps in [0, 1]; the target distribution becomes
            ``(1 - eps) * onehot + eps / K``.
        reduction: "mean" (over the batch; a ``()`` Tensor), "sum" (``()``)
            or "none" (the ``(N,)`` per-example losses).

    Returns:
        A Tensor in the logits' dtype.

    Raises:
        TypeError: non-floating logits, non-integer target.
        ValueError: wrong ranks, batch size mismatch, a host target outside
            [0, K) (PyTorch's ignore_index=-100 is not supported), bad
            label_smoothing or reduction.

    Example::

        loss = cross_entropy(model(images), labels)
        loss.backward()
    """
    logits = _logits_tensor(logits, "cross_entropy")
    target, bad = _target_array(target, logits, "cross_entropy", defer_device_check=True)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, numbers.Real)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    return CrossEntropy.apply(
        logits, target=target, bad=bad, label_smoothing=float(label_smoothing), reduction=reduction
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
    # accuracy returns a Python float, a read from the device anyway: check the labels eagerly.
    target, _ = _target_array(target, logits, "accuracy")
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
