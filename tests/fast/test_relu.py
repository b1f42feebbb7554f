"""ReLU kernels on NumPy: threaded halves, memory layout, NaN, dtype.

The arithmetic is checked against PyTorch and by gradient checks in
tests/nn; these tests cover what the CPU kernel adds: the batch split over
the kernel threads and the channels-last output layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_threads import force_kernel_threads

from minires.fast import relu as K
from minires.fast.layout import is_channels_last
from minires.kernels import relu as R


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 3, 4, 2), (7, 6), (1, 2, 3, 3), (4,)])
def test_forward_and_backward_match_numpy_on_any_thread_count(rng, count, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::5] = 0.0  # the gradient at exactly 0 is 0
    g = rng.standard_normal(shape).astype(np.float32)
    with force_kernel_threads(count):
        y = K.relu_forward(x)
        dx = K.relu_backward(g, y)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(dx, np.where(x > 0, g, 0))
    assert y.dtype == dx.dtype == np.float32


def test_four_d_output_is_channels_last_and_gradient_follows_the_output(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    y = K.relu_forward(x)  # NCHW in, channels-last out
    assert is_channels_last(y) and not y.flags.c_contiguous
    y_cl = K.relu_forward(channels_last(x))
    assert y_cl.strides == channels_last(x).strides
    g = rng.standard_normal(x.shape)  # an NCHW gradient
    dx = K.relu_backward(g, y)
    assert dx.strides == y.strides
    np.testing.assert_array_equal(dx, np.where(x > 0, g, 0))


def test_nan_passes_forward_and_its_gradient_passes_backward():
    # PyTorch: relu(NaN) = NaN, and the gradient is zeroed only where y <= 0.
    x = np.array([[np.nan, -1.0, 2.0, 0.0]])
    g = np.array([[3.0, 4.0, 5.0, 6.0]])
    y = K.relu_forward(x)
    np.testing.assert_array_equal(y, [[np.nan, 0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(K.relu_backward(g, y), [[3.0, 0.0, 5.0, 0.0]])


def test_fast_relu_gives_the_reference_numbers(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    x[0, 0, 0, :3] = [0.0, np.nan, -0.0]
    g = rng.standard_normal(x.shape)
    with force_kernel_threads(2):
        y, dx = K.relu_forward(x), None
        dx = K.relu_backward(g, y)
    np.testing.assert_array_equal(y, R.relu_forward(x))
    np.testing.assert_array_equal(dx, R.relu_backward(g, R.relu_forward(x)))
