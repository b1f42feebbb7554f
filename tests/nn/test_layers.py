"""Layers: shapes, default initialisation, BatchNorm state handling, errors, repr, and PyTorch parity.

The arithmetic of each layer is tested in the functional tests (gradient
checks); here the question is whether the MODULE wires it up right: the
settings it passes, the state it keeps, the parameters it registers. The
strongest check is parity: load the same weights into a torch module and
compare outputs and gradients in float64.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import minires
from minires import nn


def _tensor(array, requires_grad=False):
    return minires.Tensor(array, requires_grad=requires_grad)


# -- shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, in_hw, out_hw",
    [
        (dict(kernel_size=3, padding=1), (8, 8), (8, 8)),
        (dict(kernel_size=3, stride=2, padding=1), (8, 8), (4, 4)),
        (dict(kernel_size=1, stride=2), (7, 7), (4, 4)),
        (dict(kernel_size=(3, 1), padding=(1, 0)), (5, 6), (5, 6)),
        (dict(kernel_size=3, dilation=2), (9, 9), (5, 5)),
    ],
)
def test_conv2d_shapes(kwargs, in_hw, out_hw, rng):
    conv = nn.Conv2d(3, 5, **kwargs)
    y = conv(_tensor(rng.standard_normal((2, 3) + in_hw).astype(np.float32)))
    assert y.shape == (2, 5) + out_hw and y.dtype == np.float32


def test_other_layer_shapes(rng):
    x = _tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    assert nn.MaxPool2d(3, stride=2, padding=1)(x).shape == (2, 4, 4, 4)
    assert nn.MaxPool2d(2)(x).shape == (2, 4, 4, 4)
    assert nn.AvgPool2d(2)(x).shape == (2, 4, 4, 4)
    assert nn.AdaptiveAvgPool2d(1)(x).shape == (2, 4, 1, 1)
    assert nn.Flatten()(x).shape == (2, 256)
    assert nn.Flatten(2)(x).shape == (2, 4, 64)
    assert nn.Identity(54, unused=1)(x) is x
    assert nn.ReLU()(x).shape == x.shape
    assert nn.BatchNorm2d(4)(x).shape == x.shape
    assert nn.Linear(4, 3)(_tensor(rng.standard_normal((5, 4)).astype(np.float32))).shape == (5, 3)
    assert nn.BatchNorm1d(4)(_tensor(rng.standard_normal((5, 4)).astype(np.float32))).shape == (5, 4)
    assert nn.BatchNorm1d(4)(_tensor(rng.standard_normal((5, 4, 3)).astype(np.float32))).shape == (5, 4, 3)


def test_parameters_are_registered_with_the_right_shapes():
    conv = nn.Conv2d(3, 8, (3, 5), bias=False)
    assert [(n, p.shape) for n, p in conv.named_parameters()] == [("weight", (8, 3, 3, 5))]
    assert conv.bias is None
    lin = nn.Linear(6, 2)
    assert [(n, p.shape) for n, p in lin.named_parameters()] == [("weight", (2, 6)), ("bias", (2,))]
    bn = nn.BatchNorm2d(5, affine=False)
    assert list(bn.parameters()) == [] and list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    assert list(nn.BatchNorm2d(5, track_running_stats=False).state_dict()) == ["weight", "bias"]


# -- default initialisation ------------------------------------------------------------


def test_conv_and_linear_default_init_is_uniform_one_over_sqrt_fan_in():
    nn.init.manual_seed(0)
    for layer, fan_in in [(nn.Conv2d(64, 64, 3), 64 * 9), (nn.Linear(512, 100), 512)]:
        bound = 1 / math.sqrt(fan_in)
        w = layer.weight.data.astype(np.float64).ravel()
        assert layer.weight.dtype == layer.bias.dtype == np.float32
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
        # U(-b, b) has variance b^2/3; its sample variance has standard error b^2 sqrt((1/5 - 1/9)/n).
        assert abs(w.var() - bound**2 / 3) < 6 * bound**2 * math.sqrt((1 / 5 - 1 / 9) / w.size)
        assert np.abs(layer.bias.data).max() <= bound


def test_batchnorm_default_state():
    bn = nn.BatchNorm2d(3)
    np.testing.assert_array_equal(bn.weight.data, np.ones(3))
    np.testing.assert_array_equal(bn.bias.data, np.zeros(3))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    np.testing.assert_array_equal(bn.running_var, np.ones(3))
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked) == 0
    assert all(a.dtype == np.float32 for a in (bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var))


# -- BatchNorm state ------------------------------------------------------------


def test_batchnorm_updates_running_stats_in_training_only(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2).double()
    batches = [rng.normal(loc=2.0, scale=3.0, size=(4, 3, 5, 5)) for _ in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for k, b in enumerate(batches, start=1):
        bn(_tensor(b))
        # The documented update, with the UNBIASED variance (n - 1 in the denominator).
        mean = 0.8 * mean + 0.2 * b.mean(axis=(0, 2, 3))
        var = 0.8 * var + 0.2 * b.var(axis=(0, 2, 3), ddof=1)
        assert int(bn.num_batches_tracked) == k
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)

    bn.eval()
    x = rng.standard_normal((2, 3, 5, 5))
    y = bn(_tensor(x))
    assert int(bn.num_batches_tracked) == 3
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)  # eval leaves the statistics alone
    shape = (1, 3, 1, 1)
    expected = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + bn.eps)  # gamma 1, beta 0
    np.testing.assert_allclose(y.data, expected, rtol=1e-10, atol=1e-12)


def test_batchnorm_momentum_none_is_a_cumulative_average(rng):
    bn = nn.BatchNorm1d(4, momentum=None).double()
    batches = [rng.normal(size=(6, 4)) * (k + 1) for k in range(4)]
    for b in batches:
        bn(_tensor(b))
    np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0), rtol=1e-12)


def test_eval_before_any_training_warns_once(rng):
    bn = nn.BatchNorm2d(2).eval()
    x = _tensor(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    with pytest.warns(UserWarning, match="running statistics were never updated"):
        bn(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x)  # once per module is enough
        trained = nn.BatchNorm2d(2)
        trained(x)
        trained.eval()(x)  # statistics exist: no warning
        nn.BatchNorm2d(2, track_running_stats=False).eval()(x)  # nothing to warn about: batch statistics
    loaded = nn.BatchNorm2d(2)
    loaded.load_state_dict(trained.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.eval()(x)  # loaded statistics count as updated ones


def test_batchnorm_without_running_stats_uses_batch_statistics_in_eval(rng):
    bn = nn.BatchNorm2d(3, track_running_stats=False).double()
    x = _tensor(rng.standard_normal((4, 3, 2, 2)))
    np.testing.assert_allclose(bn.eval()(x).data, bn.train()(x).data, rtol=1e-12)


def test_layers_reject_bad_inputs(rng):
    x = _tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 4, H, W\), got \(2, 3, 4, 4\)"):
        nn.Conv2d(4, 8, 3)(x)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(5\) got an input with 3 channels"):
        nn.BatchNorm2d(5)(x)
    with pytest.raises(ValueError, match="4-D input"):
        nn.BatchNorm2d(3)(_tensor(np.zeros((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="2-D"):
        nn.BatchNorm1d(3)(x)
    with pytest.raises(ValueError, match=r"Linear\(in_features=5\) expects input of shape \(\.\.\., 5\)"):
        nn.Linear(5, 2)(_tensor(np.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
        nn.Conv2d(3, 4, kernel_size=2.5)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        nn.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        nn.Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="only output_size 1"):
        nn.AdaptiveAvgPool2d(2)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None, got 1.5"):
        nn.BatchNorm2d(3, momentum=1.5)
    for bad in ("a", True):
        with pytest.raises(ValueError, match=f"momentum must be a number in .* got {bad!r}"):
            nn.BatchNorm2d(3, momentum=bad)
        with pytest.raises(ValueError, match=f"eps must be a positive number, got {bad!r}"):
            nn.BatchNorm2d(3, eps=bad)


def test_to_float64_network_runs_in_float64(rng):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).double()
    y = net(_tensor(rng.standard_normal((2, 3, 5, 5))))
    assert y.dtype == np.float64
    y.sum().backward()
    assert all(p.grad.dtype == np.float64 for p in net.parameters())


def test_trained_network_state_round_trip(rng):
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2))

    src = build()
    for _ in range(2):  # move the BN statistics away from their initial values
        src(_tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32)))
    state = src.state_dict()
    src.double().float()  # a dtype round trip must not change any value
    for key, value in src.state_dict().items():
        assert value.dtype == state[key].dtype, key
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    dst = build()
    dst.load_state_dict(state)
    assert int(dst[1].num_batches_tracked) == 2
    x = _tensor(rng.standard_normal((3, 3, 6, 6)).astype(np.float32))
    np.testing.assert_array_equal(src.eval()(x).data, dst.eval()(x).data)


# -- repr ------------------------------------------------------------


def test_repr_matches_pytorch_format():
    assert repr(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)) == (
        "Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"
    )
    assert repr(nn.Conv2d(3, 8, 1)) == "Conv2d(3, 8, kernel_size=(1, 1), stride=(1, 1))"
    assert repr(nn.BatchNorm2d(16)) == "BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(nn.Linear(64, 10)) == "Linear(in_features=64, out_features=10, bias=True)"
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Sequential(nn.ReLU(), nn.Flatten())) == (
        "Sequential(\n  (0): ReLU()\n  (1): Flatten(start_dim=1, end_dim=-1)\n)"
    )


def test_repr_equals_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")

    def build(lib):
        return [
            lib.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), lib.Conv2d(3, 8, (3, 1), dilation=2),
            lib.BatchNorm2d(16, eps=1e-3, momentum=None), lib.BatchNorm1d(4, affine=False, track_running_stats=False),
            lib.Linear(3, 2, bias=False), lib.ReLU(), lib.ReLU(inplace=True), lib.AvgPool2d(2),
            lib.AvgPool2d(3, stride=2, padding=1), lib.AdaptiveAvgPool2d(1), lib.Flatten(0, 2), lib.Identity(),
        ]

    for ours, theirs in zip(build(nn), build(torch.nn)):
        # Recent torch prints a keyword-only `bias` flag of BatchNorm, which minires does not have.
        assert repr(ours) == re.sub(r", bias=(True|False)(?=, track_running_stats)", "", repr(theirs))


# -- PyTorch parity (float64) ------------------------------------------------------------


def _load_from_torch(ours, theirs):
    """Copy torch's state into ours through load_state_dict (torch tensors are accepted as values)."""
    ours.load_state_dict(theirs.state_dict())


