"""SyncBatchNorm: batch normalisation with the statistics of the GLOBAL batch, over all ranks.

With plain BatchNorm2d under data parallelism each rank normalises with the
mean and variance of its own part of the batch (64 images of a global 128 on
2 ranks): a different, noisier normalisation than one process would compute.
SyncBatchNorm makes every rank use the statistics of all M values of a
channel, M = sum over ranks of m_r = N_r * H * W.

Forward, per channel: the two passes of one-process BatchNorm2d
(:mod:`minires.kernels.batch_norm`), each followed by an all-reduce of its
per-channel sums (the counts ride along, so ranks may hold different batch
sizes)::

    pass 1:  S = sum_all x_i,  M = sum_r m_r       ->  mu  = S / M
    pass 2:  Q = sum_all (x_i - mu)^2              ->  var = Q / M     (biased, as BatchNorm2d)
    s = 1 / sqrt(var + eps)     xhat_i = (x_i - mu) s      y_i = gamma xhat_i + beta

One pass with the sum of squares (``var = sum x^2 / M - mu^2``) would need
one all-reduce instead of two, but it subtracts two numbers of size mu^2 to
get var: a channel with ``|mu| >> sqrt(var)`` loses its digits, in float32
all of them. Two small all-reduces cost microseconds; the passes over x,
milliseconds. The sums are accumulated in float64. The running statistics
are updated with mu and the unbiased ``var * M / (M - 1)`` of the global
batch: the same on every rank.

Backward. The loss being minimised is the SUM of the ranks' losses
(DistributedDataParallel's average divides by W afterwards). With
g_i = dL/dy_i for every value of the global batch, the derivation of
:mod:`minires.kernels.batch_norm` holds with sums over all ranks, because
every xhat_j depends on every x_i through the global mu and var::

    dx_i = (gamma s / M) (M g_i - sum_all g_j - xhat_i sum_all g_j xhat_j)

so the backward all-reduces the two per-channel sums ``sum g`` and
``sum g xhat``, computed locally first. The gradients of gamma and beta are
the LOCAL sums ``sum_{j on this rank} g_j xhat_j`` and ``sum_{j on this rank} g_j``:
DistributedDataParallel combines them over the ranks like every other
parameter's gradient.

In a world of one, or in eval mode, SyncBatchNorm IS BatchNorm2d (its
forward runs).
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..function import Function
from ..nn import BatchNorm2d, Module
from ..tensor import Tensor
from .comm import ProcessGroup, default_group

__all__ = ["SyncBatchNorm", "SyncBatchNormTrain"]

_AXES = (0, 2, 3)  # every axis of (N, C, H, W) but the channels


def _per_channel(values: Any) -> Any:
    """A (C,) array shaped (1, C, 1, 1) to broadcast against x."""
    return values.reshape(1, -1, 1, 1)


def global_statistics(x: Any, group: ProcessGroup) -> tuple:
    """``(mean, biased var, M, x - mean)`` of each channel over all ranks (module docstring, two passes).

    ``mean`` and ``var`` are (C,) float64; ``x - mean`` has x's shape and
    dtype (the forward goes on from it).
    """
    xp = get_array_module(x)
    channels = x.shape[1]
    local_count = xp.asarray([x.size // channels], dtype=xp.float64)
    first = xp.concatenate([x.sum(axis=_AXES, dtype=xp.float64), local_count])
    group.all_reduce(first)
    count = float(first[-1])
    mean = first[:channels] / count
    centered = x - _per_channel(mean.astype(x.dtype))
    second = (centered * centered).sum(axis=_AXES, dtype=xp.float64)
    group.all_reduce(second)
    return mean, second / count, count, centered


def update_running_stats(running_mean: Any, running_var: Any, mean: Any, var: Any, count: float,
                         momentum: float) -> None:
    """PyTorch's rule, IN PLACE: ``running = (1 - momentum) running + momentum batch``, unbiased var."""
    unbiased = var * (count / (count - 1))
    running_mean[...] = (1.0 - momentum) * running_mean + momentum * mean
    running_var[...] = (1.0 - momentum) * running_var + momentum * unbiased


