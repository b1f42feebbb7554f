"""Batch-norm kernels: the fast path against the readable reference, and properties of the math.

The fast path works slice by slice over the batch (cache blocking); most tests
run it with the normal slice size and with tiny slices (one or two samples,
not dividing the batch) so that the slicing itself is exercised.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_threads import force_kernel_threads

from minires.fast import batch_norm as K
from minires.fast.layout import is_channels_last
from minires.kernels import batch_norm as R


def _bn_relu_reference(x, w, b, eps, r=None):
    """relu(bn(x) + r) from the reference kernels: (y, mean, var, inv_std)."""
    z, mean, var, inv_std = R.batch_norm_train_forward(x, w, b, eps)
    return np.maximum(z if r is None else z + r, 0), mean, var, inv_std


def _bn_relu_backward_reference(g, y, x, mean, inv_std, w):
    """(dx, dweight, dbias, dz) of relu(bn(x) + r) from the reference kernels; dz is also d r."""
    dz = g * ~(y <= 0)
    return (*R.batch_norm_train_backward(dz, x, mean, inv_std, w), dz)


@contextlib.contextmanager
def chunk_bytes(value: int):
    """Temporarily change the slice size of the fast path."""
    old = K._CHUNK_BYTES
    K._CHUNK_BYTES = value
    try:
        yield
    finally:
        K._CHUNK_BYTES = old


@st.composite
def bn_case(draw, min_values: int = 2):
    """(x shape, seed, affine flags, slice size) with at least `min_values` values per channel."""
    ndim = draw(st.sampled_from([2, 3, 4]))
    n = draw(st.integers(1, 6))
    c = draw(st.integers(1, 6))
    spatial = tuple(draw(st.integers(1, 7)) for _ in range(ndim - 2))
    shape = (n, c) + spatial
    values_per_channel = n * int(np.prod(spatial, dtype=np.int64))
    if values_per_channel < min_values:
        shape = (n + min_values,) + shape[1:]
    seed = draw(st.integers(0, 2**32 - 1))
    has_weight = draw(st.booleans())
    has_bias = draw(st.booleans())
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 8
    # 1: one sample per slice; 2 rows: slices that need not divide N; default: one slice here.
    slice_bytes = draw(st.sampled_from([1, 2 * row_bytes, K._CHUNK_BYTES]))
    return shape, seed, has_weight, has_bias, slice_bytes


def make(shape, seed, has_weight, has_bias, dtype=np.float64, offset=0.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, size=(1, c) + (1,) * (len(shape) - 2)) + offset)
    w = rng.standard_normal(c) if has_weight else None
    b = rng.standard_normal(c) if has_bias else None
    g = rng.standard_normal(shape)
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(g)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---------------------------------------------------------------------------
# Fast path == reference
# ---------------------------------------------------------------------------


@settings(max_examples=25)
@given(bn_case())
def test_train_forward_fast_matches_reference(case):
    shape, seed, hw, hb, slice_bytes = case
    x, w, b, _ = make(shape, seed, hw, hb)
    ref = R.batch_norm_train_forward(x, w, b, 1e-5)
    with chunk_bytes(slice_bytes):
        fast = K.batch_norm_train_forward(x, w, b, 1e-5)
    for name, f, r in zip(("y", "mean", "var", "inv_std"), fast, ref):
        assert f.shape == r.shape, name
        np.testing.assert_allclose(f, r, rtol=1e-10, atol=1e-12, err_msg=name)


@settings(max_examples=25)
@given(bn_case())
def test_train_backward_fast_matches_reference(case):
    shape, seed, hw, hb, slice_bytes = case
    x, w, b, g = make(shape, seed, hw, hb)
    _, mean, _, inv_std = R.batch_norm_train_forward(x, w, b, 1e-5)
    ref = R.batch_norm_train_backward(g, x, mean, inv_std, w)
    with chunk_bytes(slice_bytes):
        fast = K.batch_norm_train_backward(g, x, mean, inv_std, w)
        no_dx = K.batch_norm_train_backward(g, x, mean, inv_std, w, need_dx=False)
    for name, f, r in zip(("dx", "dweight", "dbias"), fast, ref):
        assert f.shape == r.shape, name
        np.testing.assert_allclose(f, r, rtol=1e-9, atol=1e-11, err_msg=name)
    assert no_dx[0] is None
    np.testing.assert_array_equal(no_dx[1], fast[1])
    np.testing.assert_array_equal(no_dx[2], fast[2])


@settings(max_examples=25)
@given(bn_case(min_values=1))
def test_eval_forward_and_backward_fast_match_reference(case):
    shape, seed, hw, hb, slice_bytes = case
    x, w, b, g = make(shape, seed, hw, hb)
    rng = np.random.default_rng(seed + 1)
    c = shape[1]
    running_mean = rng.standard_normal(c)
    running_var = rng.uniform(0.2, 3.0, c)
    inv_std = 1.0 / np.sqrt(running_var + 1e-5)
    y_ref = R.batch_norm_eval_forward(x, running_mean, running_var, w, b, 1e-5)
    grads_ref = R.batch_norm_eval_backward(g, x, running_mean, inv_std, w)
    with chunk_bytes(slice_bytes):
        y = K.batch_norm_eval_forward(x, running_mean, running_var, w, b, 1e-5)
        grads = K.batch_norm_eval_backward(g, x, running_mean, inv_std, w)
        only_dx = K.batch_norm_eval_backward(g, x, running_mean, inv_std, w, need_dparams=False)
        only_params = K.batch_norm_eval_backward(g, x, running_mean, inv_std, w, need_dx=False)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    for name, f, r in zip(("dx", "dweight", "dbias"), grads, grads_ref):
        np.testing.assert_allclose(f, r, rtol=1e-10, atol=1e-12, err_msg=name)
    assert only_dx[1] is None and only_dx[2] is None
    np.testing.assert_array_equal(only_dx[0], grads[0])
    assert only_params[0] is None
    np.testing.assert_array_equal(only_params[1], grads[1])


@pytest.mark.parametrize("slice_bytes", [1, 3 * 4 * 5 * 7 * 4, 1 << 18])
def test_float32_stays_float32_and_is_close_to_float64(slice_bytes):
    shape = (7, 4, 5, 7)
    x, w, b, g = make(shape, 3, True, True, dtype=np.float32)
    with chunk_bytes(slice_bytes):
        y, mean, var, inv_std = K.batch_norm_train_forward(x, w, b, 1e-5)
        dx, dw, db = K.batch_norm_train_backward(g, x, mean, inv_std, w)
        y_eval = K.batch_norm_eval_forward(x, mean, var, w, b, 1e-5)
        eval_grads = K.batch_norm_eval_backward(g, x, mean, inv_std, w)
    for a in (y, mean, var, inv_std, dx, dw, db, y_eval, *eval_grads):
        assert a.dtype == np.float32
    d = lambda a: a.astype(np.float64)  # noqa: E731
    y64, mean64, var64, inv64 = R.batch_norm_train_forward(d(x), d(w), d(b), 1e-5)
    dx64, dw64, db64 = R.batch_norm_train_backward(d(g), d(x), mean64, inv64, d(w))
    assert rel_err(y, y64) < 1e-5
    assert rel_err(var, var64) < 1e-5
    assert rel_err(dx, dx64) < 1e-5
    assert rel_err(dw, dw64) < 1e-5
    assert rel_err(db, db64) < 1e-5


def test_float32_with_large_channel_mean_keeps_its_digits():
    # |mean| = 1000 standard deviations. The float32 shortcuts E[x^2] - E[x]^2 and
    # sum(g*x) - mean*sum(g) would lose about 3 of float32's 7 digits (worse with
    # a larger batch); the centred sums of the fast path must not.
    shape = (64, 3, 8, 8)
    x, w, b, g = make(shape, 11, True, True, dtype=np.float32, offset=1000.0)
    y, mean, var, inv_std = K.batch_norm_train_forward(x, w, b, 1e-5)
    dx, dw, db = K.batch_norm_train_backward(g, x, mean, inv_std, w)
    d = lambda a: a.astype(np.float64)  # noqa: E731
    y64, mean64, var64, inv64 = R.batch_norm_train_forward(d(x), d(w), d(b), 1e-5)
    dx64, dw64, _ = R.batch_norm_train_backward(d(g), d(x), mean64, inv64, d(w))
    # For this data the shortcuts give relative errors of about 4e-2 (variance) and
    # 3e-5 (dweight); the centred sums stay near 1e-7. y may be off by the
    # rounding of the mean to float32 (spacing 6e-5 at 1000), relative to the std.
    assert rel_err(var, var64) < 1e-5
    assert rel_err(dw, dw64) < 1e-5
    assert rel_err(dx, dx64) < 1e-5
    assert rel_err(y, y64) < 1e-4


# ---------------------------------------------------------------------------
# Properties of the backward formula
# ---------------------------------------------------------------------------


@settings(max_examples=15)
@given(bn_case())
def test_input_gradient_is_orthogonal_to_constants_and_to_xhat(case):
    # The closed form removes from g its per-channel mean and its component along
    # xhat: sum_i dx_i = 0 and, with eps = 0 (xhat exactly unit variance), sum_i dx_i xhat_i = 0.
    shape, seed, hw, hb, slice_bytes = case
    x, w, b, g = make(shape, seed, hw, hb)
    y, mean, var, inv_std = K.batch_norm_train_forward(x, w, b, 0.0)
    with chunk_bytes(slice_bytes):
        dx, _, _ = K.batch_norm_train_backward(g, x, mean, inv_std, w)
    axes = (0,) + tuple(range(2, x.ndim))
    shape_c = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(shape_c)) * inv_std.reshape(shape_c)
    scale = np.abs(g).sum(axis=axes) * np.abs(inv_std) * (1.0 if w is None else np.abs(w)) + 1e-300
    assert np.all(np.abs(dx.sum(axis=axes)) <= 1e-10 * scale)
    assert np.all(np.abs((dx * xhat).sum(axis=axes)) <= 1e-10 * scale)


def test_channel_sum_and_dot_match_numpy(rng):
    a = rng.standard_normal((5, 3, 11))
    b = rng.standard_normal((5, 3, 11))
    np.testing.assert_allclose(K.channel_sum(a), a.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(K.channel_dot(a, b), (a * b).sum(axis=(0, 2)), rtol=1e-12)


def test_non_contiguous_input_gives_the_same_result(rng):
    base = rng.standard_normal((4, 6, 5, 3))
    x = base.transpose(0, 1, 3, 2)  # (4, 6, 3, 5), not C-contiguous
    assert not x.flags.c_contiguous
    fast = K.batch_norm_train_forward(x, None, None, 1e-5)
    ref = R.batch_norm_train_forward(np.ascontiguousarray(x), None, None, 1e-5)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-10, atol=1e-12)
    assert fast[0].shape == x.shape


# ---------------------------------------------------------------------------
# Running statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_update_running_stats_in_place_with_unbiased_variance(rng, momentum):
    x = rng.standard_normal((6, 3, 4, 5)) * 2.0 + 1.5
    running_mean = rng.standard_normal(3)
    running_var = rng.uniform(0.5, 2.0, 3)
    mean_before, var_before = running_mean.copy(), running_var.copy()
    ids = id(running_mean), id(running_var)
    _, mean, var, _ = K.batch_norm_train_forward(x, None, None, 1e-5)
    R.update_running_stats(running_mean, running_var, mean, var, 6 * 4 * 5, momentum)
    assert (id(running_mean), id(running_var)) == ids
    expected_mean = (1 - momentum) * mean_before + momentum * x.mean(axis=(0, 2, 3))
    expected_var = (1 - momentum) * var_before + momentum * x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(running_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(running_var, expected_var, rtol=1e-12)


def test_update_running_stats_keeps_float32_buffers():
    running_mean = np.zeros(2, np.float32)
    running_var = np.ones(2, np.float32)
    R.update_running_stats(running_mean, running_var, np.ones(2, np.float32), np.ones(2, np.float32), 5, 0.1)
    assert running_mean.dtype == np.float32 and running_var.dtype == np.float32
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * 5 / 4, rtol=1e-6)


def test_update_running_stats_needs_two_values():
    with pytest.raises(ValueError, match="at least 2 values per channel, got 1"):
        R.update_running_stats(np.zeros(1), np.ones(1), np.zeros(1), np.zeros(1), 1, 0.1)


# ---------------------------------------------------------------------------
# Channels-last memory and the threaded slices
# ---------------------------------------------------------------------------


def channels_last(a):
    """The same (N, C, H, W) values stored as an (N, H, W, C) buffer (what the fast convolution returns)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 1, 3, 3), (3, 4, 1, 1), (5, 2, 7, 1)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("slice_bytes", [1, 1 << 18])
