"""Shared by the block tests: random block parameters and the block configurations to check."""

from __future__ import annotations

import numpy as np

from minires import nn
from minires.models import BasicBlock, Bottleneck, PlainBlock, PlainBottleneck


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights AND random BN affine terms / running stats, so no factor is a trivial 1 or 0."""
    rng = np.random.default_rng(seed)
    for _, p in module.named_parameters():
        p.data[...] = rng.normal(0.0, 0.5, p.shape).astype(p.dtype)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.normal(0.0, 0.3, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.num_batches_tracked[...] = 1
    return module


GRADCHECK_CASES = [
    # (constructor, in_planes, planes, stride, kwargs)
    (BasicBlock, 2, 4, 2, {"shortcut": "A"}),
    (BasicBlock, 3, 3, 1, {"shortcut": "A"}),
    (BasicBlock, 2, 4, 2, {"shortcut": "B"}),
    (BasicBlock, 3, 3, 1, {"shortcut": "C"}),
    (PlainBlock, 2, 4, 2, {}),
    (Bottleneck, 4, 2, 2, {"shortcut": "A"}),
    (Bottleneck, 4, 2, 2, {"shortcut": "B"}),
    (Bottleneck, 8, 2, 1, {"shortcut": "C"}),
    (Bottleneck, 4, 2, 2, {"shortcut": "B", "stride_in_1x1": True}),
    (PlainBottleneck, 4, 2, 2, {}),
]
