"""Batch transforms: crop stays inside the padded image, flips are flips, normalisation normalises."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minires import backend
from minires.data import transforms as T


def images(rng: np.random.Generator, n: int, c: int = 3, h: int = 32, w: int = 32) -> np.ndarray:
    # Values 1..255: never 0, so a zero in an output can only come from the padding.
    return rng.integers(1, 256, size=(n, c, h, w), dtype=np.uint8)


def find_offset(out: np.ndarray, padded: np.ndarray) -> list[tuple[int, int]]:
    """All (y, x) with out == padded[:, y:y+h, x:x+w], for one image (C, h, w) / (C, Hp, Wp)."""
    _, h, w = out.shape
    _, hp, wp = padded.shape
    return [
        (y, x)
        for y in range(hp - h + 1)
        for x in range(wp - w + 1)
        if np.array_equal(padded[:, y:y + h, x:x + w], out)
    ]


# ---------------------------------------------------------------------------
# Random crop
# ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 3),
    h=st.integers(2, 10),
    w=st.integers(2, 10),
    padding=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_is_a_window_of_the_padded_image(n, c, h, w, padding, seed):
    rng = np.random.default_rng(seed)
    x = images(rng, n, c, h, w)
    out = T.random_crop(x, np.random.default_rng(seed + 1), padding=padding)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), np.uint8)
    padded[:, :, padding:padding + h, padding:padding + w] = x
    for i in range(n):
        offsets = find_offset(out[i], padded[i])
        # One offset per image explains EVERY pixel of it: a consistent shift, and a
        # window that lies inside the padded image (find_offset only looks there).
        assert offsets, f"image {i} is not a {h}x{w} window of its padded input"


def test_crop_offsets_cover_all_positions_uniformly():
    rng = np.random.default_rng(0)
    n, p = 1620, 4  # 81 possible offsets, 20 expected per offset
    x = images(rng, n, 1, 6, 6)
    out = T.random_crop(x, np.random.default_rng(1), padding=p)
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    counts = np.zeros((2 * p + 1, 2 * p + 1), int)
    for i in range(n):
        (y, x_), = find_offset(out[i], padded[i])  # random pixels: the window is unique
        counts[y, x_] += 1
    assert counts.min() > 0, counts  # every shift of up to 4 pixels in both directions occurs
    # Chi-square with 80 degrees of freedom: mean 80, sd 12.6; 150 is > 5 sd away.
    chi2 = ((counts - 20.0) ** 2 / 20.0).sum()
    assert chi2 < 150, (chi2, counts)


def test_crop_with_zero_padding_is_identity(rng):
    x = images(rng, 4)
    np.testing.assert_array_equal(T.random_crop(x, rng, padding=0), x)


def test_crop_paths_agree(rng):
    # sliding_window_view gather == explicit index-array gather (the path for older CuPy)
    padded = images(rng, 7, 3, 12, 11)
    offsets = np.stack([rng.integers(0, 5, 7), rng.integers(0, 4, 7)], axis=1)
    a = T.crop(padded, offsets, (8, 8))
    b = T._crop_by_index(padded, offsets, (8, 8))
    np.testing.assert_array_equal(a, b)
    for i in range(7):
        y, x = offsets[i]
        np.testing.assert_array_equal(a[i], padded[i, :, y:y + 8, x:x + 8])
    assert a.flags.c_contiguous


def test_same_generator_state_same_crop(rng):
    x = images(rng, 16)
    a = T.random_crop(x, np.random.default_rng(5))
    b = T.random_crop(x, np.random.default_rng(5))
    c = T.random_crop(x, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------
# Flip
# ---------------------------------------------------------------------------


def test_hflip_mirrors_columns_and_is_an_involution(rng):
    x = images(rng, 3, 2, 5, 7)
    y = T.hflip(x)
    for j in range(7):
        np.testing.assert_array_equal(y[..., j], x[..., 6 - j])
    np.testing.assert_array_equal(T.hflip(y), x)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_random_hflip_flips_whole_images_with_probability_p(p):
    rng = np.random.default_rng(int(p * 10))
    n = 2000
    x = images(rng, n, 2, 4, 4)
    y = T.random_hflip(x, np.random.default_rng(3), p=p)
    same = np.array([np.array_equal(y[i], x[i]) for i in range(n)])
    flipped = np.array([np.array_equal(y[i], x[i, :, :, ::-1]) for i in range(n)])
    assert (same ^ flipped).all()  # each image is either untouched or exactly mirrored
    # Binomial(2000, p): sd <= 0.0112, so 0.05 is > 4 sd.
    assert abs(flipped.mean() - p) < 0.05
    # Flipping the flipped ones again restores the input.
    back = np.where(flipped[:, None, None, None], y[..., ::-1], y)
    np.testing.assert_array_equal(back, x)


def test_standard_augment_is_crop_then_flip(rng):
    x = images(rng, 64)
    out = T.standard_augment(x, np.random.default_rng(11))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    flips = 0
    for i in range(64):
        if find_offset(out[i], padded[i]):
            continue
        assert find_offset(out[i, :, :, ::-1], padded[i]), f"image {i} is neither a crop nor a flipped crop"
        flips += 1
    assert 0 < flips < 64
    np.testing.assert_array_equal(out, T.standard_augment(x, np.random.default_rng(11)))


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def test_normalize_gives_zero_mean_unit_std_on_data_with_the_constant_stats(rng):
    # Build float data (0..1 scale) whose per-channel mean/std are EXACTLY the constants.
    z = rng.standard_normal((50, 3, 8, 8))
    z = (z - z.mean(axis=(0, 2, 3), keepdims=True)) / z.std(axis=(0, 2, 3), keepdims=True)
    mean = np.array(T.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(T.CIFAR10_STD).reshape(1, 3, 1, 1)
    x = mean + std * z
    out = T.normalize(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, rtol=1e-10)
    out32 = T.normalize(x.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out32.std(axis=(0, 2, 3)), 1.0, rtol=1e-5)


def test_normalize_uint8_matches_the_formula_in_float32(rng):
    x = images(rng, 10)
    out = T.normalize(x, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    assert out.dtype == np.float32 and out.shape == x.shape
    ref = (x / 255.0 - np.array([0.1, 0.5, 0.9]).reshape(1, 3, 1, 1)) / np.array([0.2, 0.3, 0.4]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_to_float_scales_to_unit_interval(rng):
    x = images(rng, 4)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    y = T.to_float(x)
    assert y.dtype == np.float32 and y[0, 0, 0, 0] == 0.0 and y[0, 0, 0, 1] == 1.0
    np.testing.assert_allclose(y, x / 255.0, rtol=1e-6)


def test_channel_stats_matches_float64_reference(rng):
    x = images(rng, 23, 3, 5, 6)
    mean, std = T.channel_stats(x, chunk=7)  # chunks that do not divide N
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-9)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda x: T.normalize(x[0]), ValueError, "(N, C, H, W)"),
        (lambda x: T.normalize(x, mean=(0.5, 0.5), std=(1, 1)), ValueError, "3 values"),
        (lambda x: T.normalize(x, std=(1, 0, 1)), ValueError, "positive"),
        (lambda x: T.normalize(x.astype(np.int16)), TypeError, "int16"),
        (lambda x: T.to_float(x.astype(np.float32)), TypeError, "float32"),
        (lambda x: T.random_crop(x, np.random.default_rng(0), padding=-1), ValueError, "-1"),
        (lambda x: T.random_hflip(x, np.random.default_rng(0), p=1.5), ValueError, "1.5"),
        (lambda x: T.channel_stats(x.astype(np.float32)), TypeError, "float32"),
    ],
)
def test_bad_input_is_named(rng, call, error, words):
    with pytest.raises(error) as info:
        call(images(rng, 2))
    assert words in str(info.value)


# ---------------------------------------------------------------------------
# GPU and real data
# ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_augmentation_equals_cpu_augmentation(rng):
    if not backend.cupy_available():
        pytest.skip(f"no usable CUDA device: {backend.cupy_unavailable_reason()}")
    x = images(rng, 32)
    x_gpu = backend.to_device(x, "cuda")
    out_gpu = T.normalize(T.standard_augment(x_gpu, np.random.default_rng(4)))
    out_cpu = T.normalize(T.standard_augment(x, np.random.default_rng(4)))
    assert backend.device_of(out_gpu).type == "cuda" and out_gpu.dtype == np.float32
    np.testing.assert_allclose(backend.to_device(out_gpu, "cpu"), out_cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_constants_are_the_training_set_statistics():
    value = os.environ.get("MINIRES_DATA", "").strip()
    path = Path(value).expanduser() if value else None
    if path is None or not (path / "cifar-10-batches-py").is_dir():
        pytest.skip("needs the real CIFAR-10: set MINIRES_DATA to the directory containing cifar-10-batches-py/")
    from minires.data import load_cifar10

    mean, std = T.channel_stats(load_cifar10(path, download=False).train_images)
    # 4-decimal rounding of THIS copy's statistics; the original files differ by < 0.002 in std.
    np.testing.assert_allclose(mean, T.CIFAR10_MEAN, atol=2e-3)
    np.testing.assert_allclose(std, T.CIFAR10_STD, atol=2e-3)
