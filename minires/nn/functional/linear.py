"""Functional fully connected layer and flatten.

``linear`` computes y = x W^T + b with W of shape (out_features, in_features),
PyTorch's convention. Backward, with g = dLoss/dy and every leading axis of x
folded into one batch axis of B rows::

    dx = g W            (B, out) @ (out, in)
    dW = g^T x          (out, B) @ (B, in): one matrix product sums over the batch
    db = sum of g over the batch
"""

from __future__ import annotations

import operator
from typing import Any

from ...function import Function
from ...tensor import Tensor

__all__ = ["linear", "flatten", "LinearFunction"]


class LinearFunction(Function):
    """y = x @ weight.T (+ bias) for x (*, in), weight (out, in), bias (out,)."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = x @ weight.T
        if bias is not None:
            y += bias
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        g2 = grad.reshape(-1, weight.shape[0])  # (B, out)
        grad_x = (g2 @ weight).reshape(x.shape) if need_x else None
        grad_w = g2.T @ x.reshape(-1, weight.shape[1]) if need_w else None
        grad_b = g2.sum(axis=0) if need_b else None
        return (grad_x, grad_w, grad_b) if ctx.has_bias else (grad_x, grad_w)


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """Fully connected layer: ``x @ weight.T + bias`` (PyTorch's ``F.linear``).

    Args:
        x: (*, in_features) Tensor, at least 1-D.
        weight: (out_features, in_features), same dtype as x.
        bias: (out_features,) or None.

    Returns:
        (*, out_features) Tensor.

    Raises:
        ValueError: weight not 2-D, x 0-D, in_features mismatch, bias shape.
        TypeError: dtype mismatch or non-floating dtype.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    weight = weight if isinstance(weight, Tensor) else Tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim < 1:
        raise ValueError(f"linear: input must have at least 1 dimension, got shape {x.shape}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {x.shape}) but weight of shape {weight.shape} "
            f"expects {weight.shape[1]}"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"linear: input must be floating point, got dtype {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"linear: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert one of them")
    inputs = [x, weight]
    if bias is not None:
        bias = bias if isinstance(bias, Tensor) else Tensor(bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"linear: bias must have shape ({weight.shape[0]},) for weight {weight.shape}, got {bias.shape}"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"linear: input dtype {x.dtype} and bias dtype {bias.dtype} differ; convert one of them")
        inputs.append(bias)
    return LinearFunction.apply(*inputs)


def flatten(x: Any, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    """Merge dimensions ``start_dim..end_dim`` (inclusive) into one: ``torch.flatten`` semantics.

    The default ``start_dim=1`` keeps the batch axis, like ``nn.Flatten``:
    (N, C, H, W) -> (N, C*H*W). Negative dims count from the end. A 0-D
    tensor becomes shape (1,) (only dims 0 and -1 are valid for it).

    Raises:
        ValueError: a dim out of range for x, or start_dim after end_dim.
        TypeError: non-integer dims.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    dims = []
    for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise TypeError(f"flatten: {name} must be an int, got {dim!r}")
        dims.append(operator.index(dim))
    rank = max(x.ndim, 1)  # a 0-D tensor flattens like a 1-element vector
    for name, dim in zip(("start_dim", "end_dim"), dims):
        if not -rank <= dim < rank:
            raise ValueError(
                f"flatten: {name}={dim} is out of range for a tensor of shape {x.shape} "
                f"(valid: {-rank} to {rank - 1})"
            )
    start, end = dims[0] % rank, dims[1] % rank
    if start > end:
        raise ValueError(f"flatten: start_dim {dims[0]} comes after end_dim {dims[1]} for shape {x.shape}")
    shape = x.shape if x.ndim else (1,)
    merged = 1
    for size in shape[start : end + 1]:
        merged *= size
    return x.reshape(shape[:start] + (merged,) + shape[end + 1 :])
