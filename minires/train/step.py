"""One training step and one evaluation pass: the heart of training.

A step, for a batch of images ``(B, 3, 32, 32)`` and labels ``(B,)``::

    logits = model(images)                 # (B, 10) class scores
    loss = cross_entropy(logits, labels)   # mean over the batch of -log softmax(logits)[label]
    loss.backward()                        # every parameter's .grad = dL/dW
    optimizer.step()                       # W <- W - lr * (dL/dW with momentum and weight decay)

Evaluation runs the same forward pass in eval mode (batch norm uses its
running statistics instead of the batch's) and records no graph.
"""

from __future__ import annotations

from typing import Any, Callable

from ..nn import functional as F
from ..tensor import Tensor, no_grad

__all__ = ["train_step", "evaluate", "evaluate_sums"]


def train_step(
    model: Any,
    batch: tuple[Tensor, Tensor],
    optimizer: Any,
    before_update: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """One SGD step on one batch ``(images, labels)``; returns ``(loss, logits)``.

    ``before_update(loss)``, when given, runs between ``backward()`` and
    ``optimizer.step()``: the gradients are then the pure loss gradient, before
    the optimiser adds weight decay and momentum (the trainer logs gradient
    norms there).
    """
    images, labels = batch
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad()  # .grad accumulates across backward() calls: clear the last step's
    loss.backward()
    if before_update is not None:
        before_update(loss)
    optimizer.step()
    return loss, logits


def evaluate(model: Any, loader: Any) -> tuple[float, float]:
    """Average cross-entropy loss and accuracy of ``model`` over ``loader``.

    Runs in eval mode without recording a graph, and restores the model's
    previous mode.

    Returns:
        ``(loss, accuracy)``, Python floats; accuracy in [0, 1].
    """
    loss_sum, correct, seen = evaluate_sums(model, loader)
    if seen == 0:
        raise ValueError("evaluate: the loader produced no examples")
    return loss_sum / seen, correct / seen


def evaluate_sums(model: Any, loader: Any) -> tuple[float, int, int]:
    """``(sum of the losses, correct predictions, examples)`` over ``loader``, as :func:`evaluate` counts them.

    Sums, not averages, because sums from several processes (each with its
    share of the test set) add up to the sums over the whole set.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        with no_grad():
            for images, labels in loader:
                logits = model(images)
                # Sums stay on the device; one transfer per batch at most.
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum").item())
                correct += int((logits.data.argmax(axis=1) == labels.data).sum())
                seen += labels.shape[0]
    finally:
        model.train(was_training)
    return loss_sum, correct, seen
