"""Every differentiable op of the foundation, gradient-checked in float64.

Each test draws shapes (broadcasting, size-1 axes, 0-d tensors) and values
with Hypothesis, checks the forward result against the NumPy expression it
stands for, then runs :func:`minires.gradcheck`: the backward pass, seeded
with a RANDOM upstream gradient, is compared element by element with central
differences. Inputs of non-smooth ops are drawn away from their kinks (see
``tests/strategies.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    arrays,
    arrays_away_from,
    axes,
    basic_indices,
    broadcastable_shapes,
    distinct_arrays,
    integer_array_indices,
    matmul_shapes,
    nonempty_shapes,
    nonzero_arrays,
    pad_widths,
    permutations,
    positive_arrays,
    reshape_targets,
    seeds,
    separated_pair,
    shapes,
)

import minires as mr


def check(fn, arrays_, seed, expected=None):
    """Compare ``fn``'s forward with ``expected`` (if given), then gradcheck every input."""
    inputs = [mr.Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays_]
    if expected is not None:
        out = fn(*inputs)
        expected = np.asarray(expected)
        assert out.shape == expected.shape
        assert out.dtype == np.float64
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert mr.gradcheck(fn, inputs, seed=seed)


# ---------------------------------------------------------------------------
# Elementwise, binary with broadcasting
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, op, ref",
    [
        ("add", mr.add, np.add),
        ("sub", mr.sub, np.subtract),
        ("mul", mr.mul, np.multiply),
    ],
)
@given(data=st.data(), seed=seeds())
def test_binary_broadcasting(name, op, ref, data, seed):
    shape_a, shape_b = data.draw(broadcastable_shapes())
    a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b))
    check(op, [a, b], seed, expected=ref(a, b))


@given(shapes_=broadcastable_shapes(), data=st.data(), seed=seeds())
def test_div(shapes_, data, seed):
    a = data.draw(arrays(shapes_[0]))
    b = data.draw(nonzero_arrays(shapes_[1]))
    check(mr.div, [a, b], seed, expected=a / b)


@given(x=arrays(shapes()), seed=seeds())
def test_neg(x, seed):
    check(mr.neg, [x], seed, expected=-x)


@given(
    shape=shapes(),
    exponent=st.sampled_from([0, 1, 2, 3, -1, -2, 2.0]),
    data=st.data(),
    seed=seeds(),
)
def test_pow_integer_exponent(shape, exponent, data, seed):
    x = data.draw(nonzero_arrays(shape))  # negative bases are fine for integer exponents
    check(lambda t: mr.pow(t, exponent), [x], seed, expected=x ** exponent)


@given(shape=shapes(), exponent=st.sampled_from([0.5, 1.5, -0.5, 2.5, -1.25]), data=st.data(), seed=seeds())
def test_pow_fractional_exponent(shape, exponent, data, seed):
    x = data.draw(positive_arrays(shape))
    check(lambda t: t ** exponent, [x], seed, expected=x ** exponent)


def test_pow_rejects_tensor_exponent():
    x = mr.Tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="scalar exponent"):
        mr.pow(x, mr.Tensor(2.0))


# ---------------------------------------------------------------------------
# Matmul
# ---------------------------------------------------------------------------


@given(shapes_=matmul_shapes(max_batch_dims=0), data=st.data(), seed=seeds())
def test_matmul_2d(shapes_, data, seed):
    a, b = data.draw(arrays(shapes_[0])), data.draw(arrays(shapes_[1]))
    check(mr.matmul, [a, b], seed, expected=a @ b)


@given(shapes_=matmul_shapes(max_batch_dims=2), data=st.data(), seed=seeds())
def test_matmul_batched_broadcast(shapes_, data, seed):
    a, b = data.draw(arrays(shapes_[0])), data.draw(arrays(shapes_[1]))
    check(lambda x, y: x @ y, [a, b], seed, expected=a @ b)


