"""The building blocks of ResNets and of their plain twins.

Four blocks, two shapes of residual branch times "with / without the shortcut":

=================  ======================================  ==============
                   residual: ``relu(F(x) + s(x))``         plain: ``relu(F(x))``
=================  ======================================  ==============
two 3x3 convs      :class:`BasicBlock`                     :class:`PlainBlock`
1x1, 3x3, 1x1      :class:`Bottleneck`                     :class:`PlainBottleneck`
=================  ======================================  ==============

A plain block has exactly the layers (and, against option-A shortcuts, the
parameters) of its residual twin; the only difference is the addition. That
is what makes the paper's comparison (figure 4 and 6) a controlled experiment.

Every block derives from :class:`Block`, which lets diagnostics look at the
tensors flowing through it without changing the model ("taps", below).

Attribute names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``,
``conv3``, ``bn3``, ``downsample``) so state-dict keys match PyTorch's.
"""

from __future__ import annotations

from typing import Callable

from .. import nn
from ..tensor import RemovableHandle, Tensor
from .shortcuts import make_shortcut

__all__ = ["Block", "BasicBlock", "Bottleneck", "PlainBlock", "PlainBottleneck"]

TapFn = Callable[["Block", str, Tensor], None]


class Block(nn.Module):
    """Base class of the blocks: a module with *taps* for diagnostics.

    A block reports the tensors it computes at fixed points of its forward
    pass by calling ``self._tap(name, tensor)``:

    * ``"input"``    -- ``x``, what enters the block;
    * ``"residual"`` -- the branch output ``F(x)``, after its last BN and
      before the addition (plain blocks: before the final ReLU, the same
      position, although there is nothing to add it to);
    * ``"shortcut"`` -- ``s(x)``, what is added to ``F(x)`` (residual blocks only);
    * ``"output"``   -- ``y``, what leaves the block.

    ``add_tap(fn)`` registers ``fn(block, name, tensor)``; it is called with
    the live tensors of the graph, so a gradient monitor can, for example,
    ``tensor.register_hook(...)`` on the "input" to see ``dL/dx`` of every
    block. With no tap registered ``_tap`` returns after one attribute check.

    The forwards below are the whole computation. Under the fast kernel set
    (:mod:`minires.dispatch`), :mod:`minires.fast.fused` may run a training
    block with each batch norm fused with its ReLU (and the addition): the
    same numbers and gradients, and only when no tap is registered.
    """

    def __init__(self) -> None:
        super().__init__()
        self._taps: list[TapFn] = []

    def add_tap(self, fn: TapFn) -> RemovableHandle:
        """Call ``fn(block, name, tensor)`` at each tap point of every forward pass.

        Returns a handle; ``handle.remove()`` unregisters ``fn``.
        """
        if not callable(fn):
            raise TypeError(f"add_tap expects a callable fn(block, name, tensor), got {type(fn).__name__}")
        self._taps.append(fn)
        return RemovableHandle(self._taps, fn)

    def _tap(self, name: str, tensor: Tensor) -> None:
        if not self._taps:
            return
        for fn in list(self._taps):  # a copy: a tap may remove itself
            fn(self, name, tensor)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # Padding 1 keeps H x W at stride 1 and gives ceil(H/2) at stride 2. No bias:
    # the BN that follows every conv subtracts the mean, cancelling any bias.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _check_stride(stride: int) -> None:
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")


class _BasicBranch(Block):
    """The layers shared by :class:`BasicBlock` and :class:`PlainBlock`."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        _check_stride(stride)
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the branch (``zero_init_residual`` zeroes its weight)."""
        return self.bn2


class BasicBlock(_BasicBranch):
    """Residual basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    Args:
        in_planes: input channels.
        planes: output channels (expansion 1).
        stride: stride of the first 3x3 conv (2 halves H and W).
        shortcut: "A", "B" or "C" (see :mod:`minires.models.shortcuts`).

    Shapes: ``(N, in_planes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride))``.

    The shortcut module is ``block.shortcut``; it is registered under
    torchvision's name ``downsample`` (an ``Identity`` where torchvision has
    ``None``: no state, so the state-dict keys are the same).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__(in_planes, planes, stride)
        self.shortcut_option = shortcut
        self.downsample = make_shortcut(shortcut, in_planes, planes * self.expansion, stride)

    @property
    def shortcut(self) -> nn.Module:
        """The shortcut module ``s`` (Identity, PadShortcut or ProjectionShortcut)."""
        return self.downsample

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_planes, H, W) -> (N, planes * expansion, ceil(H/stride), ceil(W/stride))``."""
        self._tap("input", x)
        f = self._branch(x)
        self._tap("residual", f)
        s = self.downsample(x)
        self._tap("shortcut", s)
        y = self.relu(f + s)
        self._tap("output", y)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}, shortcut={self.shortcut_option!r}"


