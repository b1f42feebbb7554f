"""Softmax cross-entropy: log-softmax and the negative log-likelihood in one step.

A classifier's last layer gives ``logits`` z of shape ``(N, K)``: one score per
class for each of N examples. Softmax turns a row into probabilities,
``p_k = exp(z_k) / sum_j exp(z_j)``, and the loss of an example whose true
class is t is ``-log p_t``. With label smoothing eps (PyTorch's definition,
Szegedy et al. 2016) the target is no longer one-hot but the mixture
``q = (1 - eps) * onehot(t) + eps / K`` (every class, the true one included,
receives eps / K), and the loss is the cross-entropy ``-sum_k q_k log p_k``.

Numerical stability: why "fused"
--------------------------------
Computing ``exp(z)`` directly overflows for z around 89 in float32 (710 in
float64), and ``log`` of an underflowed probability is -inf. Both are avoided
by never forming p before taking its log::

    log p_k = z_k - logsumexp(z),    logsumexp(z) = zmax + log(sum_j exp(z_j - zmax))

After subtracting the row maximum every exponent is <= 0 (no overflow) and
the largest term is exp(0) = 1 (the sum is >= 1, its log is finite). Logits
of 1e4 are then as harmless as logits of 1. So the loss per example is::

    loss = logsumexp(z) - (1 - eps) * z_t - (eps / K) * sum_k z_k

(substitute log p_k into -sum q_k log p_k and use sum_k q_k = 1).

Gradient
--------
Differentiating, with d logsumexp / d z_k = p_k::

    d loss / d z_k = p_k - q_k

softmax minus target: the familiar result that makes softmax and
cross-entropy a natural pair. p is computed stably as
``exp(z - zmax) / sum_j exp(z_j - zmax)`` and saved by the forward pass.

Shapes: logits ``(N, K)`` floating point, target ``(N,)`` integer class
indices in [0, K). The functions work on NumPy and CuPy arrays alike; they are
cheap (N * K numbers), so there is no separate fast path.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["log_softmax", "cross_entropy_forward", "cross_entropy_backward"]


def log_softmax(logits: Any) -> Any:
    """Row-wise log-softmax of ``(N, K)`` logits, computed stably; same shape and dtype."""
    xp = get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_forward(logits: Any, target: Any, label_smoothing: float = 0.0) -> tuple:
    """Per-example smoothed cross-entropy and the softmax probabilities.

    Args:
        logits: ``(N, K)`` floating point.
        target: ``(N,)`` integer class indices in [0, K), not checked here:
            :func:`minires.nn.functional.cross_entropy` checks host labels,
            and clips device labels into range (reading them back would
            stall the GPU) and turns those examples' losses into NaN.
        label_smoothing: eps in [0, 1].

    Returns:
        ``(losses, probs)``: losses ``(N,)`` and probs ``(N, K)``, both in the
        logits' dtype; probs is what :func:`cross_entropy_backward` needs.
    """
    xp = get_array_module(logits)
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)  # every entry <= 0
    probs = xp.exp(shifted)
    sum_exp = probs.sum(axis=1)  # >= 1: the row maximum contributes exp(0)
    probs /= sum_exp[:, None]
    log_sum_exp = xp.log(sum_exp)  # logsumexp(z) - zmax
    # Shifting every logit of a row by zmax changes no log-probability, so the
    # formula of the docstring can use `shifted` in place of z.
    losses = log_sum_exp - (1.0 - label_smoothing) * shifted[xp.arange(n), target]
    if label_smoothing:
        losses = losses - (label_smoothing / k) * shifted.sum(axis=1)
    return losses.astype(logits.dtype, copy=False), probs


def cross_entropy_backward(grad_losses: Any, probs: Any, target: Any, label_smoothing: float = 0.0) -> Any:
    """Gradient with respect to the logits: ``grad_losses[:, None] * (probs - q)``.

    Args:
        grad_losses: ``(N,)`` upstream gradient of each example's loss.
        probs: ``(N, K)`` softmax probabilities from the forward pass.
        target: ``(N,)`` class indices.
        label_smoothing: eps, as in the forward.

    Returns:
        ``(N, K)`` in probs' dtype.
    """
    xp = get_array_module(probs)
    n, k = probs.shape
    g = grad_losses.astype(probs.dtype, copy=False)
    dlogits = probs * g[:, None]
    # Subtract g * q: (1 - eps) at the true class, plus eps / K everywhere.
    dlogits[xp.arange(n), target] -= (1.0 - label_smoothing) * g
    if label_smoothing:
        dlogits -= (label_smoothing / k) * g[:, None]
    return dlogits