def test_matmul_shared_weight_collects_batch_gradient(rng):
    """A (k, m) weight used by every item of a (B, n, k) batch must receive the SUM over the batch."""
    a = mr.Tensor(rng.standard_normal((3, 2, 4)), requires_grad=True)
    w = mr.Tensor(rng.standard_normal((4, 5)), requires_grad=True)
    g = rng.standard_normal((3, 2, 5))
    (a @ w).backward(g)
    expected = sum(a.data[i].T @ g[i] for i in range(3))
    np.testing.assert_allclose(w.grad, expected, rtol=1e-12)
    assert mr.gradcheck(mr.matmul, [a, w], seed=1)


# ---------------------------------------------------------------------------
# Elementwise, unary
# ---------------------------------------------------------------------------


@given(x=arrays(shapes()), seed=seeds())
def test_exp(x, seed):
    check(mr.exp, [x], seed, expected=np.exp(x))


@given(x=positive_arrays(shapes(), low=0.2, high=3.0), seed=seeds())
def test_log(x, seed):
    check(mr.log, [x], seed, expected=np.log(x))


@given(x=positive_arrays(shapes(), low=0.2, high=3.0), seed=seeds())
def test_sqrt(x, seed):
    check(mr.sqrt, [x], seed, expected=np.sqrt(x))


@given(x=arrays(shapes(), low=-3, high=3), seed=seeds())
def test_tanh(x, seed):
    check(mr.tanh, [x], seed, expected=np.tanh(x))


@given(x=arrays(shapes(), low=-6, high=6), seed=seeds())
def test_sigmoid(x, seed):
    check(lambda t: t.sigmoid(), [x], seed, expected=1 / (1 + np.exp(-x)))


