"""batch_norm: gradient checks, PyTorch parity, running statistics, error messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minires import Tensor, gradcheck
from minires.nn.functional.normalization import batch_norm


@st.composite
def bn_inputs(draw):
    """A float64 (x, weight, bias, running stats) case: 2-D or 4-D, small odd shapes."""
    ndim = draw(st.sampled_from([2, 4]))
    # Batch 1 is a valid training batch for 4-D input (statistics over H*W values per channel).
    n = draw(st.integers(1 if ndim == 4 else 2, 4))
    c = draw(st.integers(1, 5))
    spatial = (draw(st.integers(1, 4)), draw(st.integers(1, 3))) if ndim == 4 else ()
    if ndim == 4 and n * spatial[0] * spatial[1] == 1:
        spatial = (2, 1)  # one value per channel cannot be normalised in training mode
    affine = draw(st.sampled_from(["both", "weight", "bias", "none"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (n, c) + spatial
    x = Tensor(rng.standard_normal(shape) * 1.5 + 0.5, requires_grad=True)
    w = Tensor(rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c), requires_grad=True)
    b = Tensor(rng.standard_normal(c), requires_grad=True)
    w = w if affine in ("both", "weight") else None
    b = b if affine in ("both", "bias") else None
    running_mean = rng.standard_normal(c)
    running_var = rng.uniform(0.3, 2.0, c)
    return x, w, b, running_mean, running_var, seed


def _checked_inputs(x, w, b):
    return [t for t in (x, w, b) if t is not None]


def _bn_fn(w_present, b_present, running_mean, running_var, training):
    """fn(*tensors) for gradcheck; running stats are copies, so every call sees the same ones."""

    def fn(x, *params):
        params = list(params)
        w = params.pop(0) if w_present else None
        b = params.pop(0) if b_present else None
        return batch_norm(x, running_mean.copy(), running_var.copy(), w, b, training, 0.1, 1e-5)

    return fn


@settings(max_examples=25)
@given(bn_inputs())
def test_gradcheck_training_mode(case):
    x, w, b, rm, rv, seed = case
    fn = _bn_fn(w is not None, b is not None, rm, rv, training=True)
    assert gradcheck(fn, _checked_inputs(x, w, b), seed=seed)


@settings(max_examples=20)
@given(bn_inputs())
def test_gradcheck_eval_mode(case):
    x, w, b, rm, rv, seed = case
    fn = _bn_fn(w is not None, b is not None, rm, rv, training=False)
    assert gradcheck(fn, _checked_inputs(x, w, b), seed=seed)


@settings(max_examples=10)
@given(bn_inputs())
def test_gradcheck_training_without_running_stats(case):
    x, w, b, _, _, seed = case

    def fn(x, *params):
        params = list(params)
        return batch_norm(
            x, None, None, params.pop(0) if w is not None else None, params.pop(0) if b is not None else None, True
        )

    assert gradcheck(fn, _checked_inputs(x, w, b), seed=seed)


def test_eval_backward_is_the_affine_map(rng):
    x = Tensor(rng.standard_normal((3, 4, 2, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal(4), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    g = rng.standard_normal((3, 4, 2, 5))
    batch_norm(x, rm, rv, w, b, False, eps=1e-3).backward(g)
    per_channel = (w.data / np.sqrt(rv + 1e-3)).reshape(1, 4, 1, 1)
    np.testing.assert_allclose(x.grad, g * per_channel, rtol=1e-13)
    xhat = (x.data - rm.reshape(1, 4, 1, 1)) / np.sqrt(rv.reshape(1, 4, 1, 1) + 1e-3)
    np.testing.assert_allclose(w.grad, (g * xhat).sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(b.grad, g.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_weight_grad_only_when_x_needs_none(rng):
    x_data = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal(x_data.shape)
    w1 = Tensor(rng.standard_normal(3), requires_grad=True)
    w2 = Tensor(w1.data.copy(), requires_grad=True)
    x_grad = Tensor(x_data, requires_grad=True)
    batch_norm(Tensor(x_data), None, None, w1, None, True).backward(g)
    batch_norm(x_grad, None, None, w2, None, True).backward(g)
    np.testing.assert_allclose(w1.grad, w2.grad, rtol=1e-13)


def test_second_backward_with_retained_graph_doubles_gradients(rng):
    # The backward must not consume what it saved (nor write into the upstream gradient).
    x = Tensor(rng.standard_normal((4, 3, 2, 2)), requires_grad=True)
    w = Tensor(rng.standard_normal(3), requires_grad=True)
    g = rng.standard_normal((4, 3, 2, 2))
    g_copy = g.copy()
    y = batch_norm(x, None, None, w, None, True)
    y.backward(g, retain_graph=True)
    first_x, first_w = x.grad.copy(), w.grad.copy()
    y.backward(g)
    np.testing.assert_allclose(x.grad, 2 * first_x, rtol=1e-13)
    np.testing.assert_allclose(w.grad, 2 * first_w, rtol=1e-13)
    np.testing.assert_array_equal(g, g_copy)


# ---------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------


def test_training_output_has_bias_mean_and_weight_scale(rng):
    x = Tensor(rng.standard_normal((8, 3, 5, 4)) * 4 + 7)
    w, b = Tensor(np.array([2.0, -0.5, 1.0])), Tensor(np.array([1.0, 0.0, -3.0]))
    y = batch_norm(x, None, None, w, b, True, eps=0.0).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), b.data, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), w.data**2, rtol=1e-12)


def test_eval_output_of_a_sample_does_not_depend_on_the_batch(rng):
    x = rng.standard_normal((5, 3, 4, 4))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    w, b = Tensor(rng.standard_normal(3)), Tensor(rng.standard_normal(3))
    whole = batch_norm(Tensor(x), rm, rv, w, b, False).data
    alone = batch_norm(Tensor(x[2:3]), rm, rv, w, b, False).data
    np.testing.assert_allclose(alone, whole[2:3], rtol=1e-13)


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_running_stats_updated_in_place(rng, kind):
    x = rng.standard_normal((6, 2, 3, 3)) * 3 + 1
    rm, rv = np.zeros(2), np.ones(2)
    running_mean = rm if kind == "array" else Tensor(rm)
    running_var = rv if kind == "array" else Tensor(rv)
    batch_norm(Tensor(x), running_mean, running_var, None, None, True, momentum=0.25)
    # rm/rv are the very arrays passed in (or held by the Tensors).
    np.testing.assert_allclose(rm, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)


def test_eval_mode_leaves_running_stats_alone(rng):
    rm, rv = rng.standard_normal(2), rng.uniform(0.5, 2, 2)
    before = rm.copy(), rv.copy()
    batch_norm(Tensor(rng.standard_normal((4, 2))), rm, rv, None, None, False)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


def test_training_with_one_sample_but_several_pixels_is_allowed(rng):
    y = batch_norm(Tensor(rng.standard_normal((1, 3, 2, 2))), None, None, None, None, True)
    np.testing.assert_allclose(y.data.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)


def test_float32_in_float32_out(rng):
    x = Tensor(rng.standard_normal((4, 3, 5, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(np.ones(3, np.float32), requires_grad=True)
    b = Tensor(np.zeros(3, np.float32), requires_grad=True)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for training in (True, False):
        y = batch_norm(x, rm, rv, w, b, training)
        assert y.dtype == np.float32
        y.backward(rng.standard_normal(y.shape).astype(np.float32))
        assert x.grad.dtype == w.grad.dtype == b.grad.dtype == np.float32
    assert rm.dtype == rv.dtype == np.float32


# ---------------------------------------------------------------------------
# PyTorch parity (float64)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 4, 5, 6), (2, 2, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch(rng, shape, training):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    g = rng.standard_normal(shape)

    mx, mw, mb = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    m_rm, m_rv = rm.copy(), rv.copy()
    y = batch_norm(mx, m_rm, m_rv, mw, mb, training, 0.2, 1e-4)
    y.backward(g)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(tx, t_rm, t_rv, tw, tb, training, 0.2, 1e-4)
    ty.backward(torch.tensor(g))

    def close(ours, theirs):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)

    close(y.data, ty)
    close(mx.grad, tx.grad)
    close(mw.grad, tw.grad)
    close(mb.grad, tb.grad)
    close(m_rm, t_rm)
    close(m_rv, t_rv)


def test_running_stats_match_torch_after_several_steps(rng):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
    rm, rv = np.zeros(4), np.ones(4)
    t_rm, t_rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for step in range(6):
        x = rng.standard_normal((3, 4, 3, 5)) * (step + 1) + step
        batch_norm(Tensor(x), rm, rv, None, None, True, 0.1, 1e-5)
        torch.nn.functional.batch_norm(torch.tensor(x), t_rm, t_rv, None, None, True, 0.1, 1e-5)
    np.testing.assert_allclose(rm, t_rm.numpy(), rtol=1e-10)
    np.testing.assert_allclose(rv, t_rv.numpy(), rtol=1e-10)
    # ... and eval mode then normalises with them exactly as torch does.
    x = rng.standard_normal((2, 4, 3, 3))
    y = batch_norm(Tensor(x), rm, rv, None, None, False).data
    ty = torch.nn.functional.batch_norm(torch.tensor(x), t_rm, t_rv, None, None, False)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_matches_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
    x = (rng.standard_normal((16, 8, 6, 6)) * 3 + 2).astype(np.float32)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    mx, mw, mb = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    y = batch_norm(mx, rm, rv, mw, mb, True)
    y.backward(g)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    t_rm, t_rv = torch.zeros(8), torch.ones(8)
    ty = torch.nn.functional.batch_norm(tx, t_rm, t_rv, tw, tb, True)
    ty.backward(torch.tensor(g))
    for ours, theirs in ((y.data, ty), (mx.grad, tx.grad), (mw.grad, tw.grad), (mb.grad, tb.grad), (rm, t_rm), (rv, t_rv)):
        theirs = theirs.detach().numpy()
        assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs)) + 1e-6


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 2, 1)])
def test_one_value_per_channel_in_training_is_an_error(shape):
    x = Tensor(np.ones(shape))
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size " + str(shape).replace("(", r"\(").replace(")", r"\)")):
        batch_norm(x, None, None, None, None, True)
    # ... while eval mode handles a single sample.
    batch_norm(x, np.zeros(shape[1]), np.ones(shape[1]), None, None, False)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 5, 6), ()])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\(N, C\), \(N, C, L\) or \(N, C, H, W\)"):
        batch_norm(Tensor(np.ones(shape)), None, None, None, None, True)


@pytest.mark.parametrize("which", ["weight", "bias", "running_mean", "running_var"])
def test_channel_count_mismatch_names_the_argument(which):
    x = Tensor(np.ones((2, 3, 4, 4)))
    args = dict(running_mean=np.zeros(3), running_var=np.ones(3), weight=Tensor(np.ones(3)), bias=Tensor(np.zeros(3)))
    args[which] = Tensor(np.ones(4)) if which in ("weight", "bias") else np.ones(4)
    with pytest.raises(ValueError, match=rf"{which} has shape \(4,\) but x has 3 channels"):
        batch_norm(x, args["running_mean"], args["running_var"], args["weight"], args["bias"], True)


def test_eval_without_running_stats_is_an_error():
    with pytest.raises(ValueError, match="training=False .* running_mean and running_var are None"):
        batch_norm(Tensor(np.ones((2, 3))), None, None, None, None, False)


def test_only_one_running_stat_is_an_error():
    with pytest.raises(ValueError, match="both running_mean and running_var, or neither"):
        batch_norm(Tensor(np.ones((2, 3))), np.zeros(3), None, None, None, True)


def test_running_stat_requiring_grad_is_an_error():
    with pytest.raises(ValueError, match="running_mean must not require grad"):
        batch_norm(Tensor(np.ones((2, 3))), Tensor(np.zeros(3), requires_grad=True), np.ones(3), None, None, True)


def test_dtype_mismatch_is_an_error():
    x = Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="running_var has dtype float64 but x has dtype float32"):
        batch_norm(x, np.zeros(3, np.float32), np.ones(3), None, None, True)
    with pytest.raises(TypeError, match="weight has dtype float64 but x has dtype float32"):
        batch_norm(x, None, None, Tensor(np.ones(3)), None, True)


def test_integer_input_is_an_error():
    with pytest.raises(TypeError, match="floating-point x, got dtype int64"):
        batch_norm(Tensor(np.ones((2, 3), np.int64)), None, None, None, None, True)


def test_float16_input_is_an_error_and_leaves_the_running_stats_alone():
    # Summed in float16, 400 values near 200 overflow (65504) and would write inf into the running stats.
    from minires.fast.fused import batch_norm_relu

    x = Tensor((np.random.default_rng(0).standard_normal((400, 2, 2, 2)) + 200).astype(np.float16))
    rm, rv = np.zeros(2, np.float16), np.ones(2, np.float16)
    for call in (lambda: batch_norm(x, rm, rv, None, None, True), lambda: batch_norm_relu(x, rm, rv)):
        with pytest.raises(TypeError, match="supports float32 and float64 x, got float16"):
            call()
    assert rm.tolist() == [0, 0] and rv.tolist() == [1, 1]


def test_read_only_running_stats_in_training_is_an_error():
    rm = np.zeros(3)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        batch_norm(Tensor(np.ones((2, 3))), rm, np.ones(3), None, None, True)


def test_momentum_none_and_bad_momentum():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(NotImplementedError, match="momentum=None"):
        batch_norm(x, np.zeros(3), np.ones(3), None, None, True, momentum=None)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\], got 1.5"):
        batch_norm(x, np.zeros(3), np.ones(3), None, None, True, momentum=1.5)
    with pytest.raises(ValueError, match=r"eps must be a non-negative number, got -1"):
        batch_norm(x, None, None, None, None, True, eps=-1)


def test_default_arguments_follow_torch():
    # F.batch_norm(x, rm, rv) is eval mode in PyTorch: weight/bias None, training False.
    rm, rv = np.array([1.0, -1.0]), np.array([4.0, 0.25])
    x = np.array([[3.0, 0.0], [1.0, -1.5]])
    y = batch_norm(Tensor(x), rm, rv, eps=0.0).data
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv), rtol=1e-14)

