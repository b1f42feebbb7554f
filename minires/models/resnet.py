"""ResNets and their plain twins, for CIFAR-10 (section 4.2) and ImageNet (section 4.1).

Both families share one skeleton, :class:`ResNet`::

    stem        conv1 -> bn1 -> relu (-> maxpool, ImageNet stem only)
    layer1..K   stages of blocks; every stage after the first halves H and W
                (stride 2 in its first block) and doubles the width
    head        avgpool (global) -> flatten -> fc

* CIFAR family (depth ``6n + 2``): a 3x3 stem with 16 filters, three stages
  of ``n`` basic blocks (``2n`` layers each) with 16, 32, 64 filters on 32x32,
  16x16 and 8x8 maps, option-A shortcuts. ``1 + 3 * 2n + 1 = 6n + 2`` layers.
* ImageNet family: a 7x7 stride-2 stem with 64 filters and a 3x3 stride-2
  max pool, four stages with 64, 128, 256, 512 filters (times 4 at the
  output of bottleneck blocks), option-B shortcuts as torchvision.
  ``cifar_stem=True`` swaps in a 3x3 stride-1 stem without the max pool, for
  32x32 inputs.

A plain network (:class:`PlainNet`) is the same skeleton built from the plain
blocks: same depth, width and (against option A) parameters, no shortcuts.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so a state dict moves between minires and
PyTorch by name. Initialisation follows He et al. 2015 as torchvision does it:
every conv ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, BN weight
1 and bias 0, the fc layer PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np

from .. import nn
from ..nn import init
from ..tensor import Tensor
from .blocks import BasicBlock, Block, Bottleneck, PlainBlock, PlainBottleneck
from .registry import register

__all__ = [
    "ResNet", "PlainNet", "resnet_cifar", "plain_cifar", "cifar_depths",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
]

STEMS = ("cifar", "imagenet")
_RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)
_PLAIN_BLOCKS = (PlainBlock, PlainBottleneck)


class ResNet(nn.Module):
    """A network of stages of blocks (see the module docstring for the layout).

    Args:
        block: the block class (:class:`BasicBlock`, :class:`Bottleneck`, or
            for :class:`PlainNet` :class:`PlainBlock`, :class:`PlainBottleneck`).
        layers: number of blocks per stage, e.g. ``[3, 3, 3]`` (ResNet-20) or
            ``[3, 4, 6, 3]`` (ResNet-34/50).
        num_classes: outputs of the final fc layer.
        width: filters of the stem and of stage 1; stage ``i`` has ``width * 2**i``.
        stem: "cifar" (3x3 stride 1, no max pool) or "imagenet" (7x7 stride 2, 3x3/2 max pool).
        in_channels: channels of the input images.
        zero_init_residual: start every residual branch's last BN with weight
            0, so each block begins as the identity (Goyal et al. 2017).
        seed: seed of the initialisation; ``None`` uses minires.nn.init's global
            generator (set it with ``init.manual_seed``).
        arch: the model's name ("resnet56"), shown by :func:`minires.summary`.
        **block_kwargs: passed to every block (``shortcut``, ``stride_in_1x1``).

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes)`` logits.
    """

    def __init__(
        self,
        block: type,
        layers: Sequence[int],
        num_classes: int = 1000,
        width: int = 64,
        stem: str = "imagenet",
        in_channels: int = 3,
        zero_init_residual: bool = False,
        seed: int | None = None,
        arch: str | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not layers or any(not isinstance(n, (int, np.integer)) or n < 1 for n in layers):
            raise ValueError(f"layers must be a non-empty list of positive block counts, got {list(layers)!r}")
        for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._check_block(block, zero_init_residual)
        self.arch = arch if arch is not None else type(self).__name__.lower()
        self.stem, self.in_channels, self.num_classes = stem, in_channels, num_classes

        if stem == "imagenet":
            # A large stride-2 kernel and a max pool cut 224x224 to 56x56 before
            # the first block: most of the compute then runs on small maps.
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        planes_in = width
        self.num_stages = len(layers)
        for i, count in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(int(count)):
                blocks.append(block(planes_in, planes, stride if j == 0 else 1, **block_kwargs))
                planes_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes_in, num_classes)
        self.reset_parameters(seed=seed, zero_init_residual=zero_init_residual)

    def _check_block(self, block: type, zero_init_residual: bool) -> None:
        if block not in _RESIDUAL_BLOCKS:
            allowed = ", ".join(b.__name__ for b in _RESIDUAL_BLOCKS)
            raise ValueError(f"ResNet needs a residual block ({allowed}), got {block!r}; plain blocks go in PlainNet")

    def reset_parameters(self, seed: int | None = None, zero_init_residual: bool = False) -> None:
        """(Re)initialise every parameter and BN statistic; same ``seed``, same weights.

        Convs: He normal with ``std = sqrt(2 / fan_out)``, ``fan_out = C_out * kH * kW``
        (torchvision's choice: it preserves the variance of the *gradient* in the
        backward pass, where fan-in would preserve the forward activations; with
        BN after every conv either works). BN: weight 1, bias 0, running mean 0,
        running variance 1. fc: ``U(-1/sqrt(in), 1/sqrt(in))`` for weight and bias.
        """
        gen = init.seeded_generator(seed) if seed is not None else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                if module.bias is not None:
                    init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                init.ones_(module.weight)
                init.zeros_(module.bias)
                module.reset_running_stats()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.weight, -bound, bound, generator=gen)
                if module.bias is not None:
                    init.uniform_(module.bias, -bound, bound, generator=gen)
        if zero_init_residual:
            for _, blk in self.blocks():
                init.zeros_(blk.last_bn.weight)

    def blocks(self) -> Iterator[tuple[str, Block]]:
        """``(name, block)`` for every block, input to output (``"layer1.0"``, ...)."""
        for name, module in self.named_modules():
            if isinstance(module, Block):
                yield name, module

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.arch} expects images of shape (N, {self.in_channels}, H, W), got {x.shape}")
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.flatten(self.avgpool(x))
        return self.fc(x)


class PlainNet(ResNet):
    """The plain twin of :class:`ResNet`: the same skeleton built from plain blocks.

    Takes the arguments of :class:`ResNet` with ``block`` one of
    :class:`PlainBlock` / :class:`PlainBottleneck` and no ``shortcut``.
    ``zero_init_residual=True`` is refused: without a shortcut, a block whose
    last BN outputs zeros outputs zeros, and so does the whole network.
    """

    def _check_block(self, block: type, zero_init_residual: bool) -> None:
        if block not in _PLAIN_BLOCKS:
            allowed = ", ".join(b.__name__ for b in _PLAIN_BLOCKS)
            raise ValueError(f"PlainNet needs a plain block ({allowed}), got {block!r}")
        if zero_init_residual:
            raise ValueError(
                "zero_init_residual=True would make every plain block output zeros (there is no shortcut "
                "to carry the input), so the network could not learn; it is only valid for ResNets"
            )


# ---------------------------------------------------------------------------
# CIFAR family: depth 6n + 2
# ---------------------------------------------------------------------------

_PAPER_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def cifar_depths() -> tuple[int, ...]:
    """The CIFAR depths of the paper's table 6 (any ``6n + 2``, n >= 1, is valid)."""
    return _PAPER_CIFAR_DEPTHS