def _randomise_torch(module, torch, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _compare_forward_backward(ours, theirs, x, rng, torch, rtol=1e-10):
    """Forward both, backward a RANDOM upstream gradient, compare output and every gradient."""
    xo = _tensor(x, requires_grad=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yo, yt = ours(xo), theirs(xt)
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), rtol=rtol, atol=1e-12)
    g = rng.standard_normal(yo.shape)
    yo.backward(g)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(xo.grad, xt.grad.numpy(), rtol=rtol, atol=1e-12)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, their_params[name].grad.numpy(), rtol=rtol, atol=1e-11, err_msg=name)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1, bias=False),
        dict(kernel_size=(3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
        dict(kernel_size=1, stride=2, bias=False),
    ],
)
def test_conv2d_matches_torch(kwargs, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    theirs = torch.nn.Conv2d(3, 4, **kwargs).double()
    ours = nn.Conv2d(3, 4, **kwargs).double()
    _load_from_torch(ours, theirs)
    _compare_forward_backward(ours, theirs, rng.standard_normal((2, 3, 7, 6)), rng, torch)


def test_linear_matches_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    for bias in (True, False):
        theirs = torch.nn.Linear(5, 3, bias=bias).double()
        ours = nn.Linear(5, 3, bias=bias).double()
        _load_from_torch(ours, theirs)
        _compare_forward_backward(ours, theirs, rng.standard_normal((4, 5)), rng, torch)


@pytest.mark.parametrize(
    "name, shape, kwargs",
    [
        ("BatchNorm2d", (4, 3, 5, 5), dict()),
        ("BatchNorm2d", (3, 3, 2, 4), dict(momentum=None, eps=1e-3)),
        ("BatchNorm1d", (6, 3), dict(momentum=0.3)),
        ("BatchNorm1d", (4, 3, 5), dict()),
        ("BatchNorm2d", (4, 3, 5, 5), dict(affine=False)),
    ],
)
def test_batchnorm_matches_torch_over_several_steps(name, shape, kwargs, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    theirs = getattr(torch.nn, name)(3, **kwargs).double()
    _randomise_torch(theirs, torch, seed=1)
    ours = getattr(nn, name)(3, **kwargs).double()
    _load_from_torch(ours, theirs)
    for _ in range(3):
        x = rng.normal(loc=1.5, scale=2.0, size=shape)
        _compare_forward_backward(ours, theirs, x, rng, torch)
        ours.zero_grad()
        theirs.zero_grad()
    their_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, their_state[key].numpy(), rtol=1e-12, err_msg=key)
    assert int(ours.num_batches_tracked) == 3
    ours.eval()
    theirs.eval()
    _compare_forward_backward(ours, theirs, rng.standard_normal(shape), rng, torch)


@pytest.mark.parametrize(
    "name, args, kwargs",
    [
        ("MaxPool2d", (3,), dict(stride=2, padding=1)),
        ("MaxPool2d", (2,), dict()),
        ("AvgPool2d", (2,), dict()),
        ("AvgPool2d", (3,), dict(stride=2, padding=1)),
        ("AdaptiveAvgPool2d", (1,), dict()),
    ],
)
def test_pools_match_torch(name, args, kwargs, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    ours, theirs = getattr(nn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)
    _compare_forward_backward(ours, theirs, rng.standard_normal((2, 3, 8, 7)), rng, torch)


def test_small_network_matches_torch_and_shares_state_dict_keys(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")

    def build(lib):
        return lib.Sequential(
            lib.Conv2d(3, 8, 3, padding=1, bias=False), lib.BatchNorm2d(8), lib.ReLU(),
            lib.MaxPool2d(2), lib.Conv2d(8, 8, 3, stride=2, padding=1), lib.BatchNorm2d(8), lib.ReLU(),
            lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(8, 5),
        )

    theirs = build(torch.nn).double()
    _randomise_torch(theirs, torch, seed=2)
    ours = build(nn).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _load_from_torch(ours, theirs)
    _compare_forward_backward(ours, theirs, rng.standard_normal((4, 3, 8, 8)), rng, torch)
    ours.eval()
    theirs.eval()
    _compare_forward_backward(ours, theirs, rng.standard_normal((4, 3, 8, 8)), rng, torch)
    # And back: our state dict loads into torch and reproduces our numbers.
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((2, 3, 8, 8))
    np.testing.assert_allclose(ours(_tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)


def test_batch_norm_mirrors_the_batch_count_on_the_host_for_device_buffers(monkeypatch):
    """On the GPU, num_batches_tracked is read once and then counted on the host (no sync per forward);
    load_state_dict and reset_running_stats make it read again. The device is faked: reads are counted."""
    import minires.nn.normalization as normalization

    bn = nn.BatchNorm2d(2, momentum=None).to(dtype=np.float64)
    reads = []

    class CountingBuffer(np.ndarray):
        def __int__(self):
            reads.append(1)
            return int(np.asarray(self))

    bn.num_batches_tracked = np.array(3, dtype=np.int64).view(CountingBuffer)
    monkeypatch.setattr(normalization, "_on_gpu", lambda a: isinstance(a, CountingBuffer))
    x = minires.Tensor(np.random.default_rng(0).standard_normal((4, 2, 3, 3)))
    for _ in range(3):
        bn(x)
    assert len(reads) == 1 and bn._batches_tracked() == 6 and int(np.asarray(bn.num_batches_tracked)) == 6
    bn.load_state_dict({**bn.state_dict(), "num_batches_tracked": np.array(10)})
    bn(x)
    assert len(reads) == 2 and bn._batches_tracked() == 11
    bn.reset_running_stats()
    assert bn._batches_tracked() == 0 and len(reads) == 3
