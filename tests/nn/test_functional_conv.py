"""Functional conv2d / im2col / col2im: gradient checks, PyTorch parity, dtypes, errors.

Gradient checks are float64 central differences against a RANDOM upstream
gradient (minires.gradcheck), on every element of every input. Spatial sizes
stay small because each element costs two forward passes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minires as mr
import minires.nn.functional as F


@st.composite
def conv_cases(draw, max_side: int = 7, max_batch: int = 4, max_channels: int = 5):
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    c_out = draw(st.integers(1, max_channels))
    kernel = (draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = []
    for a in (0, 1):
        smallest = max(1, dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a])
        hw.append(draw(st.integers(smallest, max(smallest, max_side))))
    return {
        "x": (n, c, hw[0], hw[1]),
        "w": (c_out, c, kernel[0], kernel[1]),
        # Exercise both spellings: ints where height and width agree.
        "stride": stride[0] if stride[0] == stride[1] else stride,
        "padding": padding[0] if padding[0] == padding[1] else padding,
        "dilation": dilation[0] if dilation[0] == dilation[1] else dilation,
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def tensors(case, dtype=np.float64, requires_grad=True):
    rng = np.random.default_rng(case["seed"])
    x = mr.Tensor(rng.standard_normal(case["x"]).astype(dtype), requires_grad=requires_grad)
    w = mr.Tensor(rng.standard_normal(case["w"]).astype(dtype), requires_grad=requires_grad)
    b = mr.Tensor(rng.standard_normal(case["w"][0]).astype(dtype), requires_grad=requires_grad) if case["bias"] else None
    return x, w, b


def geometry(case):
    return {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"]}


@settings(max_examples=12)
@given(conv_cases(max_side=5, max_batch=4, max_channels=5))
def test_conv2d_gradcheck(case):
    x, w, b = tensors(case)
    inputs = [x, w] + ([b] if b is not None else [])
    def fn(x_, w_, b_=None):
        return F.conv2d(x_, w_, b_, **geometry(case))

    assert mr.gradcheck(fn, inputs, seed=case["seed"])


@given(conv_cases(max_side=9))
def test_conv2d_parity_with_torch(case):
    torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch parity checks")
    x, w, b = tensors(case)
    y = F.conv2d(x, w, b, **geometry(case))
    g = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape)
    y.backward(g)
    tx, tw = torch.tensor(x.data, requires_grad=True), torch.tensor(w.data, requires_grad=True)
    tb = torch.tensor(b.data, requires_grad=True) if b is not None else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, **geometry(case))
    ty.backward(torch.from_numpy(g))
    pairs = [(y.data, ty.detach()), (x.grad, tx.grad), (w.grad, tw.grad)] + ([(b.grad, tb.grad)] if b is not None else [])
    for ours, theirs in pairs:
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(theirs).max())))


def test_float32_in_float32_out(rng):
    x = mr.Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), requires_grad=True)
    w = mr.Tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    b = mr.Tensor(np.zeros(4, np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, stride=2, padding=1)
    assert y.dtype == np.float32 and y.shape == (2, 4, 4, 4)
    y.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32


def test_gradients_only_where_required(rng):
    x = mr.Tensor(rng.standard_normal((2, 3, 6, 6)))  # the input image: no gradient wanted
    w = mr.Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    y.backward(rng.standard_normal(y.shape))
    assert x.grad is None
    assert w.grad.shape == (4, 3, 3, 3)


def test_plain_arrays_are_accepted_as_constants(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    y = F.conv2d(x, w, None, 1, 1)
    assert isinstance(y, mr.Tensor) and not y.requires_grad and y.shape == (1, 3, 5, 5)


# ---------------------------------------------------------------------------
# im2col / col2im through autograd
# ---------------------------------------------------------------------------


@settings(max_examples=10)
@given(conv_cases(max_side=5, max_batch=4, max_channels=3))
def test_im2col_and_col2im_gradcheck(case):
    k = case["w"][2:]
    x = mr.Tensor(np.random.default_rng(case["seed"]).standard_normal(case["x"]), requires_grad=True)
    assert mr.gradcheck(lambda t: F.im2col(t, k, **geometry(case)), [x], seed=case["seed"])
    cols_shape = F.im2col(x, k, **geometry(case)).shape
    cols = mr.Tensor(np.random.default_rng(case["seed"] + 1).standard_normal(cols_shape), requires_grad=True)
    assert mr.gradcheck(lambda t: F.col2im(t, case["x"], k, **geometry(case)), [cols], seed=case["seed"])


def test_conv2d_equals_weight_times_im2col(rng):
    """The identity the whole convolution rests on: y = W_mat @ im2col(x)."""
    x = mr.Tensor(rng.standard_normal((2, 3, 7, 6)))
    w = mr.Tensor(rng.standard_normal((4, 3, 3, 2)))
    y = F.conv2d(x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    cols = F.im2col(x, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    np.testing.assert_allclose((w.data.reshape(4, -1) @ cols.data).reshape(y.shape), y.data, rtol=1e-12, atol=1e-12)


def test_col2im_checks_its_arguments():
    with pytest.raises(ValueError, match=r"cols must have shape \(1, 9, 16\).*got \(1, 9, 4\)"):
        F.col2im(np.zeros((1, 9, 4)), (1, 1, 4, 4), 3, padding=1)
    with pytest.raises(ValueError, match=r"input must be 4-D.*\(4, 4\)"):
        F.im2col(np.zeros((4, 4)), 3)


# ---------------------------------------------------------------------------
# Errors name the problem and the offending value
# ---------------------------------------------------------------------------


def _x(shape=(2, 3, 8, 8), dtype=np.float32):
    return mr.Tensor(np.zeros(shape, dtype))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"x": _x((3, 8, 8))}, ValueError, r"input must be 4-D \(N, C_in, H, W\), got shape \(3, 8, 8\)"),
        ({"w": _x((4, 3, 3))}, ValueError, r"weight must be 4-D \(C_out, C_in, kH, kW\), got shape \(4, 3, 3\)"),
        ({"w": _x((4, 5, 3, 3))}, ValueError, r"input has 3 channels .* weight of shape \(4, 5, 3, 3\) expects 5"),
        ({"w": _x((4, 3, 3, 3), np.float64)}, TypeError, r"input dtype float32 and weight dtype float64 differ"),
        ({"b": _x((5,))}, ValueError, r"bias must have shape \(4,\) .* got \(5,\)"),
        ({"b": _x((4,), np.float64)}, TypeError, r"bias dtype float64 differ"),
        ({"x": _x((2, 3, 8, 8), np.int64), "w": _x((4, 3, 3, 3), np.int64)}, TypeError, r"floating point, got dtype int64"),
        ({"stride": 0}, ValueError, r"stride must be >= 1, got 0"),
        ({"stride": (1, -1)}, ValueError, r"stride must be >= 1, got \(1, -1\)"),
        ({"stride": 1.5}, TypeError, r"stride must be an int or a pair of ints, got 1.5"),
        ({"padding": -1}, ValueError, r"padding must be >= 0, got -1"),
        ({"padding": "same"}, TypeError, r"padding must be an int or a pair of ints, got 'same'"),
        ({"dilation": 0}, ValueError, r"dilation must be >= 1, got 0"),
        ({"dilation": (1, 1, 1)}, ValueError, r"dilation must be an int or a pair of ints, got \(1, 1, 1\)"),
        ({"w": _x((4, 3, 0, 3))}, ValueError, r"kernel size must be at least 1x1, got weight of shape \(4, 3, 0, 3\)"),
        ({"w": _x((4, 3, 11, 3))}, ValueError, r"kernel \(11, 3\) .* larger than the padded input \(8, 8\)"),
        ({"w": _x((4, 3, 5, 5)), "dilation": 2, "padding": 0}, ValueError, r"spanning \(9, 9\) with dilation \(2, 2\)"),
    ],
)
def test_conv2d_errors(kwargs, error, pattern):
    args = {"x": _x(), "w": _x((4, 3, 3, 3)), "b": None, "stride": 1, "padding": 0, "dilation": 1}
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        F.conv2d(args["x"], args["w"], args["b"], args["stride"], args["padding"], args["dilation"])
