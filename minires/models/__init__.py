"""Residual networks and their plain twins (He et al., "Deep Residual Learning", 2016).

* :mod:`.shortcuts` -- the shortcut branch: options A (zero padding), B and C (projections).
* :mod:`.blocks`    -- BasicBlock, Bottleneck and their plain twins, with diagnostic taps.
* :mod:`.resnet`    -- the CIFAR (depth 6n+2) and ImageNet families.
* :mod:`.registry`  -- ``create("resnet56", **kwargs)`` and ``names()``.

>>> from minires import models
>>> model = models.create("resnet20", seed=0)      # or models.resnet20(seed=0)
>>> models.names()[:3]
['plain110', 'plain18', 'plain20']
"""

from .blocks import BasicBlock, Block, Bottleneck, PlainBlock, PlainBottleneck
from .registry import create, names, register
from .resnet import (
    PlainNet,
    ResNet,
    cifar_depths,
    plain18,
    plain20,
    plain32,
    plain34,
    plain44,
    plain56,
    plain110,
    plain_cifar,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
    resnet1202,
    resnet_cifar,
)
from .shortcuts import SHORTCUT_OPTIONS, PadShortcut, ProjectionShortcut, make_shortcut

__all__ = [
    "Block", "BasicBlock", "Bottleneck", "PlainBlock", "PlainBottleneck",
    "PadShortcut", "ProjectionShortcut", "make_shortcut", "SHORTCUT_OPTIONS",
    "ResNet", "PlainNet", "resnet_cifar", "plain_cifar", "cifar_depths",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "create", "names", "register",
]
