"""Batch-wise image transforms for CIFAR: random crop, horizontal flip, normalisation.

The paper's CIFAR recipe (He et al. 2016, section 4.2): pad each 32x32 image
with 4 zero pixels on every side, take a random 32x32 crop of the 40x40
result, flip it horizontally with probability 1/2, and normalise the pixels.

Everything here works on a whole batch at once, ``(N, C, H, W)``, with no
Python loop over images: one random draw per image picks its crop offset and
whether it flips, then a single gather builds the batch. The code only uses
the array module of its input (``xp = get_array_module(batch)``), so a batch
already on the GPU is transformed by CuPy on the GPU.

Random numbers come from an explicit generator passed in by the caller
(``rng``, normally a ``numpy.random.Generator``), never from global state: the
same generator state gives the same augmentation, which is what makes a run
reproducible and a resumed run identical to an uninterrupted one. Only three
numbers per image are drawn (two offsets and a coin), so drawing them on the
CPU and copying them to the GPU costs a few kilobytes per batch and gives
bit-identical augmentation on both backends; the pixel work stays on the
device. A ``cupy.random.Generator`` is accepted too: anything with
``integers`` and ``random`` methods works.

Normalisation constants
-----------------------
``CIFAR10_MEAN`` and ``CIFAR10_STD`` are the per-channel mean and standard
deviation (over all 50,000 x 32 x 32 training pixels, on the 0..1 scale) of
the training set, computed with :func:`channel_stats` on the copy of CIFAR-10
this project is developed and tested against::

    mean = (0.49127, 0.48210, 0.44652)   std = (0.24543, 0.24286, 0.26073)

The often-quoted values for the original files are mean
(0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616): the same means,
standard deviations within 0.002 (the development copy was partly rebuilt
from JPEGs, which smooths away a little contrast). Either set gives inputs
with mean ~0 and std ~1 per channel, which is all normalisation is for.
Beware a third set, std (0.2023, 0.1994, 0.2010), seen in many repositories:
it averages per-image standard deviations, which is not the dataset's std.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..backend import device_of, get_array_module, to_device

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "channel_stats",
    "to_float",
    "normalize",
    "pad",
    "crop",
    "random_crop",
    "hflip",
    "random_hflip",
    "standard_augment",
]

# Rounded to 4 decimals from channel_stats(train_images); see the module docstring.
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_STD = (0.2454, 0.2429, 0.2607)


def _check_batch(batch: Any, name: str = "batch") -> None:
    if getattr(batch, "ndim", None) != 4:
        raise ValueError(f"{name} must be an (N, C, H, W) array, got shape {getattr(batch, 'shape', None)}")


def channel_stats(images: Any, chunk: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images, on the 0..1 scale.

    Args:
        images: ``(N, C, H, W)`` uint8.
        chunk: images per step, to bound memory.

    Returns:
        ``(mean, std)``, each a ``(C,)`` float64 NumPy array. ``std`` is the
        population standard deviation over all ``N*H*W`` pixels of a channel.

    The sums are accumulated in int64, which is exact for uint8 data
    (50,000 images x 1024 pixels x 255^2 is far below 2^63), so the only
    rounding is in the final division. Squares are formed in uint16
    (255^2 = 65025 < 2^16): a quarter of the memory traffic of int64.
    """
    _check_batch(images, "images")
    if images.dtype != np.uint8:
        raise TypeError(f"channel_stats expects uint8 images, got {images.dtype}")
    xp = get_array_module(images)
    n, c, h, w = images.shape
    total = xp.zeros(c, dtype=xp.int64)
    total_sq = xp.zeros(c, dtype=xp.int64)
    for start in range(0, n, chunk):
        part = images[start:start + chunk]
        total += part.sum(axis=(0, 2, 3), dtype=xp.int64)
        square = part.astype(xp.uint16)
        square *= square
        total_sq += square.sum(axis=(0, 2, 3), dtype=xp.int64)
    count = n * h * w
    total = np.asarray(to_device(total, "cpu"), dtype=np.float64)
    total_sq = np.asarray(to_device(total_sq, "cpu"), dtype=np.float64)
    mean = total / count
    var = total_sq / count - mean * mean
    return mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0


def to_float(batch: Any) -> Any:
    """uint8 pixels ``(N, C, H, W)`` -> float32 in ``[0, 1]``, same shape and device."""
    _check_batch(batch)
    xp = get_array_module(batch)
    if batch.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {batch.dtype}")
    return batch.astype(xp.float32) * xp.float32(1.0 / 255.0)


def normalize(batch: Any, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> Any:
    """Per-channel normalisation: ``(x - mean[c]) / std[c]`` with ``x`` on the 0..1 scale.

    Args:
        batch: ``(N, C, H, W)``, either uint8 pixels (divided by 255 here) or
            floats already on the 0..1 scale.
        mean, std: ``C`` numbers each (default: the CIFAR-10 constants).

    Returns:
        ``(N, C, H, W)`` float32 for uint8 input; floating input keeps its
        dtype (float64 stays float64 for gradient checks, float32 is never
        promoted).

    ``(x/255 - m)/s`` is rewritten as one multiply and one in-place add,
    ``x*a + b`` with ``a = 1/(255 s)`` and ``b = -m/s`` precomputed per
    channel: two passes over the batch instead of four.
    """
    _check_batch(batch)
    xp = get_array_module(batch)
    c = batch.shape[1]
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(f"mean and std need {c} values (one per channel), got {mean.shape} and {std.shape}")
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if batch.dtype == np.uint8:
        out_dtype, pixel_scale = np.float32, 255.0
    elif batch.dtype.kind == "f":
        out_dtype, pixel_scale = batch.dtype, 1.0
    else:
        raise TypeError(f"normalize expects uint8 or floating pixels, got {batch.dtype}")
    # The constants are computed in float64 once, then cast to the output dtype,
    # so the per-pixel arithmetic happens entirely in float32 for float32 output.
    scale = xp.asarray((1.0 / (pixel_scale * std)).reshape(1, c, 1, 1), dtype=out_dtype)
    shift = xp.asarray((-mean / std).reshape(1, c, 1, 1), dtype=out_dtype)
    # uint8 * float32 -> float32 by the usual promotion rules: no separate astype pass.
    out = batch * scale
    out += shift
    return out


def _check_padding(padding: Any) -> None:
    if isinstance(padding, bool) or int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")


def pad(batch: Any, padding: int) -> Any:
    """Zero-pad the two spatial axes: ``(N, C, H, W)`` -> ``(N, C, H+2p, W+2p)``."""
    _check_batch(batch)
    _check_padding(padding)
    padding = int(padding)
    xp = get_array_module(batch)
    n, c, h, w = batch.shape
    out = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=batch.dtype)
    out[:, :, padding:padding + h, padding:padding + w] = batch
    return out


