"""SGD: the update rule (by hand and against torch.optim.SGD), groups, dtype, state dicts, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minires import backend
from minires.nn import Parameter
from minires.optim import SGD

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]


def _params(rng, dtype=np.float64):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def _run(params, opt, grads):
    """Apply precomputed gradients: grads[step][i] for parameter i (None = no gradient)."""
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.copy()
        opt.step()


def test_momentum_rule_by_hand():
    # Two steps of the documented rule on one scalar, with weight decay and dampening:
    #   d1 = g1 + wd*p0;  buf1 = d1;                      p1 = p0 - lr*buf1
    #   d2 = g2 + wd*p1;  buf2 = mu*buf1 + (1-damp)*d2;   p2 = p1 - lr*buf2
    lr, mu, wd, damp = 0.1, 0.9, 0.01, 0.25
    p0, g1, g2 = 1.5, 0.4, -0.7
    d1 = g1 + wd * p0
    p1 = p0 - lr * d1
    d2 = g2 + wd * p1
    buf2 = mu * d1 + (1 - damp) * d2
    p2 = p1 - lr * buf2
    p = Parameter(np.array([p0]))
    opt = SGD([p], lr=lr, momentum=mu, weight_decay=wd, dampening=damp)
    _run([p], opt, [[np.array([g1])], [np.array([g2])]])
    assert p.data[0] == pytest.approx(p2, rel=1e-15)
    assert opt.state[p]["momentum_buffer"][0] == pytest.approx(buf2, rel=1e-15)


def test_nesterov_rule_by_hand():
    # Nesterov: the step is d + mu*buf instead of buf.
    lr, mu = 0.5, 0.8
    p0, g1, g2 = 2.0, 1.0, 3.0
    p1 = p0 - lr * (g1 + mu * g1)  # buf1 = g1
    buf2 = mu * g1 + g2
    p2 = p1 - lr * (g2 + mu * buf2)
    p = Parameter(np.array([p0]))
    _run([p], SGD([p], lr=lr, momentum=mu, nesterov=True), [[np.array([g1])], [np.array([g2])]])
    assert p.data[0] == pytest.approx(p2, rel=1e-15)


CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=1e-4),  # the paper's recipe
    dict(lr=0.05, momentum=0.9, weight_decay=5e-3, nesterov=True),
    dict(lr=0.2, momentum=0.5, dampening=0.3, weight_decay=1e-2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_torch_sgd_float64(config, rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    params = _params(rng)
    theirs = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
    ours_opt, their_opt = SGD(params, **config), torch.optim.SGD(theirs, **config)
    # The middle parameter gets no gradient at step 2 (it must be left alone, as torch does).
    grads = [[rng.standard_normal(s) if not (step == 2 and i == 1) else None for i, s in enumerate(SHAPES)]
             for step in range(6)]
    _run(params, ours_opt, grads)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads):
            t.grad = None if g is None else torch.from_numpy(g.copy())
        their_opt.step()
    for p, t in zip(params, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
        if config.get("momentum", 0):
            np.testing.assert_allclose(
                ours_opt.state[p]["momentum_buffer"], their_opt.state[t]["momentum_buffer"].numpy(),
                rtol=1e-12, atol=1e-12,
            )


def test_param_groups_match_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    params = _params(rng)
    theirs = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]

    def groups(ps):
        return [{"params": ps[:2], "weight_decay": 1e-3}, {"params": ps[2:], "lr": 0.01, "nesterov": True}]

    ours_opt = SGD(groups(params), lr=0.1, momentum=0.9)
    their_opt = torch.optim.SGD(groups(theirs), lr=0.1, momentum=0.9)
    assert ours_opt.param_groups[1]["lr"] == 0.01 and ours_opt.param_groups[0]["lr"] == 0.1
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(5)]
    _run(params, ours_opt, grads)
    for step_grads in grads:
        for t, g in zip(theirs, step_grads):
            t.grad = torch.from_numpy(g.copy())
        their_opt.step()
    for p, t in zip(params, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    lr=st.floats(1e-3, 1.0), momentum=st.floats(0.0, 0.99), weight_decay=st.floats(0.0, 0.1),
    nesterov=st.booleans(), seed=st.integers(0, 2**31),
)
def test_matches_torch_for_random_hyperparameters(lr, momentum, weight_decay, nesterov, seed):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    nesterov = nesterov and momentum > 0
    rng = np.random.default_rng(seed)
    p = Parameter(rng.standard_normal((4, 3)))
    t = torch.nn.Parameter(torch.from_numpy(p.data.copy()))
    kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ours_opt, their_opt = SGD([p], **kw), torch.optim.SGD([t], **kw)
    for _ in range(4):
        g = rng.standard_normal((4, 3))
        p.grad, t.grad = g.copy(), torch.from_numpy(g.copy())
        ours_opt.step()
        their_opt.step()
    np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_params_without_grad_are_skipped(rng):
    params = _params(rng)
    before = params[1].data.copy()
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    _run(params, opt, [[rng.standard_normal(SHAPES[0]), None, rng.standard_normal(SHAPES[2])]])
    np.testing.assert_array_equal(params[1].data, before)  # weight decay must not move it either
    assert params[1] not in opt.state and params[0] in opt.state


def test_float32_stays_float32(rng):
    params = _params(rng, dtype=np.float32)
    arrays = [p.data for p in params]
    opt = SGD(params, lr=np.float64(0.1), momentum=0.9, weight_decay=1e-4, nesterov=True)
    _run(params, opt, [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(2)])
    for p, a in zip(params, arrays):
        assert p.data is a, "the update must be in place"
        assert p.dtype == np.float32 and opt.state[p]["momentum_buffer"].dtype == np.float32


def test_grad_is_not_modified(rng):
    p = Parameter(rng.standard_normal(3))
    g = rng.standard_normal(3)
    p.grad = g.copy()
    SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    np.testing.assert_array_equal(p.grad, g)


def test_zero_grad(rng):
    params = _params(rng)
    opt = SGD(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_state_dict_round_trip_continues_identically(rng):
    params = _params(rng)
    opt = SGD([{"params": params[:1], "lr": 0.3}, {"params": params[1:]}], lr=0.1, momentum=0.9, weight_decay=1e-3)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    _run(params, opt, grads[:3])
    saved = opt.state_dict()
    assert saved["param_groups"][0]["params"] == [0] and saved["param_groups"][1]["params"] == [1, 2]
    assert all(type(s["momentum_buffer"]) is np.ndarray for s in saved["state"].values())
    saved_buffer = saved["state"][0]["momentum_buffer"].copy()

    clones = [Parameter(p.data.copy()) for p in params]
    fresh = SGD([{"params": clones[:1]}, {"params": clones[1:]}], lr=0.5)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["lr"] == 0.3 and fresh.param_groups[1]["momentum"] == 0.9
    _run(params, opt, grads[3:])
    _run(clones, fresh, grads[3:])
    for p, c in zip(params, clones):
        np.testing.assert_array_equal(p.data, c.data)
    np.testing.assert_array_equal(saved["state"][0]["momentum_buffer"], saved_buffer)  # a copy, not a view


def test_load_state_dict_names_mismatches(rng):
    params = _params(rng)
    opt = SGD(params, lr=0.1, momentum=0.9)
    _run(params, opt, [[rng.standard_normal(s) for s in SHAPES]])
    saved = opt.state_dict()
    with pytest.raises(ValueError, match=r"state_dict has 1 parameter group\(s\), the optimizer has 2"):
        SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="group 0 has 3 parameters in the state_dict, 2 in the optimizer"):
        SGD(params[:2], lr=0.1).load_state_dict(saved)
    swapped = [Parameter(np.zeros(s)) for s in [SHAPES[1], SHAPES[0], SHAPES[2]]]
    target = SGD(swapped, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError) as info:
        target.load_state_dict(saved)
    assert "momentum_buffer of parameter 0 has shape (3, 4), the parameter has shape (5,)" in str(info.value)
    assert "momentum_buffer of parameter 1 has shape (5,), the parameter has shape (3, 4)" in str(info.value)
    assert target.state == {} and target.param_groups[0]["momentum"] == 0.9  # nothing was changed
    with pytest.raises(ValueError, match="exactly the keys"):
        opt.load_state_dict({"state": {}})


def test_load_casts_state_to_the_parameter_dtype(rng):
    params = _params(rng)
    opt = SGD(params, lr=0.1, momentum=0.9)
    _run(params, opt, [[rng.standard_normal(s) for s in SHAPES]])
    single = [Parameter(p.data.astype(np.float32)) for p in params]
    opt32 = SGD(single, lr=0.1, momentum=0.9)
    opt32.load_state_dict(opt.state_dict())
    assert all(opt32.state[p]["momentum_buffer"].dtype == np.float32 for p in single)


def test_constructor_errors():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="lr must be a non-negative number, got -0.1"):
        SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires momentum > 0"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="dampening == 0"):
        SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(TypeError, match="not a Tensor"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        SGD([{"params": [p], "betas": (0.9, 0.99)}], lr=0.1)


@pytest.mark.parametrize(
    "bad_grad, message",
    [
        (lambda s: np.zeros((2, 3, 2)), r"parameter 2 \(number 1 of group 1, shape \(2, 3, 2, 2\)\) has a gradient of shape \(2, 3, 2\)"),
        (lambda s: np.zeros(s, dtype=np.float32), r"parameter 2 .* has dtype float64 but its gradient has dtype float32"),
        (lambda s: np.zeros(s, dtype=np.int64), r"parameter 2 .* has dtype float64 but its gradient has dtype int64"),
    ],
    ids=["shape", "float32", "int64"],
)
def test_a_bad_gradient_changes_nothing(rng, bad_grad, message):
    """A gradient that does not fit its parameter is refused before ANY parameter or
    momentum buffer moves: the error must not leave the model half-updated."""
    params = _params(rng)
    opt = SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1, momentum=0.9, weight_decay=1e-2)
    _run(params, opt, [[rng.standard_normal(s) for s in SHAPES]])  # momentum buffers now exist
    data = [p.data.copy() for p in params]
    buffers = [opt.state[p]["momentum_buffer"].copy() for p in params]
    for p, s in zip(params[:2], SHAPES[:2]):
        p.grad = rng.standard_normal(s)
    params[2].grad = bad_grad(SHAPES[2])
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    for p, d, b in zip(params, data, buffers):
        np.testing.assert_array_equal(p.data, d)
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], b)


def test_a_gradient_that_is_not_an_array_is_refused_by_name(rng):
    params = _params(rng)
    before = params[0].data.copy()
    params[0].grad = rng.standard_normal(SHAPES[0])
    params[1].grad = [0.0] * 5
    with pytest.raises(TypeError, match=r"parameter 1 .* has a gradient of type list, not an array"):
        SGD(params, lr=0.1).step()
    np.testing.assert_array_equal(params[0].data, before)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason=f"CUDA not usable: {backend.cupy_unavailable_reason()}")
def test_a_gradient_on_another_device_changes_nothing(rng):
    params = _params(rng)
    before = [p.data.copy() for p in params]
    params[0].grad = rng.standard_normal(SHAPES[0])
    params[1].grad = backend.to_device(rng.standard_normal(SHAPES[1]), "cuda")
    with pytest.raises(RuntimeError, match=r"parameter 1 .* is on cpu but its gradient is on cuda:0"):
        SGD(params, lr=0.1, momentum=0.9).step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