def test_sigmoid_does_not_overflow_at_extremes():
    x = mr.Tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]), requires_grad=True)
    with np.errstate(over="raise"):
        y = mr.sigmoid(x)
        y.backward(np.ones(5) * 0.5)
    np.testing.assert_allclose(y.data, [0.0, 1 / (1 + np.exp(50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0], atol=1e-300)
    assert np.all(np.isfinite(x.grad))


# ---------------------------------------------------------------------------
# Non-smooth elementwise: maximum, clip
# ---------------------------------------------------------------------------


@given(shapes_=broadcastable_shapes(), data=st.data(), seed=seeds())
def test_maximum(shapes_, data, seed):
    a, b = data.draw(separated_pair(*shapes_))
    check(mr.maximum, [a, b], seed, expected=np.maximum(a, b))


@given(x=arrays_away_from(shapes(), [0.0]), seed=seeds())
def test_maximum_with_scalar_is_relu(x, seed):
    check(lambda t: mr.maximum(t, 0.0), [x], seed, expected=np.maximum(x, 0.0))


def test_maximum_ties_share_the_gradient():
    """At a tie neither side is the argmax; like PyTorch, each gets half."""
    a = mr.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = mr.Tensor(np.array([1.0, 5.0, 0.0]), requires_grad=True)
    mr.maximum(a, b).backward(np.array([4.0, 4.0, 4.0]))
    np.testing.assert_array_equal(a.grad, [2.0, 0.0, 4.0])
    np.testing.assert_array_equal(b.grad, [2.0, 4.0, 0.0])


@given(
    data=st.data(),
    bounds=st.sampled_from([(-0.5, 0.5), (-1.0, None), (None, 0.3), (0.0, 1.5)]),
    seed=seeds(),
)
def test_clip(data, bounds, seed):
    lo, hi = bounds
    x = data.draw(arrays_away_from(shapes(), [p for p in bounds if p is not None]))
    expected = np.clip(x, lo, hi)
    check(lambda t: t.clip(lo, hi), [x], seed, expected=expected)


def test_clip_needs_a_bound():
    with pytest.raises(ValueError, match="min and max"):
        mr.clip(mr.Tensor([1.0]))


# ---------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sum", "mean"])
@given(shape=shapes(), keepdims=st.booleans(), data=st.data(), seed=seeds())
def test_sum_mean(name, shape, keepdims, data, seed):
    axis = data.draw(axes(len(shape)))
    x = data.draw(arrays(shape))
    op = getattr(mr, name)
    ref = getattr(np, name)(x, axis=axis if shape else None, keepdims=keepdims)
    check(lambda t: op(t, axis=axis, keepdims=keepdims), [x], seed, expected=ref)


@given(shape=shapes(), keepdims=st.booleans(), data=st.data(), seed=seeds())
def test_max(shape, keepdims, data, seed):
    axis = data.draw(axes(len(shape)))
    x = data.draw(distinct_arrays(shape))
    ref = np.max(x, axis=axis if shape else None, keepdims=keepdims)
    check(lambda t: t.max(axis=axis, keepdims=keepdims), [x], seed, expected=ref)


def test_max_ties_share_the_gradient():
    x = mr.Tensor(np.array([[3.0, 1.0, 3.0], [0.0, 2.0, 1.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([6.0, 5.0]))
    np.testing.assert_array_equal(x.grad, [[3.0, 0.0, 3.0], [0.0, 5.0, 0.0]])


@pytest.mark.parametrize("axis", [3, -4, (0, 0), (1, -2)])
def test_reduction_bad_axis_is_an_error(axis):
    x = mr.Tensor(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="axis"):
        x.sum(axis=axis)


# ---------------------------------------------------------------------------
# Shape ops
# ---------------------------------------------------------------------------


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_reshape(shape, data, seed):
    target = data.draw(reshape_targets(shape))
    x = data.draw(arrays(shape))
    check(lambda t: t.reshape(target), [x], seed, expected=x.reshape(target))
    # The varargs spelling, PyTorch's x.reshape(2, 3), is the same op.
    if target:
        assert mr.Tensor(x).reshape(*target).shape == x.reshape(target).shape


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        mr.Tensor(np.zeros((2, 3))).reshape(4, 2)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_permute(shape, data, seed):
    perm = data.draw(permutations(len(shape)))
    x = data.draw(arrays(shape))
    check(lambda t: t.permute(*perm), [x], seed, expected=np.transpose(x, perm))
    check(lambda t: mr.permute(t, perm), [x], seed)  # tuple spelling


@given(shape=shapes(min_dims=2), data=st.data(), seed=seeds())
def test_transpose(shape, data, seed):
    nd = len(shape)
    d0, d1 = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    x = data.draw(arrays(shape))
    check(lambda t: t.transpose(d0, d1), [x], seed, expected=np.swapaxes(x, d0, d1))


@given(shape=shapes(min_dims=2, max_dims=2), data=st.data(), seed=seeds())
def test_T_property(shape, data, seed):
    x = data.draw(arrays(shape))
    check(lambda t: t.T, [x], seed, expected=x.T)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_flatten(shape, data, seed):
    nd = max(len(shape), 1)
    start = data.draw(st.integers(0, nd - 1))
    end = data.draw(st.integers(start, nd - 1))
    x = data.draw(arrays(shape))
    if len(shape) == 0:
        expected = x.reshape(1)
    else:
        expected = x.reshape(shape[:start] + (-1,) + shape[end + 1:])
    check(lambda t: t.flatten(start, end), [x], seed, expected=expected)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_getitem_basic(shape, data, seed):
    index = data.draw(basic_indices(shape))
    x = data.draw(arrays(shape))
    check(lambda t: t[index], [x], seed, expected=x[index])


@given(shape=nonempty_shapes(), data=st.data(), seed=seeds())
def test_getitem_integer_arrays(shape, data, seed):
    index, _ = data.draw(integer_array_indices(shape))
    x = data.draw(arrays(shape))
    check(lambda t: t[index], [x], seed, expected=x[index])


def test_getitem_repeated_indices_scatter_add():
    """x[[0, 0, 2]]: element 0 is used twice, so it receives the sum of both gradients."""
    x = mr.Tensor(np.array([10.0, 20.0, 30.0]), requires_grad=True)
    x[np.array([0, 0, 2])].backward(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 4.0])
    # The same through a list index, a Tensor index and a zipped 2-D index.
    y = mr.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y[[1, 1, 0], mr.Tensor([2, 2, 2])].backward(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal(y.grad, [[0.0, 0.0, 4.0], [0.0, 0.0, 3.0]])


@given(shape=nonempty_shapes(), data=st.data(), seed=seeds())
def test_getitem_repeated_indices_gradcheck(shape, data, seed):
    index, repeats = data.draw(integer_array_indices(shape).filter(lambda ir: ir[1]))
    assert repeats
    x = data.draw(arrays(shape))
    check(lambda t: t[index], [x], seed, expected=x[index])


@given(shape=nonempty_shapes(), data=st.data(), seed=seeds())
def test_getitem_boolean_mask(shape, data, seed):
    x = data.draw(arrays(shape))
    mask = x > 0
    check(lambda t: t[mask], [x], seed, expected=x[mask])


def test_getitem_out_of_range_names_shape():
    with pytest.raises(IndexError, match=r"\(2, 3\)"):
        mr.Tensor(np.zeros((2, 3)))[5]


@given(
    base=shapes(min_dims=1),
    count=st.integers(1, 3),
    data=st.data(),
    seed=seeds(),
)
def test_concatenate(base, count, data, seed):
    nd = len(base)
    axis = data.draw(st.integers(-nd, nd - 1))
    parts = []
    for _ in range(count):
        shape = list(base)
        shape[axis] = data.draw(st.integers(1, 3))
        parts.append(data.draw(arrays(tuple(shape))))
    check(lambda *ts: mr.concatenate(list(ts), axis=axis), parts, seed, expected=np.concatenate(parts, axis=axis))
    assert mr.cat is mr.concatenate


def test_concatenate_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        mr.concatenate([mr.Tensor(np.zeros((2, 3))), mr.Tensor(np.zeros((2, 4)))], axis=0)


@given(shape=shapes(), count=st.integers(1, 3), data=st.data(), seed=seeds())
def test_stack(shape, count, data, seed):
    nd = len(shape)
    axis = data.draw(st.integers(-nd - 1, nd))
    parts = [data.draw(arrays(shape)) for _ in range(count)]
    check(lambda *ts: mr.stack(list(ts), axis=axis), parts, seed, expected=np.stack(parts, axis=axis))


def test_stack_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        mr.stack([mr.Tensor(np.zeros(2)), mr.Tensor(np.zeros(3))])


@given(shape=shapes(), value=st.sampled_from([0.0, -1.5]), data=st.data(), seed=seeds())
def test_pad(shape, value, data, seed):
    widths = data.draw(pad_widths(len(shape)))
    x = data.draw(arrays(shape))
    # np.pad rejects the empty width list of a 0-d array; padding no axis is the identity.
    expected = np.pad(x, widths, mode="constant", constant_values=value) if shape else x
    check(lambda t: mr.pad(t, widths, value=value), [x], seed, expected=expected)


def test_pad_int_width_and_bad_width():
    x = mr.Tensor(np.ones((2, 3)))
    assert mr.pad(x, 1).shape == (4, 5)
    with pytest.raises(ValueError, match="pad_width"):
        mr.pad(x, ((1, 1),))
    with pytest.raises(ValueError, match="pad_width"):
        mr.pad(x, ((1, -1), (0, 0)))


# ---------------------------------------------------------------------------
# Python operators, scalars and arrays mixed with Tensors
# ---------------------------------------------------------------------------

C = np.array([[0.5, -1.5, 2.0], [1.25, 0.75, -0.5]])  # a constant NumPy operand, shape (2, 3)
W = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])  # (3, 2), for x @ W
V = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]])  # (3, 2), for V @ x


