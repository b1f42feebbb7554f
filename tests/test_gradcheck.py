"""Tests of the gradient checker itself: it must accept right gradients and catch wrong ones.

A gradient checker that passes everything is worse than none, so most tests
here feed it a deliberately broken ``backward`` and demand a
:class:`minires.GradcheckError` whose message locates the problem.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from strategies import arrays, broadcastable_shapes, seeds, shapes

from minires import Function, GradcheckError, Tensor, gradcheck, numerical_gradient

_MESSAGE = re.compile(
    r"input (?P<input>\d+) \(shape (?P<shape>\([^)]*\))\): (?P<bad>\d+) of (?P<size>\d+) elements differ; "
    r"worst at index (?P<index>\([^)]*\)): analytic (?P<analytic>\S+) vs numeric (?P<numeric>\S+) "
)


def parse_failure(message: str) -> dict:
    """Pull the index and both values out of a GradcheckError message."""
    m = _MESSAGE.search(message)
    assert m, f"unexpected gradcheck message: {message}"
    out = m.groupdict()
    out["index"] = tuple(int(i) for i in re.findall(r"-?\d+", out["index"]))
    out["analytic"], out["numeric"] = float(out["analytic"]), float(out["numeric"])
    out["input"], out["bad"], out["size"] = int(out["input"]), int(out["bad"]), int(out["size"])
    return out


# ---------------------------------------------------------------------------
# Functions with a broken backward
# ---------------------------------------------------------------------------


class SquareSignError(Function):
    """y = x^2 whose backward has the wrong sign: -2x instead of 2x."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return -2 * a * grad


class CenterZeroBackward(Function):
    """y = x - mean(x) with a backward that returns zeros.

    The true vector-Jacobian product is ``g - mean(g)``: zero exactly when the
    upstream gradient ``g`` is constant. A checker seeded with all-ones would
    therefore accept this broken backward; one seeded randomly must not.
    """

    @staticmethod
    def forward(ctx, a):
        return a - a.mean()

    @staticmethod
    def backward(ctx, grad):
        return np.zeros_like(grad)


class CenterCorrect(Function):
    """y = x - mean(x) with the right backward, ``g - mean(g)``."""

    @staticmethod
    def forward(ctx, a):
        return a - a.mean()

    @staticmethod
    def backward(ctx, grad):
        return grad - grad.mean()


class MulIgnoresUpstream(Function):
    """y = a * b whose backward forgets to multiply by the upstream gradient.

    Returns ``b`` and ``a`` (the Jacobian diagonals) instead of ``g * b`` and
    ``g * a``: right for ``g = 1``, wrong for any other ``g``.
    """

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return b.copy(), a.copy()


