"""The fast set's fused relu(batch_norm(x) + residual): the Function, and bn_relu on a BatchNorm2d module.

The fused Function must be indistinguishable from the three separate
operations: gradient checks (float64, central differences, random upstream
gradient), values, gradients and running statistics against the unfused
composition, and the same argument errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from block_cases import GRADCHECK_CASES, randomise
from hypothesis import given, settings
from hypothesis import strategies as st

import minires
from minires import Tensor, gradcheck, nn
from minires.fast.fused import _stock, batch_norm_relu, bn_relu
from minires.models import BasicBlock
from minires.nn.functional import batch_norm, relu


@st.composite
def cases(draw):
    """(shape, seed, weight?, bias?, residual?) for a 2-D or 4-D float64 input."""
    four_d = draw(st.booleans())
    n = draw(st.integers(2, 4))
    c = draw(st.integers(1, 4))
    shape = (n, c, draw(st.integers(1, 4)), draw(st.integers(1, 3))) if four_d else (n, c)
    return shape, draw(st.integers(0, 2**32 - 1)), draw(st.booleans()), draw(st.booleans()), draw(st.booleans())


def _tensors(shape, seed, has_w, has_b, has_r):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = Tensor(rng.standard_normal(shape) * 1.5 + 0.3, requires_grad=True)
    w = Tensor(rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c), requires_grad=True) if has_w else None
    b = Tensor(rng.standard_normal(c), requires_grad=True) if has_b else None
    r = Tensor(rng.standard_normal(shape), requires_grad=True) if has_r else None
    return x, w, b, r


@settings(max_examples=25)
@given(cases())
def test_gradcheck(case):
    shape, seed, has_w, has_b, has_r = case
    x, w, b, r = _tensors(shape, seed, has_w, has_b, has_r)
    inputs = [t for t in (x, w, b, r) if t is not None]

    def fn(*ts):
        ts = list(ts)
        x_ = ts.pop(0)
        w_ = ts.pop(0) if has_w else None
        b_ = ts.pop(0) if has_b else None
        r_ = ts.pop(0) if has_r else None
        return batch_norm_relu(x_, None, None, w_, b_, residual=r_)

    assert gradcheck(fn, inputs, seed=seed)


@settings(max_examples=25)
@given(cases())
def test_same_values_gradients_and_running_stats_as_the_separate_operations(case):
    shape, seed, has_w, has_b, has_r = case
    c = shape[1]
    results = []
    for fused in (True, False):
        x, w, b, r = _tensors(shape, seed, has_w, has_b, has_r)
        running_mean, running_var = np.zeros(c), np.ones(c)
        if fused:
            y = batch_norm_relu(x, running_mean, running_var, w, b, 0.1, 1e-5, residual=r)
        else:
            z = batch_norm(x, running_mean, running_var, w, b, True, 0.1, 1e-5)
            y = relu(z if r is None else z + r)
        upstream = np.random.default_rng(seed + 7).standard_normal(shape)
        y.backward(Tensor(upstream))
        grads = [t.grad for t in (x, w, b, r) if t is not None]
        results.append((y.data, grads, running_mean, running_var))
    (y1, g1, m1, v1), (y2, g2, m2, v2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    for a, b_ in zip(g1, g2):
        np.testing.assert_allclose(a, b_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(m1, m2, rtol=1e-12)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32), requires_grad=True)
    r = Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32), requires_grad=True)
    y = batch_norm_relu(x, None, None, residual=r)
    y.backward(Tensor(rng.standard_normal(y.shape).astype(np.float32)))
    assert y.dtype == x.grad.dtype == r.grad.dtype == np.float32


def test_bad_residual_is_refused_with_a_clear_error():
    x = Tensor(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"residual has shape \(2, 3, 4, 5\) but x has shape \(2, 3, 4, 4\)"):
        batch_norm_relu(x, None, None, residual=Tensor(np.zeros((2, 3, 4, 5))))
    with pytest.raises(TypeError, match="residual has dtype float32 but x has dtype float64"):
        batch_norm_relu(x, None, None, residual=Tensor(np.zeros((2, 3, 4, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_norm_relu(Tensor(np.zeros((1, 3))), None, None)  # the checks batch_norm makes apply too
    with pytest.raises(ValueError, match="momentum must be a number in"):
        batch_norm_relu(x, None, None, momentum=2.0)


# ---------------------------------------------------------------------------
# bn_relu: a BatchNorm2d module fused with its ReLU
# ---------------------------------------------------------------------------


def _bn_pair(c, seed):
    """Two BatchNorm2d with the same random weight, bias and running statistics."""
    rng = np.random.default_rng(seed)
    w, b, m, v = rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)
    layers = []
    for _ in range(2):
        bn = nn.BatchNorm2d(c).to(dtype=np.float64)
        bn.weight.data[...], bn.bias.data[...] = w, b
        bn.running_mean[...], bn.running_var[...] = m, v
        bn.num_batches_tracked += 1  # statistics as if trained (eval mode would warn otherwise)
        layers.append(bn)
    return layers


@pytest.mark.parametrize("with_residual", [True, False])
def test_bn_relu_matches_relu_of_the_module_output(with_residual):
    training = True
    rng = np.random.default_rng(5)
    x_data, r_data = rng.standard_normal((3, 4, 5, 5)), rng.standard_normal((3, 4, 5, 5))
    upstream = rng.standard_normal((3, 4, 5, 5))
    fused_bn, plain_bn = _bn_pair(4, 6)
    outputs = []
    for bn, fused in ((fused_bn, True), (plain_bn, False)):
        bn.train(training)
        x = Tensor(x_data, requires_grad=True)
        r = Tensor(r_data, requires_grad=True) if with_residual else None
        y = bn_relu(bn, x, residual=r) if fused else relu(bn(x) if r is None else bn(x) + r)
        y.backward(Tensor(upstream))
        outputs.append([y.data, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var]
                       + ([r.grad] if with_residual else []))
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert int(fused_bn.num_batches_tracked) == int(plain_bn.num_batches_tracked) == (2 if training else 1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_refused_input_does_not_count_a_batch(momentum):
    """num_batches_tracked counts only batches that were normalised (it sets momentum=None's average)."""
    bn = nn.BatchNorm2d(3, momentum=momentum).to(dtype=np.float64)
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="residual has shape"):
        bn_relu(bn, x, residual=Tensor(np.zeros((2, 3, 4, 5))))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(Tensor(np.zeros((1, 3, 1, 1))))
    assert int(bn.num_batches_tracked) == 0
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    bn_relu(bn, x)
    bn(x)
    assert int(bn.num_batches_tracked) == 2
    if momentum is None:  # cumulative average of the two batches' means (the same x twice)
        np.testing.assert_allclose(bn.running_mean, x.data.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_errors_name_the_function_called():
    with pytest.raises(TypeError, match="batch_norm_relu needs a floating-point x"):
        batch_norm_relu(Tensor(np.zeros((2, 3), dtype=np.int64)), None, None)



# ---------------------------------------------------------------------------
# The fused forward (training mode, nothing watching) is the textbook forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls, in_planes, planes, stride, kwargs", GRADCHECK_CASES)
def test_fused_forward_equals_the_layer_by_layer_forward(cls, in_planes, planes, stride, kwargs):
    """Same output, input and parameter gradients and running statistics, fused or not (float64).

    A registered tap makes a block run its layers one by one (the taps need
    F(x) and s(x) as tensors); without one, training mode runs each BN + ReLU
    (+ addition) as one BatchNormReLUTrain.
    """
    rng = np.random.default_rng(21)
    x_data = rng.standard_normal((3, in_planes, 5, 5))
    runs = []
    for fused in (True, False):
        block = randomise(cls(in_planes, planes, stride=stride, **kwargs).double(), 20).train()
        if not fused:
            block.add_tap(lambda *args: None)
        x = minires.Tensor(x_data, requires_grad=True)
        y = block(x)
        assert (y._ctx.fn.__name__ == "BatchNormReLUTrain") == fused
        y.backward(minires.Tensor(np.random.default_rng(22).standard_normal(y.shape)))
        runs.append((y.data, x.grad, [p.grad for p in block.parameters()], [b.copy() for b in block.buffers()]))
    (y1, gx1, gp1, b1), (y2, gx2, gp2, b2) = runs
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-9, atol=1e-12)
    for a, b in zip(gp1 + b1, gp2 + b2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_eval_mode_and_forward_hooks_take_the_layer_by_layer_path():
    block = randomise(BasicBlock(3, 3).double(), 23)
    x = minires.Tensor(np.random.default_rng(24).standard_normal((2, 3, 4, 4)), requires_grad=True)
    assert block.eval()(x)._ctx.fn.__name__ == "ReLUFunction"
    assert block.train()(x)._ctx.fn.__name__ == "BatchNormReLUTrain"
    seen = []
    block.relu.register_forward_hook(lambda module, inputs, output: seen.append(output))
    block(x)
    assert len(seen) == 2  # the block's ReLU module ran twice (after bn1, after the addition): not fused


def test_only_stock_batch_norms_and_relus_are_fused():
    """A replaced BN (diagnostics swap in Identity), another activation, or a subclass with its own forward
    runs layer by layer."""
    class Scaled(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2.0

    class Renamed(nn.BatchNorm2d):
        pass

    class Leaky(nn.ReLU):
        def forward(self, x):
            return nn.functional.relu(x) - 0.1 * nn.functional.relu(-x)

    bn, relu_ = nn.BatchNorm2d, nn.ReLU
    assert _stock(bn(3), bn) and _stock(Renamed(3), bn) and _stock(relu_(), relu_)
    assert not _stock(Scaled(3), bn) and not _stock(nn.Identity(), bn) and not _stock(Leaky(), relu_)
    patched = nn.BatchNorm2d(3)
    patched.forward = lambda x: x  # an instance's own forward, too
    assert not _stock(patched, bn)
    x = minires.Tensor(np.random.default_rng(25).standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True)
    for attribute, replacement in (("bn2", Scaled(3)), ("relu", Leaky())):
        block = BasicBlock(3, 3).train()
        setattr(block, attribute, replacement)
        y = block(x)
        assert y._ctx.fn.__name__ != "BatchNormReLUTrain"
        textbook = block.relu(block._branch(x) + x)  # the formula with the replacement's forward
        np.testing.assert_allclose(y.data, textbook.data, rtol=1e-5, atol=1e-6)
