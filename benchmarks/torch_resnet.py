"""The CIFAR ResNet of He et al. (2016), section 4.2, in plain PyTorch: the benchmarks' reference.

Same architecture as ``minires.models.resnet_cifar(depth, shortcut="A")``:
a 3x3 stem with ``width`` filters, three stages of ``n = (depth - 2) / 6``
basic blocks on 32x32, 16x16 and 8x8 maps (``width``, 2x, 4x filters),
option-A shortcuts (subsample by 2, zero channels split evenly between both
ends of the channel axis), global average pool, fc. Module names follow
torchvision (``conv1``, ``bn1``, ``layer1.0.conv2``, ``fc``), so
``load_state_dict(minires_model.state_dict())`` gives both libraries the same
weights (after converting the arrays to tensors).

Only benchmarks import this file: torch is never a dependency of minires.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["OptionAShortcut", "BasicBlock", "CifarResNet", "cifar_resnet", "load_minires_state"]


class OptionAShortcut(nn.Module):
    """``x[:, :, ::s, ::s]`` with zero channels in front and behind: parameter-free."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.before = (out_planes - in_planes) // 2
        self.after = out_planes - in_planes - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's pairs run from the last axis backwards: (W, H, C).
        return nn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        same = stride == 1 and in_planes == planes
        self.downsample = None if same else OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """(N, 3, H, W) -> (N, num_classes) logits."""

    def __init__(self, depth: int, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes_in = width
        for i in range(3):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes_in, planes, 2 if (i > 0 and j == 0) else 1))
                planes_in = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for CIFAR (20, 32, 44, 56, 110, ...), PyTorch's default initialisation."""
    return CifarResNet(depth, num_classes)


def load_minires_state(model: nn.Module, state: dict) -> None:
    """Copy a minires ``state_dict()`` (name -> NumPy array) into ``model``; every key must match."""
    tensors = {name: torch.as_tensor(value).clone() for name, value in state.items()}
    model.load_state_dict(tensors, strict=True)