class SyncBatchNormTrain(Function):
    """Training-mode batch norm with global statistics (module docstring).

    Positional inputs: ``x`` (N, C, H, W), then ``weight`` (C,) if
    ``has_weight``, then ``bias`` (C,) if ``has_bias``. Keyword parameters:
    ``eps``, ``momentum``, ``running_mean``/``running_var`` (raw arrays updated
    in place, or None), and ``group``, the ranks to share statistics with.
    """

    @staticmethod
    def forward(ctx, x, *params, has_weight, has_bias, eps, momentum, running_mean, running_var, group):
        weight = params[0] if has_weight else None
        bias = params[-1] if has_bias else None
        mean, var, count, centered = global_statistics(x, group)
        if count < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} over all ranks")
        if running_mean is not None:
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
        xp = get_array_module(x)
        inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        y = centered  # our own array: the rest happens in place, without more full-size temporaries
        y *= _per_channel(inv_std)  # xhat
        if weight is not None:
            y *= _per_channel(weight)
        if bias is not None:
            y += _per_channel(bias)
        ctx.save_for_backward(x, mean.astype(x.dtype), inv_std, weight)
        ctx.has_weight, ctx.has_bias, ctx.count, ctx.group = has_weight, has_bias, count, group
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, inv_std, weight = ctx.saved_tensors
        xhat = x - _per_channel(mean)  # recomputed, as the one-process kernel does, instead of stored
        xhat *= _per_channel(inv_std)
        dbias = grad.sum(axis=_AXES)  # this rank's sum of g
        dweight = (grad * xhat).sum(axis=_AXES)  # this rank's sum of g * xhat
        dx = None
        if ctx.needs_input_grad[0]:
            xp = get_array_module(x)
            sums = xp.concatenate([dbias, dweight]).astype(xp.float64)
            ctx.group.all_reduce(sums)  # every rank's x_i needs the sums over ALL ranks
            channels, m = x.shape[1], ctx.count
            sum_g = _per_channel(sums[:channels].astype(x.dtype))
            sum_g_xhat = _per_channel(sums[channels:].astype(x.dtype))
            gamma = 1.0 if weight is None else _per_channel(weight)
            # dx = (gamma s / M) (M g - sum g - xhat sum g xhat), built in place in one new array.
            dx = grad * x.dtype.type(m)
            dx -= sum_g
            xhat *= sum_g_xhat
            dx -= xhat
            dx *= gamma * _per_channel(inv_std) / x.dtype.type(m)
        return (dx,) + ((dweight,) if ctx.has_weight else ()) + ((dbias,) if ctx.has_bias else ())


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over all ranks.

    Arguments as :class:`minires.nn.BatchNorm2d`, plus ``process_group``
    (default: all ranks). Same parameters, buffers and state_dict keys as
    BatchNorm2d. Shapes: ``(N, C, H, W) -> (N, C, H, W)``; N may differ
    between ranks.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: ProcessGroup | None = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def forward(self, x):
        group = self.process_group or default_group()
        if not self.training or group.size == 1:
            return super().forward(x)
        if not isinstance(x, Tensor):
            x = Tensor(x)
        momentum, _, track = self._prepare(x)
        self._check_dtypes(x)
        params = tuple(p for p in (self.weight, self.bias) if p is not None)
        y = SyncBatchNormTrain.apply(
            x, *params, has_weight=self.weight is not None, has_bias=self.bias is not None, eps=float(self.eps),
            momentum=float(momentum), running_mean=self.running_mean if track else None,
            running_var=self.running_var if track else None, group=group,
        )
        self._count_batch()
        return y

    def _check_dtypes(self, x: Tensor) -> None:
        """Parameters and buffers must have x's dtype (floating): no silent promotion, as in BatchNorm2d."""
        arrays = [p.data for p in (self.weight, self.bias) if p is not None]
        arrays += [b for b in (self.running_mean, self.running_var) if b is not None]
        if x.dtype.kind != "f" or any(a.dtype != x.dtype for a in arrays):
            raise TypeError(
                f"SyncBatchNorm got a {x.dtype} input, but its parameters and buffers are "
                f"{sorted({str(a.dtype) for a in arrays})}; convert one of them (module.to(dtype=...))"
            )

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group: ProcessGroup | None = None) -> Module:
        """Replace every BatchNorm2d in ``module``'s tree by a SyncBatchNorm; returns the new tree.

        The new layers take over the old ones' Parameters and buffers (the
        same objects, as in PyTorch: an optimizer built before still holds
        them) and their train/eval mode. ``module`` itself is changed in
        place, unless it is a BatchNorm2d: then the new layer is returned.
        """
        return _convert(cls, module, process_group, {})


def _convert(cls: type, module: Module, group: ProcessGroup | None, done: dict) -> Module:
    if id(module) in done:  # a layer shared by two parents is converted once
        return done[id(module)]
    if isinstance(module, BatchNorm2d) and not isinstance(module, cls):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group=group)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
    else:
        new = module
        # Module keeps its children in `_modules`; walking it (not named_children) also
        # reaches a child registered under two names.
        for name, child in list(module._modules.items()):
            if child is not None:
                module.add_module(name, _convert(cls, child, group, done))
    done[id(module)] = new
    return new

