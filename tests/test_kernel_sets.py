"""The two kernel sets give the same numbers: kernels, functionals, blocks, a whole ResNet-20, training steps.

``reference`` runs the mathematics in minires/kernels; ``fast`` the CPU
plug-in (threads, chunks, channels-last, fused blocks). Both are chosen
through minires.dispatch; every comparison here runs the SAME code under
``use_kernels("reference")`` and ``use_kernels("fast")``. float64 agrees to
1e-10; float32 to the rounding of a different summation order.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from block_cases import GRADCHECK_CASES, randomise

import minires
from minires import Tensor, dispatch, gradcheck, models, nn
from minires.nn import functional as F
from minires.optim import SGD

SETS = ("reference", "fast")


def _run_both(fn):
    """``fn()`` under each kernel set: a dict set -> result."""
    results = {}
    for name in SETS:
        with minires.use_kernels(name):
            results[name] = fn()
    return results


def _assert_same(results, rtol=1e-10, atol=1e-12):
    ref, fast = results["reference"], results["fast"]
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast):
        if a is None or b is None:
            assert a is None and b is None
            continue
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Choosing the set
# ---------------------------------------------------------------------------


def test_use_kernels_switches_and_restores_even_on_error():
    start = minires.get_kernels()
    with minires.use_kernels("reference"):
        assert minires.get_kernels() == "reference"
        with pytest.raises(RuntimeError):
            with minires.use_kernels("fast"):
                assert minires.get_kernels() == "fast"
                raise RuntimeError("inside")
        assert minires.get_kernels() == "reference"
    assert minires.get_kernels() == start


def test_unknown_set_and_kernel_names_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown kernel set 'turbo'"):
        with minires.use_kernels("turbo"):
            pass
    with pytest.raises(ValueError, match="unknown kernel set"):
        minires.set_kernels("Fast ")
    with pytest.raises(ValueError, match="unknown kernel 'conv3d_forward'"):
        dispatch.kernel("conv3d_forward", np.zeros(1))
    with pytest.raises(ValueError, match="no reference kernel"):
        dispatch.register("conv3d_forward", "cpu")


def test_the_reference_set_runs_the_functions_in_minires_kernels():
    from minires.kernels import batch_norm, conv, cross_entropy

    x = np.zeros((1, 1, 2, 2))
    with minires.use_kernels("reference"):
        assert dispatch.kernel("conv2d_forward", x) is conv.conv2d_forward
        assert dispatch.kernel("batch_norm_train_backward", x) is batch_norm.batch_norm_train_backward
    with minires.use_kernels("fast"):
        from minires.fast import conv as fast_conv

        assert dispatch.kernel("conv2d_forward", x) is fast_conv.conv2d_forward
        # An operation no plug-in covers on this device falls back to the reference.
        assert dispatch.kernel("cross_entropy_forward", x) is cross_entropy.cross_entropy_forward


@pytest.mark.parametrize("value, expected", [("reference", "reference"), ("fast", "fast"), ("", "fast")])
def test_the_environment_variable_chooses_the_set(value, expected):
    env = dict(os.environ, MINIRES_KERNELS=value)
    out = subprocess.run([sys.executable, "-c", "import minires; print(minires.get_kernels())"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_a_bad_environment_value_is_a_clear_error():
    env = dict(os.environ, MINIRES_KERNELS="quick")
    code = "import minires, numpy as np; from minires.nn import functional as F; F.relu(np.ones(2))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "MINIRES_KERNELS='quick' is not a kernel set" in out.stderr


# ---------------------------------------------------------------------------
# Functionals: same outputs and gradients
# ---------------------------------------------------------------------------


def _grads_of(fn, arrays, upstream_seed=0):
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    y = fn(*tensors)
    g = np.random.default_rng(upstream_seed).standard_normal(y.shape).astype(y.dtype)
    y.backward(Tensor(g))
    return [y.data.copy()] + [t.grad.copy() for t in tensors]


CONV_CASES = [((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1), ((3, 4, 9, 9), (5, 4, 3, 3), 2, 1, 1),
              ((2, 2, 8, 8), (3, 2, 1, 1), 2, 0, 1), ((2, 3, 9, 8), (2, 3, 3, 2), 1, 2, 2),
              ((2, 64, 4, 6), (64, 64, 3, 3), 1, 1, 1)]  # the fast set's Winograd convolution


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", CONV_CASES)
def test_conv2d(rng, x_shape, w_shape, stride, padding, dilation):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    results = _run_both(lambda: _grads_of(
        lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=stride, padding=padding, dilation=dilation), [x, w, b]))
    _assert_same(results)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4)])
def test_batch_norm(rng, training, shape):
    c = shape[1]
    x, w, b = rng.standard_normal(shape) * 2 + 1, rng.uniform(0.5, 2, c), rng.standard_normal(c)
    stats = {name: (rng.standard_normal(c), rng.uniform(0.5, 2, c)) for name in SETS}

    def run(name):
        mean, var = (s.copy() for s in stats["reference"])
        out = _grads_of(lambda x_, w_, b_: F.batch_norm(x_, mean, var, w_, b_, training=training), [x, w, b])
        return out + [mean, var]  # the running statistics, updated in place in training mode

    results = {name: None for name in SETS}
    for name in SETS:
        with minires.use_kernels(name):
            results[name] = run(name)
    _assert_same(results)


@pytest.mark.parametrize("op", ["relu", "max_pool", "avg_pool", "global_pool"])
def test_relu_and_pooling(rng, op):
    x = rng.standard_normal((2, 3, 7, 6))
    fns = {
        "relu": F.relu,
        "max_pool": lambda t: F.max_pool2d(t, 3, stride=2, padding=1),
        "avg_pool": lambda t: F.avg_pool2d(t, 3, stride=2, padding=1),
        "global_pool": lambda t: F.adaptive_avg_pool2d(t, 1),
    }
    _assert_same(_run_both(lambda: _grads_of(fns[op], [x])))


@pytest.mark.parametrize("name", SETS)
def test_gradcheck_conv_and_batch_norm_under_each_set(name, rng):
    x = Tensor(rng.standard_normal((2, 2, 5, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    gamma = Tensor(rng.uniform(0.5, 2, 3), requires_grad=True)
    beta = Tensor(rng.standard_normal(3), requires_grad=True)
    with minires.use_kernels(name):
        assert gradcheck(lambda x_, w_, g_, b_: F.relu(F.batch_norm(
            F.conv2d(x_, w_, padding=1, stride=2), None, None, g_, b_, training=True)), [x, w, gamma, beta], seed=3)


# ---------------------------------------------------------------------------
# Blocks and whole networks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls, in_planes, planes, stride, kwargs", GRADCHECK_CASES)
def test_blocks_in_training_mode(cls, in_planes, planes, stride, kwargs):
    x = np.random.default_rng(4).standard_normal((3, in_planes, 6, 5))

    def run():
        block = randomise(cls(in_planes, planes, stride=stride, **kwargs).double(), 5).train()
        out = _grads_of(block, [x])
        return out + [p.grad for p in block.parameters()] + [b.copy() for b in block.buffers()]

    _assert_same(_run_both(run))


def _resnet20(dtype):
    model = models.create("resnet20", seed=0)
    return model.to(dtype=dtype)


def _forward_backward(dtype, training):
    model = _resnet20(dtype)
    rng = np.random.default_rng(6)
    if not training:  # running statistics from one batch first, so evaluation has something to use
        with minires.no_grad():
            model.train()(Tensor(rng.standard_normal((8, 3, 32, 32)).astype(dtype)))
    model.train(training)
    x = Tensor(rng.standard_normal((4, 3, 32, 32)).astype(dtype), requires_grad=True)
    loss = F.cross_entropy(model(x), rng.integers(0, 10, 4))
    loss.backward()
    return [loss.data, x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("training", [True, False])
def test_resnet20_float64(training):
    _assert_same(_run_both(lambda: _forward_backward(np.float64, training)))


def test_resnet20_float32():
    _assert_same(_run_both(lambda: _forward_backward(np.float32, True)), rtol=2e-3, atol=2e-5)


def test_resnet20_training_steps_give_the_same_parameters():
    """Three SGD steps (momentum, weight decay) from one seed: the same parameters and statistics."""
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)) for _ in range(3)]

    def train():
        model = _resnet20(np.float64).train()
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for images, labels in batches:
            opt.zero_grad()
            F.cross_entropy(model(Tensor(images)), labels).backward()
            opt.step()
        return [p.data.copy() for p in model.parameters()] + [b.copy() for b in model.buffers()]

    _assert_same(_run_both(train), rtol=1e-9, atol=1e-11)


def test_the_fast_set_fuses_the_blocks_and_the_reference_set_does_not():
    block = nn.Sequential(models.BasicBlock(3, 3)).train()
    x = Tensor(np.random.default_rng(8).standard_normal((2, 3, 4, 4)).astype(np.float32))
    with minires.use_kernels("fast"):
        assert block(x)._ctx.fn.__name__ == "BatchNormReLUTrain"
    with minires.use_kernels("reference"):
        assert block(x)._ctx.fn.__name__ == "ReLUFunction"
