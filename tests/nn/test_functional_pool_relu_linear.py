"""relu, max/avg/adaptive pooling, linear and flatten: kernels and functional API.

Gradient checks run in float64 with a random upstream gradient. Inputs of the
non-smooth ops are drawn away from their kinks: ReLU inputs stay at least 0.1
from 0, max-pooling inputs are distinct by at least 0.01 (a finite-difference
step of 1e-6 can then never change which element wins).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F
from minires.fast import pooling as FP
from minires.kernels import pooling as P
from minires.kernels import relu as R


def torch_or_skip():
    return pytest.importorskip("torch", reason="torch is needed for the PyTorch parity checks")


@st.composite
def pool_cases(draw, max_side: int = 8, max_batch: int = 3, max_channels: int = 3):
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    hw = [draw(st.integers(max(1, kernel[a] - 2 * padding[a]), max_side)) for a in (0, 1)]
    return {"x": (n, c, hw[0], hw[1]), "kernel": kernel, "stride": stride, "padding": padding,
            "seed": draw(st.integers(0, 2**32 - 1))}


def distinct_values(shape, seed):
    """A random arrangement of values spaced at least 0.01 apart (no ties anywhere)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.01 + rng.uniform(0, 0.001, size) - size * 0.005).reshape(shape)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------


def away_from_zero(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)


@settings(max_examples=10)
@given(st.lists(st.integers(1, 4), min_size=0, max_size=4), st.integers(0, 2**32 - 1))
def test_relu_gradcheck(shape, seed):
    x = mr.Tensor(away_from_zero(tuple(shape), seed), requires_grad=True)
    assert mr.gradcheck(F.relu, [x], seed=seed)


def test_relu_parity_with_torch_including_zero_and_nan(rng):
    torch = torch_or_skip()
    x = rng.standard_normal((3, 4, 5, 5))
    x.flat[:4] = [0.0, -0.0, np.nan, np.inf]
    g = rng.standard_normal(x.shape)
    t = torch.tensor(x, requires_grad=True)
    ty = torch.relu(t)
    ty.backward(torch.from_numpy(g))
    xt = mr.Tensor(x, requires_grad=True)
    y = F.relu(xt)
    y.backward(g)
    np.testing.assert_array_equal(y.data, ty.detach().numpy())  # NaN in the same place
    np.testing.assert_array_equal(xt.grad, t.grad.numpy())


def test_relu_of_a_bool_tensor_is_an_error():
    with pytest.raises(TypeError, match="relu is not defined for bool tensors"):
        F.relu(mr.Tensor(np.array([True, False])))


def test_relu_kernels_keep_float32(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = R.relu_forward(x)
    assert y.dtype == np.float32
    assert R.relu_backward(x, y).dtype == np.float32
    np.testing.assert_array_equal(R.relu_backward(np.ones_like(x), y), (x > 0).astype(np.float32))


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------


@given(pool_cases())
def test_max_pool_fast_matches_reference(case):
    x = distinct_values(case["x"], case["seed"])
    args = (case["kernel"], case["stride"], case["padding"])
    y, argmax = FP.max_pool2d_forward(x, *args)
    y_ref, argmax_ref = P.max_pool2d_forward(x, *args)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    g = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape)
    np.testing.assert_allclose(
        FP.max_pool2d_backward(g, argmax, x.shape, *args),
        P.max_pool2d_backward(g, argmax_ref, x.shape, *args), rtol=1e-14, atol=1e-14,
    )


@settings(max_examples=12)
@given(pool_cases(max_side=7, max_batch=4, max_channels=5))
def test_max_pool_gradcheck(case):
    x = mr.Tensor(distinct_values(case["x"], case["seed"]), requires_grad=True)
    fn = lambda t: F.max_pool2d(t, case["kernel"], case["stride"], case["padding"])  # noqa: E731
    assert mr.gradcheck(fn, [x], seed=case["seed"])


@given(pool_cases())
def test_max_pool_parity_with_torch(case):
    torch = torch_or_skip()
    x = distinct_values(case["x"], case["seed"])
    g = np.random.default_rng(case["seed"] + 1)
    xt = mr.Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, case["kernel"], case["stride"], case["padding"])
    grad = g.standard_normal(y.shape)
    y.backward(grad)
    t = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(t, case["kernel"], case["stride"], case["padding"])
    ty.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(y.data, ty.detach().numpy())
    np.testing.assert_allclose(xt.grad, t.grad.numpy(), rtol=1e-14, atol=1e-14)