class PlainBlock(_BasicBranch):
    """Plain basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))))`` -- :class:`BasicBlock` minus the addition.

    Args:
        in_planes, planes, stride: as for :class:`BasicBlock`.

    Shapes: ``(N, in_planes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride))``.

    Same layers and parameters as a :class:`BasicBlock` with option-A
    shortcuts. What is missing matters for the gradient: a residual block has
    ``dy/dx = D (dF/dx + I)`` (``D`` the final ReLU's 0/1 mask), so part of
    the loss gradient reaches ``x`` through the identity ``I`` untouched by
    the block's weights. A plain block has only ``dy/dx = D dF/dx``: the
    gradient reaching an early layer is a product of every later block's
    Jacobian (its convolutions, its BN and its ReLU masks), and a product of
    many factors tends to shrink or grow geometrically with depth. That is
    the optimisation difficulty the paper's plain-vs-residual curves show.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_planes, H, W) -> (N, planes * expansion, ceil(H/stride), ceil(W/stride))``."""
        self._tap("input", x)
        f = self._branch(x)
        self._tap("residual", f)
        y = self.relu(f)
        self._tap("output", y)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}"


class _BottleneckBranch(Block):
    """The layers shared by :class:`Bottleneck` and :class:`PlainBottleneck`."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, stride_in_1x1: bool = False) -> None:
        super().__init__()
        _check_stride(stride)
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.stride_in_1x1 = bool(stride_in_1x1)
        # Where the stride goes decides how much of the input the block sees:
        # a strided 1x1 simply drops 3 of every 4 pixels before any 3x3 looks
        # at them (the paper, "v1"); a strided 3x3 (torchvision, "v1.5")
        # covers every pixel, costs more MACs and is about 0.5% more accurate.
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_planes, planes, s1)  # reduce
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, s3)  # the expensive 3x3 runs on the narrow width
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)  # restore
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the branch (``zero_init_residual`` zeroes its weight)."""
        return self.bn3


class Bottleneck(_BottleneckBranch):
    """Residual bottleneck block: 1x1 reduce, 3x3, 1x1 restore (x4), each with BN, plus ``s(x)``.

    Args:
        in_planes: input channels.
        planes: width of the 3x3 conv; the block outputs ``4 * planes`` channels.
        stride: 2 halves H and W (in the 3x3 by default, see ``stride_in_1x1``).
        shortcut: "A", "B" (default, as torchvision) or "C". Identity shortcuts
            matter most here: a projection on the wide (4 * planes) ends would
            cost about as much as the branch itself.
        stride_in_1x1: True puts the stride in the first 1x1 conv (the
            paper's original placement); False (default) in the 3x3, as torchvision.

    Shapes: ``(N, in_planes, H, W) -> (N, 4 * planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B", stride_in_1x1: bool = False
    ) -> None:
        super().__init__(in_planes, planes, stride, stride_in_1x1)
        self.shortcut_option = shortcut
        self.downsample = make_shortcut(shortcut, in_planes, planes * self.expansion, stride)

    @property
    def shortcut(self) -> nn.Module:
        """The shortcut module ``s`` (Identity, PadShortcut or ProjectionShortcut)."""
        return self.downsample

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_planes, H, W) -> (N, planes * expansion, ceil(H/stride), ceil(W/stride))``."""
        self._tap("input", x)
        f = self._branch(x)
        self._tap("residual", f)
        s = self.downsample(x)
        self._tap("shortcut", s)
        y = self.relu(f + s)
        self._tap("output", y)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.planes}, stride={self.stride}, shortcut={self.shortcut_option!r}, "
            f"stride_in_1x1={self.stride_in_1x1}"
        )


class PlainBottleneck(_BottleneckBranch):
    """Plain bottleneck: :class:`Bottleneck`'s three conv-BN layers without the addition.

    Args:
        in_planes, planes, stride, stride_in_1x1: as for :class:`Bottleneck`.

    Shapes: ``(N, in_planes, H, W) -> (N, 4 * planes, ceil(H/stride), ceil(W/stride))``.

    Same layers and parameters as a :class:`Bottleneck` with option-A
    shortcuts; only the addition is gone. Without it there is no identity
    term in ``dy/dx``: the gradient reaching earlier layers must pass through
    all three convolutions, BNs and ReLU masks of every later block, a product
    of many Jacobians that tends to vanish or explode as depth grows (see
    :class:`PlainBlock`).
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_planes, H, W) -> (N, planes * expansion, ceil(H/stride), ceil(W/stride))``."""
        self._tap("input", x)
        f = self._branch(x)
        self._tap("residual", f)
        y = self.relu(f)
        self._tap("output", y)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.planes}, stride={self.stride}, stride_in_1x1={self.stride_in_1x1}"
