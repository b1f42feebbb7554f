"""Parity with PyTorch: every foundation op, forward and backward, in float64.

Each test builds the same computation in minires and in PyTorch from the same
random inputs, compares the outputs, then back-propagates the same RANDOM
upstream gradient through both and compares every input gradient. Tolerances
are tight (float64; only summation order may differ). The whole module is
skipped, with a message, when torch is not installed. Example counts come from
the Hypothesis profile in ``tests/conftest.py``.
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

torch = pytest.importorskip("torch", reason="torch not installed: parity tests skipped")
F = torch.nn.functional

RTOL, ATOL = 1e-10, 1e-12


def compare(mr_fn, torch_fn, arrays_, seed, rtol=RTOL, atol=ATOL):
    """Run both frameworks on ``arrays_`` and compare outputs and input gradients."""
    arrays_ = [np.array(a, dtype=np.float64) for a in arrays_]
    m_in = [mr.Tensor(a.copy(), requires_grad=True) for a in arrays_]
    t_in = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays_]
    m_out, t_out = mr_fn(*m_in), torch_fn(*t_in)
    assert m_out.shape == tuple(t_out.shape), f"shape {m_out.shape} vs torch {tuple(t_out.shape)}"
    assert m_out.dtype == np.float64
    np.testing.assert_allclose(m_out.numpy(), t_out.detach().numpy(), rtol=rtol, atol=atol, err_msg="forward")

    g = np.random.default_rng(seed).standard_normal(m_out.shape)
    m_out.backward(g)
    t_out.backward(torch.from_numpy(np.array(g, dtype=np.float64)))
    for k, (m, t) in enumerate(zip(m_in, t_in)):
        t_grad = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        m_grad = m.grad if m.grad is not None else np.zeros(m.shape)
        assert m_grad.shape == t_grad.shape
        np.testing.assert_allclose(m_grad, t_grad, rtol=rtol, atol=atol, err_msg=f"gradient of input {k}")


# ---------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, m_fn, t_fn",
    [
        ("add", lambda a, b: a + b, lambda a, b: a + b),
        ("sub", lambda a, b: a - b, lambda a, b: a - b),
        ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ],
)
@given(shapes_=broadcastable_shapes(), data=st.data(), seed=seeds())
def test_binary(name, m_fn, t_fn, shapes_, data, seed):
    a, b = data.draw(arrays(shapes_[0])), data.draw(arrays(shapes_[1]))
    compare(m_fn, t_fn, [a, b], seed)


@given(shapes_=broadcastable_shapes(), data=st.data(), seed=seeds())
def test_div(shapes_, data, seed):
    a, b = data.draw(arrays(shapes_[0])), data.draw(nonzero_arrays(shapes_[1]))
    compare(lambda x, y: x / y, lambda x, y: x / y, [a, b], seed)


@given(shapes_=broadcastable_shapes(), data=st.data(), seed=seeds())
def test_maximum(shapes_, data, seed):
    a, b = data.draw(separated_pair(*shapes_))
    compare(mr.maximum, torch.maximum, [a, b], seed)


def test_maximum_ties_match_torch():
    """At exact ties both frameworks split the gradient in half."""
    a = np.array([1.0, 2.0, -3.0, 0.5])
    b = np.array([1.0, 0.0, -3.0, 0.7])
    compare(mr.maximum, torch.maximum, [a, b], seed=0)


@pytest.mark.parametrize(
    "name, m_fn, t_fn, domain",
    [
        ("neg", lambda x: -x, lambda x: -x, "any"),
        ("exp", mr.exp, torch.exp, "any"),
        ("log", mr.log, torch.log, "positive"),
        ("sqrt", mr.sqrt, torch.sqrt, "positive"),
        ("tanh", mr.tanh, torch.tanh, "any"),
        ("sigmoid", mr.sigmoid, torch.sigmoid, "any"),
        ("x ** 2", lambda x: x ** 2, lambda x: x ** 2, "any"),
        ("x ** 3", lambda x: x ** 3, lambda x: x ** 3, "any"),
        ("x ** -1", lambda x: x ** -1, lambda x: x ** -1, "nonzero"),
        ("x ** 0.5", lambda x: x ** 0.5, lambda x: x ** 0.5, "positive"),
        ("x ** -1.5", lambda x: mr.pow(x, -1.5), lambda x: torch.pow(x, -1.5), "positive"),
        ("x ** 0", lambda x: x ** 0, lambda x: x ** 0, "any"),
        ("2 * x", lambda x: 2 * x, lambda x: 2 * x, "any"),
        ("x / 3", lambda x: x / 3, lambda x: x / 3, "any"),
        ("3 / x", lambda x: 3 / x, lambda x: 3 / x, "nonzero"),
        ("1 - x", lambda x: 1 - x, lambda x: 1 - x, "any"),
        ("x + 0.5", lambda x: x + 0.5, lambda x: x + 0.5, "any"),
    ],
)
@given(shape=shapes(), data=st.data(), seed=seeds())
def test_unary(name, m_fn, t_fn, domain, shape, data, seed):
    strategy = {"any": arrays, "positive": positive_arrays, "nonzero": nonzero_arrays}[domain]
    x = data.draw(strategy(shape))
    compare(m_fn, t_fn, [x], seed)


@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (-1.0, None), (None, 0.3)])
@given(data=st.data(), seed=seeds())
def test_clip(bounds, data, seed):
    lo, hi = bounds
    x = data.draw(arrays_away_from(shapes(), [p for p in bounds if p is not None]))
    compare(lambda t: t.clip(lo, hi), lambda t: torch.clamp(t, min=lo, max=hi), [x], seed)


def test_sigmoid_extremes_match_torch():
    x = np.array([-800.0, -40.0, -1e-3, 0.0, 1e-3, 40.0, 800.0])
    compare(mr.sigmoid, torch.sigmoid, [x], seed=1, rtol=1e-12, atol=1e-300)


@given(shapes_=matmul_shapes(max_batch_dims=2), data=st.data(), seed=seeds())
def test_matmul(shapes_, data, seed):
    a, b = data.draw(arrays(shapes_[0])), data.draw(arrays(shapes_[1]))
    compare(lambda x, y: x @ y, torch.matmul, [a, b], seed)


@given(data=st.data(), seed=seeds())
def test_operators_with_numpy_operands(data, seed):
    shape_x, shape_c = data.draw(broadcastable_shapes())
    x = data.draw(nonzero_arrays(shape_x))
    c = data.draw(nonzero_arrays(shape_c))
    tc = torch.from_numpy(c)
    compare(lambda t: c + t * c - c / t, lambda t: tc + t * tc - tc / t, [x], seed)


# ---------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------


def _torch_dims(axis, ndim):
    """minires/NumPy axis spec -> a torch ``dim`` (None means every axis)."""
    if axis is None:
        return tuple(range(ndim)) if ndim else None
    return axis


def _no_empty_tuple(axis):
    # minires follows NumPy: axis=() reduces nothing; torch reads dim=() as "all".
    return axis != ()


@pytest.mark.parametrize("name", ["sum", "mean"])
@given(shape=shapes(), keepdims=st.booleans(), data=st.data(), seed=seeds())
def test_sum_mean(name, shape, keepdims, data, seed):
    axis = data.draw(axes(len(shape)).filter(_no_empty_tuple))
    x = data.draw(arrays(shape))
    dims = _torch_dims(axis, len(shape))
    t_op = getattr(torch, name)
    t_fn = (lambda t: t_op(t)) if dims is None else (lambda t: t_op(t, dim=dims, keepdim=keepdims))
    compare(lambda t: getattr(mr, name)(t, axis=axis, keepdims=keepdims), t_fn, [x], seed)


@given(shape=shapes(), keepdims=st.booleans(), data=st.data(), seed=seeds())
def test_max(shape, keepdims, data, seed):
    axis = data.draw(axes(len(shape)).filter(_no_empty_tuple))
    x = data.draw(distinct_arrays(shape))
    dims = _torch_dims(axis, len(shape))
    t_fn = (lambda t: torch.amax(t)) if dims is None else (lambda t: torch.amax(t, dim=dims, keepdim=keepdims))
    compare(lambda t: t.max(axis=axis, keepdims=keepdims), t_fn, [x], seed)


def test_max_ties_match_torch_amax():
    """Tied maxima share the gradient equally, like torch.amax (not like torch.max(dim), which picks one)."""
    x = np.array([[3.0, 1.0, 3.0, 3.0], [0.0, 2.0, 2.0, 1.0]])
    compare(lambda t: t.max(axis=1), lambda t: torch.amax(t, dim=1), [x], seed=2)
    compare(lambda t: t.max(), lambda t: torch.amax(t), [x], seed=3)


# ---------------------------------------------------------------------------
# Shape ops
# ---------------------------------------------------------------------------


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_reshape(shape, data, seed):
    target = data.draw(reshape_targets(shape))
    x = data.draw(arrays(shape))
    compare(lambda t: t.reshape(target), lambda t: t.reshape(target), [x], seed)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_permute(shape, data, seed):
    perm = data.draw(permutations(len(shape)))
    x = data.draw(arrays(shape))
    compare(lambda t: t.permute(*perm), lambda t: t.permute(perm), [x], seed)


@given(shape=shapes(min_dims=2), data=st.data(), seed=seeds())
def test_transpose(shape, data, seed):
    nd = len(shape)
    d0, d1 = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    x = data.draw(arrays(shape))
    compare(lambda t: t.transpose(d0, d1), lambda t: t.transpose(d0, d1), [x], seed)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_flatten(shape, data, seed):
    nd = max(len(shape), 1)
    start = data.draw(st.integers(-nd, nd - 1))
    end = data.draw(st.integers(start % nd, nd - 1))
    x = data.draw(arrays(shape))
    compare(lambda t: t.flatten(start, end), lambda t: torch.flatten(t, start, end), [x], seed)


def _torch_index(index):
    """NumPy index arrays -> torch tensors (ints, slices, None and ... pass through)."""
    def conv(part):
        return torch.from_numpy(part) if isinstance(part, np.ndarray) else part

    return tuple(conv(p) for p in index) if isinstance(index, tuple) else conv(index)


@given(shape=shapes(), data=st.data(), seed=seeds())
def test_getitem_basic(shape, data, seed):
    index = data.draw(basic_indices(shape, allow_negative_step=False))
    x = data.draw(arrays(shape))
    compare(lambda t: t[index], lambda t: t[index], [x], seed)


@given(shape=nonempty_shapes(), data=st.data(), seed=seeds())
def test_getitem_integer_arrays(shape, data, seed):
    index, _ = data.draw(integer_array_indices(shape))
    x = data.draw(arrays(shape))
    compare(lambda t: t[index], lambda t: t[_torch_index(index)], [x], seed)


def test_getitem_repeated_indices_match_torch(rng):
    x = rng.standard_normal((4, 3))
    idx = np.array([0, 2, 0, 0, 3])
    compare(lambda t: t[idx], lambda t: t[torch.from_numpy(idx)], [x], seed=4)
    compare(lambda t: t[:, idx[:3] % 3], lambda t: t[:, torch.from_numpy(idx[:3] % 3)], [x], seed=5)
    rows, cols = np.array([1, 1, 3]), np.array([2, 2, 0])
    compare(lambda t: t[rows, cols], lambda t: t[torch.from_numpy(rows), torch.from_numpy(cols)], [x], seed=6)


@given(shape=nonempty_shapes(), data=st.data(), seed=seeds())
def test_getitem_boolean_mask(shape, data, seed):
    x = data.draw(arrays(shape))
    mask = x > 0.3
    compare(lambda t: t[mask], lambda t: t[torch.from_numpy(mask)], [x], seed)


@given(base=nonempty_shapes(), count=st.integers(1, 3), data=st.data(), seed=seeds())
def test_concatenate(base, count, data, seed):
    nd = len(base)
    axis = data.draw(st.integers(-nd, nd - 1))
    parts = []
    for _ in range(count):
        shape = list(base)
        shape[axis] = data.draw(st.integers(1, 3))
        parts.append(data.draw(arrays(tuple(shape))))
    compare(lambda *ts: mr.concatenate(list(ts), axis=axis), lambda *ts: torch.cat(ts, dim=axis), parts, seed)


@given(shape=shapes(), count=st.integers(1, 3), data=st.data(), seed=seeds())
def test_stack(shape, count, data, seed):
    nd = len(shape)
    axis = data.draw(st.integers(-nd - 1, nd))
    parts = [data.draw(arrays(shape)) for _ in range(count)]
    compare(lambda *ts: mr.stack(list(ts), axis=axis), lambda *ts: torch.stack(ts, dim=axis), parts, seed)


@given(shape=nonempty_shapes(), value=st.sampled_from([0.0, 2.5]), data=st.data(), seed=seeds())
def test_pad(shape, value, data, seed):
    widths = data.draw(pad_widths(len(shape)))
    # torch's pad lists (before, after) pairs from the LAST axis backwards, flattened.
    torch_pad = tuple(w for pair in reversed(widths) for w in pair)
    x = data.draw(arrays(shape))
    compare(lambda t: mr.pad(t, widths, value=value), lambda t: F.pad(t, torch_pad, value=value), [x], seed)


# ---------------------------------------------------------------------------
# A composite, and float32
# ---------------------------------------------------------------------------


@given(seed=seeds())
def test_small_network_matches_torch(seed):
    """A two-layer perceptron with a residual connection: every op chained together."""
    rng = np.random.default_rng(seed)
    x, w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 5)) * 0.5, rng.standard_normal((5, 3))

    def m_net(x, w1, w2):
        h = mr.maximum(x @ w1, 0.0) + x  # maximum with 0: away from ties with probability 1
        return (h @ w2).tanh().mean(axis=0)

    def t_net(x, w1, w2):
        h = torch.clamp(x @ w1, min=0.0) + x
        return torch.tanh(h @ w2).mean(dim=0)

    compare(m_net, t_net, [x, w1, w2], seed)


def test_float32_matches_torch_float32(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    g = rng.standard_normal((3, 2)).astype(np.float32)
    mx, mw = mr.Tensor(x, requires_grad=True), mr.Tensor(w, requires_grad=True)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    m_out = (mx @ mw * 0.5 + 1).sigmoid()
    t_out = torch.sigmoid(tx @ tw * 0.5 + 1)
    m_out.backward(g)
    t_out.backward(torch.from_numpy(g))
    assert m_out.dtype == np.float32 and mx.grad.dtype == np.float32 and mw.grad.dtype == np.float32
    np.testing.assert_allclose(m_out.numpy(), t_out.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mw.grad, tw.grad.numpy(), rtol=1e-4, atol=1e-6)
