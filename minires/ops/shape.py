"""Operations that move elements around without changing their values.

Their backward passes move the gradient back the same way: reshape it back,
apply the inverse permutation, scatter it into the indexed positions, split it
along the concatenated axis, or cut the padding off.
"""

from __future__ import annotations

from typing import Any, Sequence

from .. import backend
from ..function import Function
from ..tensor import Tensor
from .axes import normalize_axis


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.in_shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(
                f"cannot reshape a tensor of shape {tuple(a.shape)} ({a.size} elements) into {shape}"
            ) from None

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.in_shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        if sorted(axes) != list(range(a.ndim)):
            raise ValueError(
                f"permute: {tuple(axes)} is not a permutation of the {a.ndim} axes of shape {tuple(a.shape)}"
            )
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        # The inverse permutation: where did each original axis go?
        inverse = [0] * len(ctx.axes)
        for new_pos, old_axis in enumerate(ctx.axes):
            inverse[old_axis] = new_pos
        return grad.transpose(inverse)


def _has_advanced_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(p, (int, slice, type(None), type(Ellipsis))) for p in parts)


class GetItem(Function):
    """``x[index]`` for basic (ints, slices, None, ...) and integer/boolean-array indexing.

    Backward writes the gradient into a zero array of the input's shape. With
    integer arrays an element can be picked several times (``x[[0, 0]]``), so
    the write must be an unbuffered scatter-ADD (``xp.add.at``), not an
    assignment, or the repeated picks would overwrite each other.
    """

    @staticmethod
    def forward(ctx, a, index):
        ctx.in_shape, ctx.in_dtype, ctx.index = a.shape, a.dtype, index
        try:
            return a[index]
        except IndexError as exc:
            raise IndexError(f"index {index!r} is invalid for a tensor of shape {tuple(a.shape)}: {exc}") from None

    @staticmethod
    def backward(ctx, grad):
        xp = backend.get_array_module(grad)
        out = xp.zeros(ctx.in_shape, dtype=grad.dtype)
        if _has_advanced_index(ctx.index):
            xp.add.at(out, ctx.index, grad)
        else:
            out[ctx.index] = grad  # basic indexing never selects an element twice
        return out


class Concatenate(Function):
    promotes = True  # float32 joined with int64 is float32, as for ``+``

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = backend.get_array_module(*arrays)
        ndim = arrays[0].ndim
        if ndim == 0:
            raise ValueError("concatenate: a 0-d tensor has no axis to join along; use stack")
        ax = normalize_axis(axis, ndim, "concatenate")
        for i, arr in enumerate(arrays):
            if arr.ndim != ndim or any(arr.shape[d] != arrays[0].shape[d] for d in range(ndim) if d != ax):
                raise ValueError(
                    f"concatenate along axis {axis}: tensor {i} has shape {tuple(arr.shape)}, incompatible "
                    f"with tensor 0 of shape {tuple(arrays[0].shape)}"
                )
        ctx.axis = ax
        ctx.sizes = [arr.shape[ax] for arr in arrays]
        return xp.concatenate(arrays, axis=ax)

    @staticmethod
    def backward(ctx, grad):
        pieces = []
        start = 0
        for size in ctx.sizes:
            index = [slice(None)] * grad.ndim
            index[ctx.axis] = slice(start, start + size)
            pieces.append(grad[tuple(index)])
            start += size
        return tuple(pieces)


class Stack(Function):
    promotes = True

    @staticmethod
    def forward(ctx, *arrays, axis=0):
        xp = backend.get_array_module(*arrays)
        for i, arr in enumerate(arrays):
            if arr.shape != arrays[0].shape:
                raise ValueError(
                    f"stack: tensor {i} has shape {tuple(arr.shape)} but tensor 0 has {tuple(arrays[0].shape)}"
                )
        ctx.axis = normalize_axis(axis, arrays[0].ndim, "stack", new_axis=True)
        return xp.stack(arrays, axis=ctx.axis)

    @staticmethod
    def backward(ctx, grad):
        return tuple(grad.take(i, axis=ctx.axis) for i in range(grad.shape[ctx.axis]))


