"""minires.nn.init: scales (checked statistically), in-place writes, seeding, errors.

Statistical tolerances come from the sample size n: the sample mean of n
draws has standard error sigma/sqrt(n), the sample standard deviation of a
normal about sigma/sqrt(2n). Asserting within 6 standard errors makes a false
failure (for an unlucky seed) about a one-in-a-billion event, while a wrong
gain or fan (a factor sqrt(2) or more) is off by hundreds of standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minires
from minires import nn
from minires.nn import init


def _param(shape, dtype=np.float32):
    return nn.Parameter(np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize(
    "mode, nonlinearity, a, fan_index",
    [("fan_in", "relu", 0, 0), ("fan_out", "relu", 0, 1), ("fan_in", "leaky_relu", 0.2, 0), ("fan_out", "tanh", 0, 1)],
)
def test_kaiming_normal_std_matches_gain_over_sqrt_fan(mode, nonlinearity, a, fan_index):
    w = _param((64, 32, 3, 3))
    fan = (32 * 9, 64 * 9)[fan_index]
    gain = {"relu": math.sqrt(2), "leaky_relu": math.sqrt(2 / (1 + a * a)), "tanh": 5 / 3}[nonlinearity]
    expected_std = gain / math.sqrt(fan)
    out = init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nonlinearity, generator=np.random.default_rng(0))
    assert out is w and w.dtype == np.float32
    values = w.data.astype(np.float64).ravel()
    n = values.size
    assert abs(values.mean()) < 6 * expected_std / math.sqrt(n)
    assert abs(values.std() - expected_std) < 6 * expected_std / math.sqrt(2 * n)


def test_kaiming_uniform_bound_and_variance():
    w = _param((128, 64), dtype=np.float64)
    init.kaiming_uniform_(w, nonlinearity="relu", generator=np.random.default_rng(1))
    bound = math.sqrt(2) * math.sqrt(3 / 64)  # gain * sqrt(3 / fan_in)
    values = w.data.ravel()
    n = values.size
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.99 * bound  # the range is used, not a narrower one
    # U(-b, b): variance b^2/3, and the sample variance has standard error b^2 * sqrt((1/5 - 1/9) / n).
    assert abs(values.var() - bound**2 / 3) < 6 * bound**2 * math.sqrt((1 / 5 - 1 / 9) / n)


def test_default_leaky_relu_with_a0_is_relu():
    w1, w2 = _param((16, 8, 3, 3)), _param((16, 8, 3, 3))
    init.kaiming_normal_(w1, generator=np.random.default_rng(5))
    init.kaiming_normal_(w2, nonlinearity="relu", generator=np.random.default_rng(5))
    np.testing.assert_array_equal(w1.data, w2.data)


def test_uniform_and_normal_statistics():
    t = _param((200, 100), dtype=np.float64)
    init.normal_(t, mean=2.0, std=0.5, generator=np.random.default_rng(2))
    n = t.size
    assert abs(t.data.mean() - 2.0) < 6 * 0.5 / math.sqrt(n)
    assert abs(t.data.std() - 0.5) < 6 * 0.5 / math.sqrt(2 * n)
    init.uniform_(t, -3.0, 1.0, generator=np.random.default_rng(3))
    assert t.data.min() >= -3.0 and t.data.max() <= 1.0
    half_width = 2.0
    assert abs(t.data.mean() + 1.0) < 6 * half_width / math.sqrt(3 * n)


def test_constant_zeros_ones_write_in_place_and_keep_dtype():
    t = _param((3, 4), dtype=np.float64)
    array = t.data
    assert init.constant_(t, 2.5) is t and t.data is array and (t.data == 2.5).all()
    init.zeros_(t)
    assert not t.data.any() and t.dtype == np.float64
    init.ones_(t)
    assert (t.data == 1).all()
    counter = minires.Tensor(np.array([5, 6], dtype=np.int64))
    init.zeros_(counter)  # integer tensors may be filled with constants
    assert counter.dtype == np.int64 and not counter.data.any()


def test_random_inits_write_in_place_and_keep_dtype():
    for dtype in (np.float32, np.float64):
        w = _param((8, 4, 3, 3), dtype=dtype)
        array = w.data
        init.kaiming_uniform_(w, a=math.sqrt(5))
        assert w.data is array and w.dtype == dtype and w.data.any()
        init.normal_(w)
        assert w.data is array and w.dtype == dtype


def test_same_generator_seed_same_values_and_dtype_independent():
    a, b = _param((10, 10)), _param((10, 10), dtype=np.float64)
    init.kaiming_normal_(a, generator=np.random.default_rng(7))
    init.kaiming_normal_(b, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data.astype(np.float32))
    c = _param((10, 10))
    init.kaiming_normal_(c, generator=np.random.default_rng(8))
    assert not np.array_equal(a.data, c.data)


def test_manual_seed_controls_the_default_generator_and_layer_construction():
    init.manual_seed(123)
    first = nn.Conv2d(3, 4, 3).state_dict()
    init.manual_seed(123)
    second = nn.Conv2d(3, 4, 3).state_dict()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    third = nn.Conv2d(3, 4, 3).state_dict()  # the generator moved on
    assert not np.array_equal(first["weight"], third["weight"])
    gen = init.manual_seed(9)
    assert gen is init.default_generator()
    with pytest.raises(ValueError, match="non-negative integer"):
        init.manual_seed(-1)


def test_explicit_generator_does_not_consume_the_default_one():
    init.manual_seed(4)
    expected = init.default_generator().bit_generator.state
    init.normal_(_param((5,)), generator=np.random.default_rng(0))
    assert init.default_generator().bit_generator.state == expected


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=5))
def test_fan_in_and_fan_out(shape):
    receptive = int(np.prod(shape[2:]))
    assert init.fan_in_and_fan_out(_param(tuple(shape))) == (shape[1] * receptive, shape[0] * receptive)


def test_calculate_gain_values():
    assert init.calculate_gain("linear") == init.calculate_gain("conv2d") == init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("relu") == math.sqrt(2.0)
    assert init.calculate_gain("tanh") == 5.0 / 3
    assert init.calculate_gain("leaky_relu") == math.sqrt(2.0 / (1 + 0.01**2))
    assert init.calculate_gain("leaky_relu", 0.2) == math.sqrt(2.0 / 1.04)
    assert init.calculate_gain("selu") == 0.75


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.kaiming_normal_(_param((5,)))
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_normal_(_param((5, 5)), mode="fan_avg")
    with pytest.raises(ValueError, match="only used with nonlinearity='leaky_relu'"):
        init.kaiming_normal_(_param((5, 5)), a=0.1, nonlinearity="relu")
    with pytest.raises(ValueError, match="unsupported nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(TypeError, match="floating-point"):
        init.normal_(minires.Tensor(np.zeros(3, dtype=np.int64)))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        init.normal_(_param((3,)), generator=42)
    with pytest.raises(TypeError, match="minires Tensor"):
        init.zeros_(np.zeros(3))
    with pytest.raises(ValueError, match="zero fan_in"):
        init.kaiming_normal_(_param((4, 0)))


def test_gain_and_fans_match_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    for name, param in [("relu", None), ("tanh", None), ("leaky_relu", None), ("leaky_relu", 0.3), ("selu", None),
                        ("conv2d", None), ("sigmoid", None)]:
        assert init.calculate_gain(name, param) == pytest.approx(torch.nn.init.calculate_gain(name, param), rel=1e-15)
    for shape in [(7, 3), (16, 8, 3, 3), (5, 2, 1, 4, 2)]:
        expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
        assert init.fan_in_and_fan_out(_param(shape)) == tuple(expected)
