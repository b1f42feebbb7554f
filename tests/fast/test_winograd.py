"""Winograd F(2x2, 3x3): the same convolution and gradients as the reference, used exactly where it applies.

float64, every element against the im2col reference (minires.kernels.conv),
forward and both gradients, with chunks that do not divide the batch and
with two kernel threads. The channel threshold is lowered in most tests so
that small problems exercise the method.
"""

from __future__ import annotations

import numpy as np
import pytest

from minires.fast import conv as K
from minires.fast import threads as T
from minires.fast import winograd as W
from minires.kernels import conv as R

GEOMETRY = ((1, 1), (1, 1), (1, 1))  # stride, padding, dilation


def assert_close(actual, expected, rtol=1e-12):
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture
def any_channels(monkeypatch):
    monkeypatch.setattr(W, "MIN_CHANNELS", 1)


@pytest.mark.parametrize(
    "n, c, c_out, h, w, bias, chunk_tiles, threads",
    [
        (1, 1, 1, 2, 2, False, 256, 1),  # one tile
        (3, 2, 5, 4, 6, True, 256, 1),  # not square, one chunk
        (5, 3, 2, 6, 4, True, 12, 1),  # chunks of 2 images: the last one smaller
        (4, 4, 3, 8, 8, False, 1, 2),  # one image per chunk, two threads
        (3, 5, 4, 2, 10, True, 5, 2),
    ],
)
def test_forward_and_both_gradients_match_the_reference(
    rng, monkeypatch, any_channels, n, c, c_out, h, w, bias, chunk_tiles, threads
):
    monkeypatch.setattr(W, "_CHUNK_TILES", chunk_tiles)
    monkeypatch.setenv("MINIRES_NUM_THREADS", str(threads))
    monkeypatch.setattr(T, "_MIN_PARALLEL_WORK", 0)  # thread even tiny problems
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((c_out, c, 3, 3))
    b = rng.standard_normal(c_out) if bias else None
    assert W.applies(x.shape, weight.shape, *GEOMETRY)
    y = K.conv2d_forward(x, weight, b, *GEOMETRY)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last, like every fast convolution
    assert_close(y, R.conv2d_forward(x, weight, b, *GEOMETRY))
    g = rng.standard_normal(y.shape)
    for needs in [(True, True, bias), (True, False, False), (False, True, False)]:
        got = K.conv2d_backward(x, weight, g, *GEOMETRY, needs_input_grad=needs)
        want = R.conv2d_backward(x, weight, g, *GEOMETRY, needs_input_grad=needs)
        for a, e in zip(got, want):
            assert (a is None) == (e is None)
            if e is not None:
                assert_close(a, e)


def test_reads_inputs_in_any_memory_layout(rng, any_channels):
    """NCHW-contiguous and channels-last inputs (the network's own layout) give the same numbers."""
    x = rng.standard_normal((2, 3, 4, 4))
    weight = rng.standard_normal((2, 3, 3, 3))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    want = R.conv2d_forward(x, weight, None, *GEOMETRY)
    assert_close(W.conv3x3(x, weight), want)
    assert_close(W.conv3x3(x_last, weight), want)


def test_float32_error_is_rounding(rng):
    """In float32 the transforms add rounding, nothing more: within a few units of float32 precision."""
    x = rng.standard_normal((2, 64, 8, 8)).astype(np.float32)
    weight = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    exact = R.conv2d_forward(x.astype(np.float64), weight.astype(np.float64), None, *GEOMETRY)
    y = W.conv3x3(x, weight)
    assert y.dtype == np.float32
    assert np.max(np.abs(y - exact)) < 1e-5 * np.max(np.abs(exact))


@pytest.mark.parametrize(
    "x_shape, w_shape, geometry, expected",
    [
        ((2, 64, 8, 8), (64, 64, 3, 3), GEOMETRY, True),  # ResNet-20's last stage
        ((2, 32, 16, 16), (32, 32, 3, 3), GEOMETRY, False),  # too few channels to pay
        ((2, 64, 8, 8), (32, 64, 3, 3), GEOMETRY, False),
        ((2, 64, 7, 8), (64, 64, 3, 3), GEOMETRY, False),  # odd height: tiles of 2 do not fit
        ((2, 64, 8, 8), (64, 64, 3, 3), ((2, 2), (1, 1), (1, 1)), False),  # stride 2
        ((2, 64, 8, 8), (64, 64, 3, 3), ((1, 1), (0, 0), (1, 1)), False),  # no padding
        ((2, 64, 8, 8), (64, 64, 3, 3), ((1, 1), (1, 1), (2, 2)), False),  # dilation
        ((2, 64, 8, 8), (64, 64, 1, 1), ((1, 1), (0, 0), (1, 1)), False),  # 1x1 kernel
    ],
)
def test_applies_only_to_3x3_stride_1_padding_1_on_even_images_with_many_channels(
    x_shape, w_shape, geometry, expected
):
    assert W.applies(x_shape, w_shape, *geometry) == expected


def test_the_fast_convolution_uses_it_where_it_applies_and_not_elsewhere(rng, monkeypatch):
    calls = []
    for name in ["conv3x3", "weight_grad3x3"]:
        original = getattr(W, name)
        spy = lambda *a, name=name, original=original, **k: calls.append(name) or original(*a, **k)  # noqa: E731
        monkeypatch.setattr(W, name, spy)
    x = rng.standard_normal((2, 64, 4, 4))
    weight = rng.standard_normal((64, 64, 3, 3)) / 24
    y = K.conv2d_forward(x, weight, None, *GEOMETRY)
    K.conv2d_backward(x, weight, np.ones_like(y), *GEOMETRY)
    assert calls == ["conv3x3", "conv3x3", "weight_grad3x3"]  # the forward, d x, d weight
    calls.clear()
    K.conv2d_forward(x[:, :, :3, :3], weight, None, *GEOMETRY)  # odd size: the direct method
    K.conv2d_forward(x[:, :32], weight[:32, :32], None, *GEOMETRY)  # 32 channels: direct
    assert calls == []