def _cifar_blocks_per_stage(depth: Any) -> int:
    """``n`` for ``depth = 6n + 2``: a 3x3 stem, 3 stages of n two-conv blocks, and the fc layer."""
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, ...; the paper's: "
            f"{', '.join(map(str, _PAPER_CIFAR_DEPTHS))}), got {depth!r}"
        )
    return (int(depth) - 2) // 6


@register
def resnet_cifar(
    depth: int,
    shortcut: str = "A",
    num_classes: int = 10,
    width: int = 16,
    zero_init_residual: bool = False,
    seed: int | None = None,
) -> ResNet:
    """CIFAR ResNet of depth ``6n + 2`` (section 4.2): 3 stages of n basic blocks, ``width``, 2x, 4x filters.

    Shapes: ``(N, 3, 32, 32) -> (N, num_classes)`` (any H, W >= 1 works: the head pools globally).
    """
    n = _cifar_blocks_per_stage(depth)
    return ResNet(
        BasicBlock, [n, n, n], num_classes=num_classes, width=width, stem="cifar",
        zero_init_residual=zero_init_residual, seed=seed, arch=f"resnet{depth}", shortcut=shortcut,
    )


@register
def plain_cifar(depth: int, num_classes: int = 10, width: int = 16, seed: int | None = None) -> PlainNet:
    """Plain CIFAR network of depth ``6n + 2``: :func:`resnet_cifar` without the shortcuts.

    Shapes: ``(N, 3, 32, 32) -> (N, num_classes)``.
    """
    n = _cifar_blocks_per_stage(depth)
    return PlainNet(
        PlainBlock, [n, n, n], num_classes=num_classes, width=width, stem="cifar", seed=seed, arch=f"plain{depth}",
    )


# The paper's models by name. kwargs: those of resnet_cifar / plain_cifar except depth.


@register
def resnet20(**kwargs: Any) -> ResNet:
    """ResNet-20 (n = 3, 0.27M parameters, 8.75% CIFAR-10 test error in the paper)."""
    return resnet_cifar(20, **kwargs)


@register
def resnet32(**kwargs: Any) -> ResNet:
    """ResNet-32 (n = 5, 0.46M parameters, 7.51%)."""
    return resnet_cifar(32, **kwargs)


@register
def resnet44(**kwargs: Any) -> ResNet:
    """ResNet-44 (n = 7, 0.66M parameters, 7.17%)."""
    return resnet_cifar(44, **kwargs)