@pytest.mark.parametrize(
    "label, fn, ref",
    [
        ("2 * x", lambda x: 2 * x, lambda x: 2 * x),
        ("x * 2.5", lambda x: x * 2.5, lambda x: x * 2.5),
        ("x / 3", lambda x: x / 3, lambda x: x / 3),
        ("3 / x", lambda x: 3 / x, lambda x: 3 / x),
        ("x + 1", lambda x: x + 1, lambda x: x + 1),
        ("1 + x", lambda x: 1 + x, lambda x: 1 + x),
        ("1 - x", lambda x: 1 - x, lambda x: 1 - x),
        ("x - 0.5", lambda x: x - 0.5, lambda x: x - 0.5),
        ("x ** 2", lambda x: x ** 2, lambda x: x ** 2),
        ("x ** 3", lambda x: x ** 3, lambda x: x ** 3),
        ("-x", lambda x: -x, lambda x: -x),
        ("np_array + x", lambda x: C + x, lambda x: C + x),
        ("x + np_array", lambda x: x + C, lambda x: x + C),
        ("np_array - x", lambda x: C - x, lambda x: C - x),
        ("np_array * x", lambda x: C * x, lambda x: C * x),
        ("np_array / x", lambda x: C / x, lambda x: C / x),
        ("x / np_array", lambda x: x / C, lambda x: x / C),
        ("np_row * x (broadcast)", lambda x: C[0] * x, lambda x: C[0] * x),
        ("x @ np_array", lambda x: x @ W, lambda x: x @ W),
        ("np_array @ x", lambda x: V @ x, lambda x: V @ x),
        ("np.float64 * x", lambda x: np.float64(1.5) * x, lambda x: 1.5 * x),
        ("x * np.int64", lambda x: x * np.int64(3), lambda x: x * 3),
        ("chain", lambda x: (2 * x - 1) ** 2 / 3 + x * x, lambda x: (2 * x - 1) ** 2 / 3 + x * x),
    ],
)
def test_operators_with_scalars_and_arrays(label, fn, ref, rng):
    # Magnitudes in [0.5, 2) with random signs: safe for x in a denominator.
    x = rng.uniform(0.5, 2.0, size=(2, 3)) * rng.choice([-1.0, 1.0], size=(2, 3))
    x_t = mr.Tensor(x, requires_grad=True)
    out = fn(x_t)
    assert isinstance(out, mr.Tensor), f"{label} did not produce a Tensor"
    np.testing.assert_allclose(out.numpy(), ref(x), rtol=1e-12)
    assert mr.gradcheck(fn, [x_t], seed=7)