def _on_device_of(batch: Any, values: Any) -> Any:
    """The random draws, as an integer/bool array on the batch's device."""
    return to_device(values, device_of(batch))


def crop(padded: Any, offsets: Any, size: tuple[int, int]) -> Any:
    """Cut one window per image: ``out[i] = padded[i, :, y_i:y_i+h, x_i:x_i+w]``.

    Args:
        padded: ``(N, C, Hp, Wp)``.
        offsets: ``(N, 2)`` integers ``(y_i, x_i)`` with
            ``0 <= y_i <= Hp-h`` and ``0 <= x_i <= Wp-w``, on the batch's device.
        size: ``(h, w)`` of the windows.

    Returns:
        ``(N, C, h, w)``, a new contiguous array.

    How: ``sliding_window_view`` presents every ``h x w`` window of every
    image as an ``(N, C, Hp-h+1, Wp-w+1, h, w)`` view without copying; indexing
    it with ``[i, :, y_i, x_i]`` picks one window per image in a single gather.
    Array libraries without ``sliding_window_view`` (older CuPy) get the same
    result from explicit index arrays (:func:`_crop_by_index`).
    """
    _check_batch(padded, "padded")
    xp = get_array_module(padded)
    h, w = size
    n = padded.shape[0]
    ys, xs = offsets[:, 0], offsets[:, 1]
    stride_tricks = getattr(getattr(xp, "lib", None), "stride_tricks", None)
    window_view = getattr(stride_tricks, "sliding_window_view", None)
    if window_view is None:
        return _crop_by_index(padded, offsets, size)
    windows = window_view(padded, (h, w), axis=(2, 3))
    # Advanced indices on axes 0, 2, 3 separated by a slice: NumPy/CuPy put the
    # broadcast index axis (N) first, then the sliced C, then the window (h, w).
    return windows[xp.arange(n), :, ys, xs]


def _crop_by_index(padded: Any, offsets: Any, size: tuple[int, int]) -> Any:
    """Same as :func:`crop` with four broadcast index arrays (N,1,1,1)(1,C,1,1)(N,1,h,1)(N,1,1,w)."""
    xp = get_array_module(padded)
    h, w = size
    n, c = padded.shape[:2]
    rows = offsets[:, 0:1] + xp.arange(h)  # (N, h): the padded rows each image keeps
    cols = offsets[:, 1:2] + xp.arange(w)  # (N, w)
    return padded[
        xp.arange(n)[:, None, None, None],
        xp.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop(batch: Any, rng: Any, padding: int = 4) -> Any:
    """Zero-pad by ``padding`` and cut a random window of the original size from each image.

    Args:
        batch: ``(N, C, H, W)``, any dtype (uint8 before normalisation is cheapest).
        rng: a ``numpy.random.Generator`` (or anything with ``integers``).
        padding: pixels of zeros added on every side (4 in the paper).

    Returns:
        ``(N, C, H, W)``, same dtype and device. Image ``i`` is shifted by
        ``(padding - y_i, padding - x_i)`` with ``y_i, x_i`` uniform in
        ``0..2*padding``: pixels shifted out are dropped, zeros shifted in.
    """
    _check_batch(batch)
    _check_padding(padding)
    n, _, h, w = batch.shape
    offsets = _on_device_of(batch, rng.integers(0, 2 * padding + 1, size=(n, 2)))
    return crop(pad(batch, padding), offsets, (h, w))


def hflip(batch: Any) -> Any:
    """Mirror every image left-right: ``batch[..., ::-1]`` (a view)."""
    _check_batch(batch)
    return batch[..., ::-1]


def random_hflip(batch: Any, rng: Any, p: float = 0.5) -> Any:
    """Flip each image horizontally with probability ``p`` (one coin per image).

    ``(N, C, H, W)`` -> ``(N, C, H, W)``, same dtype and device, a new array.
    """
    _check_batch(batch)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {p!r}")
    xp = get_array_module(batch)
    flip = _on_device_of(batch, rng.random(batch.shape[0]) < p)
    # One select over the whole batch instead of flipping images one by one.
    return xp.where(flip[:, None, None, None], batch[..., ::-1], batch)


def standard_augment(batch: Any, rng: Any, padding: int = 4, flip_p: float = 0.5) -> Any:
    """The paper's CIFAR augmentation: pad 4 + random crop, then random horizontal flip.

    ``(N, C, H, W)`` -> ``(N, C, H, W)``, same dtype and device. This is the
    ``augment`` to hand to :class:`minires.data.DataLoader` for training; it
    draws the crop offsets first, then the flips, from ``rng``.
    """
    return random_hflip(random_crop(batch, rng, padding), rng, flip_p)