class Pad(Function):
    """Constant padding; ``pad_width`` is NumPy's: one (before, after) pair per axis."""

    @staticmethod
    def forward(ctx, a, pad_width, value=0.0):
        xp = backend.get_array_module(a)
        if len(pad_width) != a.ndim or any(len(p) != 2 or min(p) < 0 for p in pad_width):
            raise ValueError(
                f"pad_width must give one non-negative (before, after) pair per axis of shape "
                f"{tuple(a.shape)}, got {pad_width!r}"
            )
        ctx.crop = tuple(slice(before, before + n) for (before, _), n in zip(pad_width, a.shape))
        if a.ndim == 0:
            return a.copy()  # no axis, nothing to pad (xp.pad rejects the empty pad_width)
        return xp.pad(a, pad_width, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.crop]


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """Same elements, new shape (one dimension may be -1)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(x, shape=tuple(int(s) for s in shape))


def permute(x: Tensor, *axes: Any) -> Tensor:
    """Reorder axes: ``permute(x, 0, 2, 3, 1)`` turns NCHW into NHWC."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    if len(axes) != x.ndim:
        raise ValueError(
            f"permute: got {len(axes)} axes {tuple(axes)} for a tensor of shape {x.shape} ({x.ndim} dimensions)"
        )
    order = tuple(normalize_axis(a, x.ndim, "permute") for a in axes)
    if len(set(order)) != len(order):
        raise ValueError(f"permute: repeated axis in {tuple(axes)}: each of the {x.ndim} axes must appear once")
    return Permute.apply(x, axes=order)


def transpose(x: Tensor, dim0: int = -2, dim1: int = -1) -> Tensor:
    """Swap two axes (PyTorch's ``transpose(dim0, dim1)``); by default the last two.

    Tensors with fewer than 2 dimensions accept the axes 0 and -1 (as in
    PyTorch): there is nothing to swap, the values come back unchanged.
    """
    d0, d1 = normalize_axis(dim0, x.ndim, "transpose"), normalize_axis(dim1, x.ndim, "transpose")
    axes = list(range(x.ndim))
    if x.ndim:
        axes[d0], axes[d1] = axes[d1], axes[d0]
    return Permute.apply(x, axes=tuple(axes))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes ``start_dim..end_dim`` (inclusive) into one, like ``torch.flatten``."""
    start, end = normalize_axis(start_dim, x.ndim, "flatten"), normalize_axis(end_dim, x.ndim, "flatten")
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    shape = x.shape
    merged = 1
    for n in shape[start:end + 1]:
        merged *= n
    return reshape(x, shape[:start] + (merged,) + shape[end + 1:])


def _unwrap_index(index: Any) -> Any:
    """Tensors used as indices become raw arrays (they are constants, not inputs)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def getitem(x: Tensor, index: Any) -> Tensor:
    return GetItem.apply(x, index=_unwrap_index(index))


def concatenate(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    if len(tensors) == 0:
        raise ValueError("concatenate needs at least one tensor")
    return Concatenate.apply(*tensors, axis=axis)


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    if len(tensors) == 0:
        raise ValueError("stack needs at least one tensor")
    return Stack.apply(*tensors, axis=axis)


def pad(x: Tensor, pad_width: Any, value: float = 0.0) -> Tensor:
    """Pad with a constant. ``pad_width``: an int (all sides of all axes), or one
    ``(before, after)`` pair per axis as in ``numpy.pad``."""
    if isinstance(pad_width, int):
        pad_width = ((pad_width, pad_width),) * x.ndim
    pad_width = tuple((int(b), int(a)) for b, a in pad_width)
    return Pad.apply(x, pad_width=pad_width, value=value)
