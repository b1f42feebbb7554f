"""Fused ``relu(bn(x) + r)`` for the fast set: a Function, and the blocks' forwards that use it.

In a ResNet every batch norm is followed by a ReLU, the last one of a
residual block after the shortcut is added. As separate operations the
addition and the ReLU each take one more pass over memory forward (and the
ReLU one more backward), each with a full-size array. Fused
(:func:`minires.fast.batch_norm.batch_norm_relu_train_forward`), they ride on
the batch norm's last pass. Same numbers and gradients; same modules,
parameters and state_dict keys: the fast set replaces the blocks' ``forward``
through :func:`minires.dispatch.register_forward`, so ``models/blocks.py``
keeps the plain computation.

The fused forward runs only when nothing needs the tensors it skips: the
block is training on the CPU, no tap watches it, and its batch norms and ReLU
are the stock modules (not swapped, subclassed or hooked). Otherwise the
block's own forward runs.
"""

from __future__ import annotations

from typing import Any

from .. import dispatch, nn
from ..function import Function
from ..models.blocks import BasicBlock, Bottleneck, PlainBlock, PlainBottleneck
from ..nn.functional.normalization import affine_grads, affine_param, check_batch_norm_arguments, split_affine
from ..tensor import Tensor
from . import batch_norm as kernels

__all__ = ["BatchNormReLUTrain", "batch_norm_relu", "bn_relu", "can_fuse"]


class BatchNormReLUTrain(Function):
    """``relu(bn(x) + residual)`` in training mode, as one Function.

    Positional inputs: ``x``, then ``weight`` and ``bias`` if present, then
    ``residual`` (x's shape) if ``has_residual``. Saves x and the output y
    (whose sign is the ReLU's mask), not the sum before the ReLU.
    """

    @staticmethod
    def forward(ctx, x, *inputs, has_weight, has_bias, has_residual, eps, momentum, running_mean, running_var):
        inputs = list(inputs)
        residual = inputs.pop() if has_residual else None
        weight, bias = split_affine(inputs, has_weight, has_bias)
        y, mean, var, inv_std = kernels.batch_norm_relu_train_forward(x, weight, bias, eps, residual)
        if running_mean is not None:
            update = dispatch.kernel("update_running_stats", running_mean)
            update(running_mean, running_var, mean, var, x.size // x.shape[1], momentum)
        ctx.save_for_backward(x, y, mean, inv_std, weight)
        ctx.has_weight, ctx.has_bias, ctx.has_residual = has_weight, has_bias, has_residual
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, mean, inv_std, weight = ctx.saved_tensors
        need_dz = ctx.has_residual and ctx.needs_input_grad[-1]
        dx, dweight, dbias, dz = kernels.batch_norm_relu_train_backward(
            grad, y, x, mean, inv_std, weight, need_dx=ctx.needs_input_grad[0], need_dz=need_dz
        )
        grads = affine_grads(dx, dweight, dbias, ctx.has_weight, ctx.has_bias)
        return grads + (dz,) if ctx.has_residual else grads


def batch_norm_relu(
    x: Tensor,
    running_mean: Any,
    running_var: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    residual: Tensor | None = None,
) -> Tensor:
    """``relu(F.batch_norm(x, ..., training=True) + residual)`` as one Function (CPU arrays).

    Arguments and errors as :func:`minires.nn.functional.batch_norm`, plus
    ``residual``: None or a Tensor of x's shape, dtype and device.
    """
    name = "batch_norm_relu"
    x, r_mean, r_var = check_batch_norm_arguments(x, running_mean, running_var, True, momentum, eps, name=name)
    channels = x.shape[1]
    w, b = affine_param(weight, "weight", x, channels), affine_param(bias, "bias", x, channels)
    inputs = [p for p in (w, b) if p is not None]
    if residual is not None:
        inputs.append(_checked_residual(residual, x))
    flags = dict(has_weight=w is not None, has_bias=b is not None, has_residual=residual is not None)
    return BatchNormReLUTrain.apply(
        x, *inputs, eps=float(eps), momentum=float(momentum), running_mean=r_mean, running_var=r_var, **flags
    )


def _checked_residual(residual: Any, x: Tensor) -> Tensor:
    if not isinstance(residual, Tensor):
        residual = Tensor(residual, dtype=x.dtype, device=x.device)
    if residual.shape != x.shape:
        raise ValueError(f"residual has shape {residual.shape} but x has shape {x.shape}; they must match")
    if residual.dtype != x.dtype:
        raise TypeError(f"residual has dtype {residual.dtype} but x has dtype {x.dtype}; they must match")
    if residual.device != x.device:
        raise ValueError(f"residual is on {residual.device} but x is on {x.device}")
    return residual


def bn_relu(bn: nn.BatchNorm2d, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``relu(bn(x) + residual)`` for a training-mode BatchNorm2d module, fused, with its bookkeeping."""
    momentum, _, track = bn._prepare(x)
    y = batch_norm_relu(
        x,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight,
        bn.bias,
        momentum,
        bn.eps,
        residual=residual,
    )
    bn._count_batch()
    return y


def _stock(module: nn.Module, cls: type) -> bool:
    """Exactly ``cls``'s forward runs: no subclass override, no per-instance forward, no forward hook."""
    return (
        isinstance(module, cls)
        and type(module).forward is cls.forward
        and "forward" not in vars(module)
        and not module._forward_hooks
    )


def can_fuse(block: nn.Module, x: Tensor, bn_names: tuple[str, ...]) -> bool:
    """True when the fused forward computes exactly what ``block.forward`` would (module docstring)."""
    if not block.training or block._taps or x.device.type != "cpu":
        return False
    return _stock(block.relu, nn.ReLU) and all(_stock(getattr(block, n), nn.BatchNorm2d) for n in bn_names)


@dispatch.register_forward(BasicBlock)
def basic_block_forward(block: BasicBlock, x: Tensor) -> Tensor:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))`` with each BN and its ReLU (and the addition) fused."""
    if not can_fuse(block, x, ("bn1", "bn2")):
        return NotImplemented
    out = bn_relu(block.bn1, block.conv1(x))
    return bn_relu(block.bn2, block.conv2(out), residual=block.downsample(x))


@dispatch.register_forward(PlainBlock)
def plain_block_forward(block: PlainBlock, x: Tensor) -> Tensor:
    """:func:`basic_block_forward` without the shortcut."""
    if not can_fuse(block, x, ("bn1", "bn2")):
        return NotImplemented
    return bn_relu(block.bn2, block.conv2(bn_relu(block.bn1, block.conv1(x))))


@dispatch.register_forward(Bottleneck)
def bottleneck_forward(block: Bottleneck, x: Tensor) -> Tensor:
    """The bottleneck's three conv-BN-ReLU layers and the shortcut, each BN fused with its ReLU."""
    if not can_fuse(block, x, ("bn1", "bn2", "bn3")):
        return NotImplemented
    out = bn_relu(block.bn1, block.conv1(x))
    out = bn_relu(block.bn2, block.conv2(out))
    return bn_relu(block.bn3, block.conv3(out), residual=block.downsample(x))


@dispatch.register_forward(PlainBottleneck)
def plain_bottleneck_forward(block: PlainBottleneck, x: Tensor) -> Tensor:
    """:func:`bottleneck_forward` without the shortcut."""
    if not can_fuse(block, x, ("bn1", "bn2", "bn3")):
        return NotImplemented
    out = bn_relu(block.bn1, block.conv1(x))
    out = bn_relu(block.bn2, block.conv2(out))
    return bn_relu(block.bn3, block.conv3(out))