@register
def resnet56(**kwargs: Any) -> ResNet:
    """ResNet-56 (n = 9, 0.85M parameters, 6.97%)."""
    return resnet_cifar(56, **kwargs)


@register
def resnet110(**kwargs: Any) -> ResNet:
    """ResNet-110 (n = 18, 1.7M parameters, 6.43% best of 5 runs)."""
    return resnet_cifar(110, **kwargs)


@register
def resnet1202(**kwargs: Any) -> ResNet:
    """ResNet-1202 (n = 200, 19.4M parameters, 7.93%: deeper, but overfits CIFAR-10)."""
    return resnet_cifar(1202, **kwargs)


@register
def plain20(**kwargs: Any) -> PlainNet:
    """Plain-20: ResNet-20's layers without shortcuts."""
    return plain_cifar(20, **kwargs)


@register
def plain32(**kwargs: Any) -> PlainNet:
    """Plain-32."""
    return plain_cifar(32, **kwargs)


@register
def plain44(**kwargs: Any) -> PlainNet:
    """Plain-44."""
    return plain_cifar(44, **kwargs)


@register
def plain56(**kwargs: Any) -> PlainNet:
    """Plain-56: trains to a higher error than plain-20 (the degradation problem)."""
    return plain_cifar(56, **kwargs)


@register
def plain110(**kwargs: Any) -> PlainNet:
    """Plain-110: fails to train in the paper (over 60% error)."""
    return plain_cifar(110, **kwargs)


# ---------------------------------------------------------------------------
# ImageNet family
# ---------------------------------------------------------------------------


def _imagenet(
    net: type, block: type, layers: list[int], arch: str, num_classes: int, cifar_stem: bool, width: int,
    seed: int | None, **kwargs: Any,
) -> ResNet:
    return net(
        block, layers, num_classes=num_classes, width=width, stem="cifar" if cifar_stem else "imagenet",
        seed=seed, arch=arch, **kwargs,
    )


@register
def resnet18(
    num_classes: int = 1000, cifar_stem: bool = False, shortcut: str = "B", width: int = 64,
    zero_init_residual: bool = False, seed: int | None = None,
) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(
        ResNet, BasicBlock, [2, 2, 2, 2], "resnet18", num_classes, cifar_stem, width, seed,
        shortcut=shortcut, zero_init_residual=zero_init_residual,
    )


@register
def resnet34(
    num_classes: int = 1000, cifar_stem: bool = False, shortcut: str = "B", width: int = 64,
    zero_init_residual: bool = False, seed: int | None = None,
) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(
        ResNet, BasicBlock, [3, 4, 6, 3], "resnet34", num_classes, cifar_stem, width, seed,
        shortcut=shortcut, zero_init_residual=zero_init_residual,
    )


@register
def resnet50(
    num_classes: int = 1000, cifar_stem: bool = False, shortcut: str = "B", width: int = 64,
    zero_init_residual: bool = False, stride_in_1x1: bool = False, seed: int | None = None,
) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(
        ResNet, Bottleneck, [3, 4, 6, 3], "resnet50", num_classes, cifar_stem, width, seed,
        shortcut=shortcut, zero_init_residual=zero_init_residual, stride_in_1x1=stride_in_1x1,
    )


@register
def resnet101(
    num_classes: int = 1000, cifar_stem: bool = False, shortcut: str = "B", width: int = 64,
    zero_init_residual: bool = False, stride_in_1x1: bool = False, seed: int | None = None,
) -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(
        ResNet, Bottleneck, [3, 4, 23, 3], "resnet101", num_classes, cifar_stem, width, seed,
        shortcut=shortcut, zero_init_residual=zero_init_residual, stride_in_1x1=stride_in_1x1,
    )


@register
def resnet152(
    num_classes: int = 1000, cifar_stem: bool = False, shortcut: str = "B", width: int = 64,
    zero_init_residual: bool = False, stride_in_1x1: bool = False, seed: int | None = None,
) -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(
        ResNet, Bottleneck, [3, 8, 36, 3], "resnet152", num_classes, cifar_stem, width, seed,
        shortcut=shortcut, zero_init_residual=zero_init_residual, stride_in_1x1=stride_in_1x1,
    )


@register
def plain18(num_classes: int = 1000, cifar_stem: bool = False, width: int = 64, seed: int | None = None) -> PlainNet:
    """Plain-18: ResNet-18's layers without shortcuts. Shapes: ``(N, 3, 224, 224) -> (N, num_classes)``."""
    return _imagenet(PlainNet, PlainBlock, [2, 2, 2, 2], "plain18", num_classes, cifar_stem, width, seed)


@register
def plain34(num_classes: int = 1000, cifar_stem: bool = False, width: int = 64, seed: int | None = None) -> PlainNet:
    """Plain-34: ResNet-34's layers without shortcuts (trains worse than plain-18 on ImageNet)."""
    return _imagenet(PlainNet, PlainBlock, [3, 4, 6, 3], "plain34", num_classes, cifar_stem, width, seed)
