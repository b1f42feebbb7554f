"""The shortcut branch of a residual block: options A, B and C of He et al. (2016).

A residual block computes ``y = relu(F(x) + s(x))``. When ``F`` keeps the shape
of its input, ``s`` is the identity and the block adds nothing but a free,
weight-free path for the gradient: ``dy/dx`` contains an identity term, so the
loss reaches ``x`` without passing through the block's weights.

When ``F`` halves the spatial size and multiplies the channel count (the first
block of a stage), ``x`` no longer has the shape of ``F(x)`` and ``s`` must
reshape it. The paper compares three choices (section 3.3 and table 3):

* **option A** -- still parameter-free: subsample the grid by the stride
  (``x[:, :, ::2, ::2]``) and append zero channels. The paper's CIFAR
  networks use it, so a ResNet has exactly as many parameters as its plain
  twin. We pad the new channels evenly on both sides of the channel axis
  (``planes // 4`` each side for a doubling), as the common PyTorch
  reproductions do; where the zeros go does not matter to the network, only
  to weight files moved between implementations.
* **option B** -- a 1x1 convolution with the stride, followed by batch norm
  (a "projection"), only where the shape changes; identity elsewhere.
  torchvision's ImageNet models use it, under the name ``downsample``.
* **option C** -- a projection on every shortcut, even where the identity
  would do. Slightly better on ImageNet (table 3) but more parameters and
  compute, and it takes away the pure identity path.

:func:`make_shortcut` picks the module for an option and a pair of shapes.
"""

from __future__ import annotations

from typing import Any

from .. import backend, nn
from ..function import Function
from ..tensor import Tensor

__all__ = ["SHORTCUT_OPTIONS", "PadShortcut", "ProjectionShortcut", "make_shortcut", "subsample_pad_channels"]

SHORTCUT_OPTIONS = ("A", "B", "C")


class SubsamplePadChannels(Function):
    """``x[:, :, ::s, ::s]`` with ``before`` zero channels in front and ``after`` behind.

    One Function rather than an indexing op followed by a pad op: the output
    is written once, and the backward pass is the whole story in two lines
    (take the gradient of the real channels, scatter it back onto the grid
    points that were kept; the padded channels and skipped points get zero).

    The output and the input gradient keep x's memory layout (``zeros_like``
    with a new shape keeps the order of the axes in memory): under the fast
    kernel set the activations are channels-last, and an NCHW result here
    would make ``F(x) + s(x)`` and every elementwise pass after it mix
    layouts, which is several times slower.
    """

    @staticmethod
    def forward(ctx, x, stride, before, after):
        xp = backend.get_array_module(x)
        sub = x[:, :, ::stride, ::stride]
        n, c, h, w = sub.shape
        out = xp.zeros_like(x, shape=(n, before + c + after, h, w))
        out[:, before : before + c] = sub
        ctx.save_for_backward(x)  # for its layout only (x stays alive anyway: the branch's conv keeps it)
        ctx.stride, ctx.before, ctx.channels = stride, before, c
        return out

    @staticmethod
    def backward(ctx, grad):
        xp = backend.get_array_module(grad)
        s = ctx.stride
        (x,) = ctx.saved_tensors
        grad_in = xp.zeros_like(x, dtype=grad.dtype)
        # Grid points skipped by the stride and the zero channels influenced
        # nothing, so their gradient is zero.
        grad_in[:, :, ::s, ::s] = grad[:, ctx.before:ctx.before + ctx.channels]
        return grad_in


def subsample_pad_channels(x: Tensor, stride: int, before: int, after: int) -> Tensor:
    """Option-A shortcut as a function.

    Args:
        x: ``(N, C, H, W)``.
        stride: keep every ``stride``-th row and column.
        before, after: number of zero channels added in front of / behind ``C``.

    Returns:
        ``(N, before + C + after, ceil(H / stride), ceil(W / stride))``; the
        spatial size matches a 3x3 convolution with padding 1 and this stride.
    """
    if x.ndim != 4:
        raise ValueError(f"option-A shortcut expects an NCHW tensor, got shape {x.shape}")
    if stride < 1 or before < 0 or after < 0:
        raise ValueError(f"option-A shortcut: invalid stride={stride}, before={before}, after={after}")
    return SubsamplePadChannels.apply(x, stride=int(stride), before=int(before), after=int(after))


class PadShortcut(nn.Module):
    """Option A where shapes change: subsample by ``stride``, zero-pad the channels. No parameters.

    Args:
        in_planes: channels of the input.
        out_planes: channels of the output (``>= in_planes``); the
            ``out_planes - in_planes`` zero channels are split evenly between
            the two ends of the channel axis (the extra one, if odd, at the end).
        stride: spatial subsampling factor.

    Shapes: ``(N, in_planes, H, W) -> (N, out_planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(
                f"option-A shortcut can only add channels (zero padding), got in_planes={in_planes} > "
                f"out_planes={out_planes}; use shortcut='B' or 'C' (a projection) instead"
            )
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride
        extra = out_planes - in_planes
        self.pad_before = extra // 2
        self.pad_after = extra - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_planes:
            raise ValueError(f"PadShortcut expects (N, {self.in_planes}, H, W), got shape {x.shape}")
        return subsample_pad_channels(x, self.stride, self.pad_before, self.pad_after)

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class ProjectionShortcut(nn.Sequential):
    """Options B and C: a 1x1 convolution with the stride, then batch norm.

    A :class:`~minires.nn.Sequential` of two modules so that its parameters
    are named ``0.weight`` (the conv) and ``1.weight`` / ``1.bias`` /
    ``1.running_mean`` ... (the BN), exactly torchvision's ``downsample.0`` and
    ``downsample.1``: weights then move between minires and PyTorch by name.

    Shapes: ``(N, in_planes, H, W) -> (N, out_planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        # No bias in the conv: the BN right after it has its own shift, which
        # would absorb any bias (the same reason every conv in a ResNet has none).
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )


def make_shortcut(option: Any, in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """The shortcut module for ``option`` ("A", "B" or "C") and a change of shape.

    Args:
        option: which shortcut (see the module docstring).
        in_planes, out_planes: channels entering the block and leaving its residual branch.
        stride: the block's stride.

    Returns:
        ``nn.Identity`` where no reshaping is needed (A and B), a
        :class:`PadShortcut` (A) or a :class:`ProjectionShortcut` (B where the
        shape changes, C always).
    """
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut must be one of {', '.join(map(repr, SHORTCUT_OPTIONS))}, got {option!r}")
    if stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    same_shape = stride == 1 and in_planes == out_planes
    if option == "C" or (option == "B" and not same_shape):
        return ProjectionShortcut(in_planes, out_planes, stride)
    if same_shape:
        return nn.Identity()
    return PadShortcut(in_planes, out_planes, stride)