def test_max_pool_ties_nan_and_padding():
    x = np.array([[[[1.0, 1.0, -5.0], [0.5, np.nan, 2.0], [-1.0, -2.0, -3.0]]]])
    y, argmax = FP.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0))
    assert y[0, 0, 0, 0] != y[0, 0, 0, 0]  # NaN wins its windows ...
    assert argmax[0, 0, 0, 0] == 3  # ... at tap (1, 1)
    y2, argmax2 = FP.max_pool2d_forward(x[:, :, :1, :2], (1, 2), (1, 1), (0, 0))
    assert y2[0, 0, 0, 0] == 1.0 and argmax2[0, 0, 0, 0] == 0  # a tie goes to the first tap
    # -inf padding never wins, even against negative values.
    neg = -np.ones((1, 1, 2, 2))
    y3, _ = FP.max_pool2d_forward(neg, (3, 3), (1, 1), (1, 1))
    np.testing.assert_array_equal(y3, -np.ones((1, 1, 2, 2)))


def test_max_pool_overlapping_windows_sum_gradients():
    x = np.array([[[[0.0, 9.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    xt = mr.Tensor(x, requires_grad=True)
    y = F.max_pool2d(xt, 2, stride=1)
    y.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert xt.grad[0, 0, 0, 1] == 3.0  # the 9 wins both top windows: 1 + 2


# ---------------------------------------------------------------------------
# Average pooling
# ---------------------------------------------------------------------------


@given(pool_cases())
def test_avg_pool_fast_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"])
    args = (case["kernel"], case["stride"], case["padding"])
    y = FP.avg_pool2d_forward(x, *args)
    np.testing.assert_allclose(y, P.avg_pool2d_forward(x, *args), rtol=1e-13, atol=1e-13)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        FP.avg_pool2d_backward(g, x.shape, *args), P.avg_pool2d_backward(g, x.shape, *args),
        rtol=1e-13, atol=1e-13,
    )


@settings(max_examples=12)
@given(pool_cases(max_side=7, max_batch=4, max_channels=5))
def test_avg_pool_gradcheck(case):
    x = mr.Tensor(np.random.default_rng(case["seed"]).standard_normal(case["x"]), requires_grad=True)
    fn = lambda t: F.avg_pool2d(t, case["kernel"], case["stride"], case["padding"])  # noqa: E731
    assert mr.gradcheck(fn, [x], seed=case["seed"])


@given(pool_cases())
def test_avg_pool_parity_with_torch(case):
    torch = torch_or_skip()
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"])
    xt = mr.Tensor(x, requires_grad=True)
    y = F.avg_pool2d(xt, case["kernel"], case["stride"], case["padding"])
    g = rng.standard_normal(y.shape)
    y.backward(g)
    t = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(t, case["kernel"], case["stride"], case["padding"])  # count_include_pad=True
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xt.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_pool_stride_defaults_to_kernel(rng):
    x = mr.Tensor(rng.standard_normal((1, 2, 6, 6)).astype(np.float32))
    assert F.max_pool2d(x, 2).shape == (1, 2, 3, 3)
    assert F.avg_pool2d(x, 3).shape == (1, 2, 2, 2)
    assert F.max_pool2d(x, 3, stride=2, padding=1).dtype == np.float32


# ---------------------------------------------------------------------------
# Global average pooling
# ---------------------------------------------------------------------------


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool_gradcheck_and_parity(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = mr.Tensor(rng.standard_normal((n, c, h, w)), requires_grad=True)
    assert mr.gradcheck(lambda t: F.adaptive_avg_pool2d(t, 1), [x], seed=seed)
    torch = torch_or_skip()
    g = rng.standard_normal((n, c, 1, 1))
    x.grad = None
    y = F.adaptive_avg_pool2d(x, (1, 1))
    y.backward(g)
    t = torch.tensor(x.data, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(t, 1)
    ty.backward(torch.from_numpy(g))
    # atol: a mean near zero differs from PyTorch's in its last bits (summation order).
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("size", [2, (2, 2), (1, 2), (1, 1, 1), None, True])
def test_adaptive_avg_pool_rejects_other_sizes(size):
    x = mr.Tensor(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"supports only output_size 1 or \(1, 1\).*got " + repr(size).replace("(", r"\(").replace(")", r"\)")):
        F.adaptive_avg_pool2d(x, size)


# ---------------------------------------------------------------------------
# Pooling errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
@pytest.mark.parametrize(
    "shape, kwargs, error, pattern",
    [
        ((2, 4, 4), {"kernel_size": 2}, ValueError, r"input must be 4-D \(N, C, H, W\), got shape \(2, 4, 4\)"),
        ((1, 1, 4, 4), {"kernel_size": 3, "padding": 2}, ValueError, r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)"),
        ((1, 1, 2, 2), {"kernel_size": 3}, ValueError, r"kernel \(3, 3\).*larger than the padded input \(2, 2\)"),
        ((1, 1, 4, 4), {"kernel_size": 2, "stride": 0}, ValueError, r"stride must be >= 1, got 0"),
        ((1, 1, 4, 4), {"kernel_size": 0}, ValueError, r"kernel_size must be >= 1, got 0"),
        ((1, 1, 4, 4), {"kernel_size": 2.0}, TypeError, r"kernel_size must be an int or a pair of ints, got 2.0"),
    ],
)
def test_pool_errors(fn, shape, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fn(mr.Tensor(np.zeros(shape, np.float32)), **kwargs)


def test_pool_rejects_integer_input():
    with pytest.raises(TypeError, match="floating point, got dtype int64"):
        F.max_pool2d(mr.Tensor(np.zeros((1, 1, 4, 4), np.int64)), 2)


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------


@settings(max_examples=10)
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 5),
    st.integers(1, 5),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_linear_gradcheck_and_parity(lead, in_f, out_f, has_bias, seed):
    rng = np.random.default_rng(seed)
    x = mr.Tensor(rng.standard_normal(tuple(lead) + (in_f,)), requires_grad=True)
    w = mr.Tensor(rng.standard_normal((out_f, in_f)), requires_grad=True)
    b = mr.Tensor(rng.standard_normal(out_f), requires_grad=True) if has_bias else None
    inputs = [x, w] + ([b] if has_bias else [])
    assert mr.gradcheck(lambda *t: F.linear(*t), inputs, seed=seed)
    torch = torch_or_skip()
    for t in inputs:
        t.grad = None
    y = F.linear(x, w, b)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    tx, tw = torch.tensor(x.data, requires_grad=True), torch.tensor(w.data, requires_grad=True)
    tb = torch.tensor(b.data, requires_grad=True) if has_bias else None
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    if has_bias:
        np.testing.assert_allclose(b.grad, tb.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_keeps_float32(rng):
    x = mr.Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    w = mr.Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    b = mr.Tensor(np.zeros(2, np.float32), requires_grad=True)
    y = F.linear(x, w, b)
    y.backward(np.ones((4, 2), np.float32))
    assert y.dtype == x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, dtypes, error, pattern",
    [
        ((4, 3), (2, 3, 1), None, None, ValueError, r"weight must be 2-D .* got shape \(2, 3, 1\)"),
        ((4, 5), (2, 3), None, None, ValueError, r"input has 5 features \(shape \(4, 5\)\) but weight of shape \(2, 3\) expects 3"),
        ((), (2, 3), None, None, ValueError, r"at least 1 dimension, got shape \(\)"),
        ((4, 3), (2, 3), (3,), None, ValueError, r"bias must have shape \(2,\) .* got \(3,\)"),
        ((4, 3), (2, 3), None, (np.float32, np.float64), TypeError, r"input dtype float32 and weight dtype float64 differ"),
    ],
)
def test_linear_errors(x_shape, w_shape, b_shape, dtypes, error, pattern):
    dx, dw = dtypes or (np.float32, np.float32)
    x = mr.Tensor(np.zeros(x_shape, dx))
    w = mr.Tensor(np.zeros(w_shape, dw))
    b = mr.Tensor(np.zeros(b_shape, np.float32)) if b_shape else None
    with pytest.raises(error, match=pattern):
        F.linear(x, w, b)


# ---------------------------------------------------------------------------
# Flatten
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, start, end",
    [((2, 3, 4, 5), 1, -1), ((2, 3, 4, 5), 0, -1), ((2, 3, 4, 5), 1, 2), ((2, 3, 4, 5), -2, -1),
     ((2, 3, 4, 5), 2, 2), ((7,), 0, 0), ((), 0, -1), ((3, 1, 2), 0, 1)],
)
def test_flatten_matches_torch_flatten(shape, start, end, rng):
    torch = torch_or_skip()
    x = rng.standard_normal(shape)
    xt = mr.Tensor(x, requires_grad=True)
    y = F.flatten(xt, start, end)
    expected = torch.flatten(torch.from_numpy(x), start, end)
    assert y.shape == tuple(expected.shape)
    np.testing.assert_array_equal(y.data, expected.numpy())
    g = rng.standard_normal(y.shape)
    y.backward(g)
    np.testing.assert_array_equal(xt.grad, g.reshape(shape))


def test_flatten_default_keeps_the_batch_axis():
    assert F.flatten(mr.Tensor(np.zeros((8, 64, 1, 1), np.float32))).shape == (8, 64)


@pytest.mark.parametrize(
    "shape, start, end, error, pattern",
    [
        ((5,), 1, -1, ValueError, r"start_dim=1 is out of range for a tensor of shape \(5,\)"),
        ((2, 3), 0, 2, ValueError, r"end_dim=2 is out of range"),
        ((2, 3, 4), 2, 1, ValueError, r"start_dim 2 comes after end_dim 1"),
        ((2, 3), 0.5, -1, TypeError, r"start_dim must be an int, got 0.5"),
    ],
)
def test_flatten_errors(shape, start, end, error, pattern):
    with pytest.raises(error, match=pattern):
        F.flatten(mr.Tensor(np.zeros(shape, np.float32)), start, end)