def test_channels_last_input_matches_reference_and_keeps_its_layout(shape, affine, slice_bytes):
    x, w, b, g = make(shape, 5, affine, affine, offset=1.0)
    x_cl, g_cl = channels_last(x), channels_last(g)
    ref = R.batch_norm_train_forward(x, w, b, 1e-5)
    _, mean, _, inv_std = ref
    with chunk_bytes(slice_bytes):
        fast = K.batch_norm_train_forward(x_cl, w, b, 1e-5)
        # The upstream gradient in x's layout, and in the other one (copied internally).
        backward = [K.batch_norm_train_backward(gin, x_cl, mean, inv_std, w) for gin in (g_cl, g)]
        running_mean, running_var = np.linspace(-1, 1, shape[1]), np.linspace(0.5, 2, shape[1])
        y_eval = K.batch_norm_eval_forward(x_cl, running_mean, running_var, w, b, 1e-5)
        inv_eval = 1.0 / np.sqrt(running_var + 1e-5)
        eval_grads = K.batch_norm_eval_backward(g_cl, x_cl, running_mean, inv_eval, w)
    for f, r in zip(fast, ref):
        np.testing.assert_allclose(f, r, rtol=1e-10, atol=1e-12)
    assert fast[0].strides == x_cl.strides  # y is channels-last like x
    want = R.batch_norm_train_backward(g, x, mean, inv_std, w)
    for grads in backward:
        for f, r in zip(grads, want):
            np.testing.assert_allclose(f, r, rtol=1e-9, atol=1e-11)
        assert grads[0].strides == x_cl.strides
    np.testing.assert_allclose(y_eval, R.batch_norm_eval_forward(x, running_mean, running_var, w, b, 1e-5),
                               rtol=1e-10, atol=1e-12)
    for f, r in zip(eval_grads, R.batch_norm_eval_backward(g, x, running_mean, inv_eval, w)):
        np.testing.assert_allclose(f, r, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(
    __import__("minires.fast.threads", fromlist=["_blas_controller"])._blas_controller() is None,
    reason="threadpoolctl is not installed: the slices are never threaded",
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_threaded_slices_give_the_reference_result(layout):
    x, w, b, g = make((7, 3, 4, 5), 9, True, True)
    prepare = channels_last if layout == "channels_last" else (lambda a: a)
    ref = R.batch_norm_train_forward(x, w, b, 1e-5)
    _, mean, _, inv_std = ref
    with force_kernel_threads(2), chunk_bytes(1):  # one sample per slice, dealt to two threads
        fast = K.batch_norm_train_forward(prepare(x), w, b, 1e-5)
        grads = K.batch_norm_train_backward(prepare(g), prepare(x), mean, inv_std, w)
    for f, r in zip(fast, ref):
        np.testing.assert_allclose(f, r, rtol=1e-10, atol=1e-12)
    for f, r in zip(grads, R.batch_norm_train_backward(g, x, mean, inv_std, w)):
        np.testing.assert_allclose(f, r, rtol=1e-9, atol=1e-11)


def test_float32_channels_last_with_large_channel_mean_keeps_its_digits():
    # The channels-last path centres exactly like the NCHW one (see the NCHW test above).
    x, w, b, g = make((64, 3, 8, 8), 11, True, True, dtype=np.float32, offset=1000.0)
    y, mean, var, inv_std = K.batch_norm_train_forward(channels_last(x), w, b, 1e-5)
    dx, dw, _ = K.batch_norm_train_backward(channels_last(g), channels_last(x), mean, inv_std, w)
    d = lambda a: a.astype(np.float64)  # noqa: E731
    y64, mean64, var64, inv64 = R.batch_norm_train_forward(d(x), d(w), d(b), 1e-5)
    dx64, dw64, _ = R.batch_norm_train_backward(d(g), d(x), mean64, inv64, d(w))
    assert y.dtype == dx.dtype == np.float32
    assert rel_err(var, var64) < 1e-5
    assert rel_err(dw, dw64) < 1e-5
    assert rel_err(dx, dx64) < 1e-5
    assert rel_err(y, y64) < 1e-4


# ---------------------------------------------------------------------------
# Fused relu(bn(x) + residual)
# ---------------------------------------------------------------------------


@settings(max_examples=40)
@given(bn_case(), st.booleans(), st.sampled_from(["nchw", "channels_last", "mixed"]), st.booleans())
def test_fused_relu_matches_the_unfused_reference(case, with_residual, layout, threaded):
    """relu(bn(x) + r), forward and backward, against the composition of the reference kernels.

    float64, every element; slices of one or two samples or the default, on
    one or two threads; x, g and r channels-last or not, r in a layout other
    than x's ("mixed", 4-D only).
    """
    shape, seed, has_weight, has_bias, slice_bytes = case
    x, w, b, g = make(shape, seed, has_weight, has_bias)
    r = np.random.default_rng(seed + 1).standard_normal(shape) if with_residual else None
    four_d = len(shape) == 4
    def lay(a):
        return channels_last(a) if four_d and layout != "nchw" and a is not None else a

    def lay_r(a):
        return a if layout == "mixed" else lay(a)
    y_ref, mean_ref, var_ref, inv_ref = _bn_relu_reference(x, w, b, 1e-5, r)
    grads_ref = _bn_relu_backward_reference(g, y_ref, x, mean_ref, inv_ref, w)
    threads = force_kernel_threads(2) if threaded else contextlib.nullcontext()
    with chunk_bytes(slice_bytes), threads:
        y, mean, var, inv_std = K.batch_norm_relu_train_forward(lay(x), w, b, 1e-5, lay_r(r))
        grads = K.batch_norm_relu_train_backward(lay(g), y, lay(x), mean, inv_std, w, need_dz=with_residual)
    if four_d and layout != "nchw":
        assert is_channels_last(y) or y.flags.c_contiguous  # x's layout (both orders coincide when C or H*W is 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert (y >= 0).all()
    for got, want in zip((mean, var, inv_std), (mean_ref, var_ref, inv_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dw, db, dz = grads
    for got, want in zip((dx, dw, db), grads_ref[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    if with_residual:
        np.testing.assert_array_equal(dz, grads_ref[3])
    else:
        assert dz is None


def test_fused_relu_backward_skips_what_is_not_needed_and_lets_nan_through():
    x, w, b, g = make((5, 3, 4, 4), 2, True, True)
    y, mean, _, inv_std = K.batch_norm_relu_train_forward(x, w, b, 1e-5)
    y_nan = y.copy()
    y_nan[0, 0, 0, 0] = np.nan  # the ReLU passes the gradient through a NaN output, as relu_backward does
    dx, dw, db, dz = K.batch_norm_relu_train_backward(g, y_nan, x, mean, inv_std, w, need_dx=False, need_dz=True)
    assert dx is None
    assert dz[0, 0, 0, 0] == g[0, 0, 0, 0]
    np.testing.assert_array_equal(dz, g * ~(y_nan <= 0))
    want = R.batch_norm_train_backward(dz, x, mean, inv_std, w)
    np.testing.assert_allclose(dw, want[1], rtol=1e-10)
    np.testing.assert_allclose(db, want[2], rtol=1e-10)