class MulWrongForSecond(Function):
    """y = a * b with a right gradient for ``a`` and a wrong one (``-g * a``) for ``b``."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return grad * b, -grad * a


class SlightlyOff(Function):
    """y = 3x with a backward off by a relative 1e-4 (a rounding-sized error in a constant)."""

    @staticmethod
    def forward(ctx, a):
        return 3 * a

    @staticmethod
    def backward(ctx, grad):
        return 3 * (1 + 1e-4) * grad


def _random(shape, seed=0):
    return Tensor(np.random.default_rng(seed).uniform(-2, 2, shape), requires_grad=True)


# ---------------------------------------------------------------------------
# Accepting correct gradients
# ---------------------------------------------------------------------------


@given(shapes_=broadcastable_shapes(), seed=seeds())
def test_passes_on_correct_composite_function(shapes_, seed):
    rng = np.random.default_rng(seed)
    a = Tensor(rng.uniform(-2, 2, shapes_[0]), requires_grad=True)
    b = Tensor(rng.uniform(-2, 2, shapes_[1]), requires_grad=True)
    assert gradcheck(lambda x, y: (x * y).tanh() + x.exp() * 0.5 - y, [a, b], seed=seed) is True


def test_passes_on_correct_custom_function():
    assert gradcheck(lambda x: CenterCorrect.apply(x), [_random((3, 4))], seed=3) is True


def test_zero_dim_and_non_contiguous_inputs():
    assert gradcheck(lambda x: x * x * x, [Tensor(np.array(1.5), requires_grad=True)], seed=0)
    base = np.random.default_rng(1).uniform(-1, 1, (4, 3))
    view = Tensor(base.T, requires_grad=True)  # a transposed, non-C-contiguous view
    assert gradcheck(lambda x: (x @ x.T).tanh(), [view], seed=0)


def test_constant_inputs_are_held_fixed_and_not_checked():
    """Only requires_grad inputs are checked: a wrong gradient for a constant is not looked at."""
    a = _random((3,), seed=1)
    b = Tensor(np.random.default_rng(2).uniform(-2, 2, 3))  # constant
    fn = lambda x, y: MulWrongForSecond.apply(x, y)  # noqa: E731
    assert gradcheck(fn, [a, b], seed=0)
    assert b.grad is None
    b.requires_grad = True  # now it is checked, and its wrong gradient is found
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(fn, [a, b], seed=0)


def test_inputs_are_restored_after_the_check():
    x = _random((2, 3), seed=4)
    before = x.data.copy()
    gradcheck(lambda t: t.sigmoid(), [x], seed=0)
    np.testing.assert_array_equal(x.data, before)


# ---------------------------------------------------------------------------
# Catching wrong gradients
# ---------------------------------------------------------------------------


def test_sign_error_is_caught_with_index_and_values():
    x = _random((2, 3), seed=5)
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: SquareSignError.apply(t), [x], seed=11)
    msg = str(info.value)
    details = parse_failure(msg)
    assert details["input"] == 0 and details["shape"] == "(2, 3)" and details["size"] == 6
    assert details["bad"] >= 1
    # The reported worst element: a sign error means analytic == -numeric there,
    # and the numeric value is the true derivative 2 x_i g_i (nonzero: x, g random).
    assert details["analytic"] == pytest.approx(-details["numeric"], rel=1e-5)
    assert details["numeric"] != 0
    assert len(details["index"]) == 2
    assert all(0 <= i < n for i, n in zip(details["index"], (2, 3)))


def test_backward_right_only_for_all_ones_upstream_is_caught():
    """x - mean(x) with a zero backward: invisible to an all-ones check, caught by a random one."""
    x = _random((5,), seed=6)
    fn = lambda t: CenterZeroBackward.apply(t)  # noqa: E731

    # Why a random upstream gradient matters: with g = 1 the true gradient is 0,
    # which is exactly what the broken backward returns.
    ones_numeric = numerical_gradient(fn, [x], 0, np.ones(5))
    np.testing.assert_allclose(ones_numeric, np.zeros(5), atol=1e-8)

    for seed in range(5):  # whatever random g is drawn
        with pytest.raises(GradcheckError) as info:
            gradcheck(fn, [x], seed=seed)
        details = parse_failure(str(info.value))
        assert details["analytic"] == 0.0
        assert abs(details["numeric"]) > 1e-3


def test_backward_that_ignores_upstream_gradient_is_caught():
    a, b = _random((3, 2), seed=7), _random((3, 2), seed=8)
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(3, 2\)\)"):
        gradcheck(lambda x, y: MulIgnoresUpstream.apply(x, y), [a, b], seed=0)
    # With a as a constant, the failure is reported for input 1.
    a.requires_grad = False
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(3, 2\)\)"):
        gradcheck(lambda x, y: MulIgnoresUpstream.apply(x, y), [a, b], seed=0)


def test_tolerances_decide_borderline_cases():
    x = _random((4,), seed=9)
    fn = lambda t: SlightlyOff.apply(t)  # noqa: E731
    assert gradcheck(fn, [x], seed=0)  # 1e-4 relative error < default rtol 1e-3
    with pytest.raises(GradcheckError):
        gradcheck(fn, [x], seed=0, atol=0.0, rtol=1e-6)


def test_nan_gradient_is_a_failure():
    """sqrt at 0: the analytic gradient is inf/nan; it must never count as a pass."""
    x = Tensor(np.array([0.0, 1.0]), requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(GradcheckError, match=r"index \(0,\)"):
        gradcheck(lambda t: t.sqrt(), [x], seed=0)


# ---------------------------------------------------------------------------
# Refusing unusable inputs
# ---------------------------------------------------------------------------


def test_float32_inputs_raise_type_error():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float32.*float64"):
        gradcheck(lambda t: t * 2, [x])


def test_float32_computation_raises_type_error():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="float32"):
        gradcheck(lambda t: t.to(dtype=np.float32) * 2, [x])


def test_other_bad_arguments():
    with pytest.raises(TypeError, match="ndarray, not a Tensor"):
        gradcheck(lambda t: t, [np.ones(3)])
    with pytest.raises(ValueError, match="no input has requires_grad"):
        gradcheck(lambda t: t * 2, [Tensor(np.ones(3))])
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda t: t.data, [Tensor(np.ones(3), requires_grad=True)])


# ---------------------------------------------------------------------------
# The numerical gradient on its own
# ---------------------------------------------------------------------------


@given(x=arrays(shapes()), seed=seeds())
def test_numerical_gradient_matches_calculus(x, seed):
    """For f(x) = x^3 and upstream g, d<f(x), g>/dx = 3 x^2 g (derived by hand)."""
    g = np.random.default_rng(seed).standard_normal(np.shape(x))
    t = Tensor(np.array(x), requires_grad=True)
    numeric = numerical_gradient(lambda u: u * u * u, [t], 0, g)
    np.testing.assert_allclose(numeric, 3 * x ** 2 * g, rtol=1e-6, atol=1e-8)