@pytest.mark.parametrize(
    "expr, fn_name",
    [
        (lambda a, b: a + b, "Add"),
        (lambda a, b: a - b, "Sub"),
        (lambda a, b: a * b, "Mul"),
        (lambda a, b: a / b, "Div"),
        (lambda a, b: -a, "Neg"),
        (lambda a, b: a ** 2, "Pow"),
        (lambda a, b: a @ b.T, "MatMul"),
        (lambda a, b: a[0], "GetItem"),
        (lambda a, b: a.sum(), "Sum"),
        (lambda a, b: a.mean(0), "Mean"),
        (lambda a, b: a.max(), "Max"),
        (lambda a, b: a.exp(), "Exp"),
        (lambda a, b: a.tanh(), "Tanh"),
        (lambda a, b: a.reshape(-1), "Reshape"),
        (lambda a, b: a.flatten(), "Reshape"),
        (lambda a, b: a.permute(1, 0), "Permute"),
        (lambda a, b: a.transpose(0, 1), "Permute"),
    ],
)
def test_operators_record_the_matching_function(expr, fn_name):
    a = mr.Tensor(np.ones((2, 3)), requires_grad=True)
    b = mr.Tensor(np.ones((2, 3)), requires_grad=True)
    out = expr(a, b)
    assert type(out._ctx).__name__ == "Context"
    assert out._ctx.fn.__name__ == fn_name

