"""The CUDA kernels (minires/cuda) against the reference kernels (minires/kernels), and gradient checks on the GPU.

Every kernel of :mod:`minires.cuda` is compared with the reference of the
same name in :mod:`minires.kernels`, run with NumPy on the host, on
hypothesis-drawn shapes, forward and backward: float32 to ~1e-5 relative,
float64 to ~1e-12 (tolerances are relative to the largest reference value,
because outputs such as dx of batch norm are sums that cancel, so single
elements can be tiny). The tests call the CUDA kernels by name: the reference
functions of minires.kernels would run CuPy arrays through their own array
code, not through the CUDA kernels. ``test_dispatch_reaches_the_cuda_kernels``
proves that under the fast kernel set :mod:`minires.dispatch` hands CuPy
arrays to these same functions (so what is tested here is what training
runs), and that under the reference set it does not.

Gradient checks: ``minires.gradcheck`` perturbs CPU float64 inputs. The
checked functions move their inputs to the GPU with ``Tensor.to("cuda")`` (a
differentiable copy), run the layer there and bring the result back, so the
analytic gradients come from the GPU backward kernels and the numerical ones
from finite differences of the GPU forward kernels.

The whole module skips, with the reason, where no CUDA device is usable.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires
from minires import backend, dispatch
from minires.cuda import batch_norm as cuda_bn
from minires.cuda import im2col as cuda_im2col
from minires.cuda import relu as cuda_relu
from minires.kernels import batch_norm as bn_kernels
from minires.kernels import conv as conv_kernels
from minires.kernels import im2col as im2col_kernels
from minires.kernels import relu as relu_kernels
from minires.nn import functional as F
from minires.tensor import Tensor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not backend.cupy_available(),
        reason=f"no usable CUDA device for the GPU kernels: {backend.cupy_unavailable_reason()}",
    ),
]

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@pytest.fixture(scope="module")
def cp():
    return backend.device("cuda").xp


def to_gpu(a):
    return None if a is None else backend.to_device(a, "cuda")


def to_host(a):
    return None if a is None else backend.to_device(a, "cpu")


def assert_close(gpu, ref, what="", rtol=None):
    """gpu (CuPy) equals ref (NumPy) elementwise within rtol * max(1, max|ref|); same shape and dtype."""
    host = to_host(gpu)
    assert host.shape == ref.shape, f"{what}: shape {host.shape} != {ref.shape}"
    assert host.dtype == ref.dtype, f"{what}: dtype {host.dtype} != {ref.dtype}"
    rtol = RTOL[np.dtype(ref.dtype)] if rtol is None else rtol
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    np.testing.assert_allclose(host, ref, rtol=0, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------
# im2col / col2im / convolution
# ---------------------------------------------------------------------------


@st.composite
def window_case(draw, max_n=3, max_c=4, max_side=9):
    """A valid (x shape, kernel, stride, padding, dilation) with a non-empty output."""
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    out = [im2col_kernels.conv_output_size((h, w)[a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)]
    assume(min(out) >= 1)
    return (n, c, h, w), kernel, stride, padding, dilation


@settings(max_examples=25, deadline=None)
@given(case=window_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_im2col_and_col2im_match_numpy(case, dtype, seed):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    geometry = (kernel, stride, padding, dilation)
    ref = im2col_kernels.im2col(x, *geometry)
    # im2col only copies values: exactly equal, in both layouts.
    np.testing.assert_array_equal(to_host(cuda_im2col.im2col(to_gpu(x), *geometry)), ref)
    k_major = cuda_im2col.im2col(to_gpu(x), *geometry, k_major=True)
    np.testing.assert_array_equal(to_host(k_major), ref.transpose(1, 0, 2).reshape(ref.shape[1], -1))

    cols = rng.standard_normal(ref.shape).astype(dtype)
    ref_x = im2col_kernels.col2im(cols, shape, *geometry)
    assert_close(cuda_im2col.col2im(to_gpu(cols), shape, *geometry), ref_x, "col2im")
    cols_k = np.ascontiguousarray(cols.transpose(1, 0, 2).reshape(cols.shape[1], -1))
    assert_close(cuda_im2col.col2im(to_gpu(cols_k), shape, *geometry, k_major=True), ref_x, "col2im k-major")


def test_col2im_is_deterministic_and_the_adjoint_of_im2col(cp, rng):
    # Heavily overlapping windows: every pixel sums up to 9 entries. A gather
    # adds them in a fixed order, so two runs agree to the last bit.
    shape, geometry = (4, 3, 11, 13), ((3, 3), (1, 1), (1, 1), (1, 1))
    x = to_gpu(rng.standard_normal(shape).astype(np.float32))
    cols = cuda_im2col.im2col(x, *geometry)
    y = to_gpu(rng.standard_normal(cols.shape).astype(np.float32))
    first = cuda_im2col.col2im(y, shape, *geometry)
    second = cuda_im2col.col2im(y, shape, *geometry)
    assert bool((first == second).all())
    # <im2col(x), y> == <x, col2im(y)>, in float64 to keep rounding out of it.
    lhs = float((cols.astype(cp.float64) * y.astype(cp.float64)).sum())
    rhs = float((x.astype(cp.float64) * first.astype(cp.float64)).sum())
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


def test_im2col_64_bit_index_path(monkeypatch, rng):
    # The long long instantiation normally serves only arrays of 2**31 elements;
    # lowering the limit runs it on a small case.
    monkeypatch.setattr(cuda_im2col, "INDEX32_LIMIT", 0)
    x = rng.standard_normal((2, 3, 7, 6))
    geometry = ((3, 2), (2, 1), (1, 0), (1, 2))
    ref = im2col_kernels.im2col(x, *geometry)
    np.testing.assert_array_equal(to_host(cuda_im2col.im2col(to_gpu(x), *geometry)), ref)
    assert_close(cuda_im2col.col2im(to_gpu(ref), x.shape, *geometry), im2col_kernels.col2im(ref, x.shape, *geometry))


@settings(max_examples=25, deadline=None)
@given(case=window_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       c_out=st.integers(1, 5), has_bias=st.booleans())
def test_conv2d_forward_and_backward_match_numpy(case, dtype, seed, c_out, has_bias):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((c_out, shape[1]) + kernel).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if has_bias else None
    geometry = (stride, padding, dilation)
    ref = conv_kernels.conv2d_forward(x, weight, bias, *geometry)
    y = cuda_im2col.conv2d_forward(to_gpu(x), to_gpu(weight), to_gpu(bias), *geometry)
    assert_close(y, ref, "conv2d forward")
    g = rng.standard_normal(ref.shape).astype(dtype)
    ref_grads = conv_kernels.conv2d_backward(x, weight, g, *geometry)
    grads = cuda_im2col.conv2d_backward(to_gpu(x), to_gpu(weight), to_gpu(g), *geometry)
    for got, want, name in zip(grads, ref_grads, ("dx", "dweight", "dbias")):
        assert_close(got, want, f"conv2d {name}")
    # Gradients that are not needed are not computed.
    only_w = cuda_im2col.conv2d_backward(to_gpu(x), to_gpu(weight), to_gpu(g), *geometry,
                                         needs_input_grad=(False, True, False))
    assert only_w[0] is None and only_w[2] is None
    assert_close(only_w[1], ref_grads[1], "conv2d dweight alone")


def test_conv2d_in_chunks_matches_one_chunk(monkeypatch, rng):
    # Big layers are processed a few images at a time; force that on a small one.
    x, w = rng.standard_normal((5, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((5, 4, 9, 8))
    geometry = ((1, 1), (1, 1), (1, 1))
    whole = cuda_im2col.conv2d_forward(to_gpu(x), to_gpu(w), None, *geometry)
    whole_grads = cuda_im2col.conv2d_backward(to_gpu(x), to_gpu(w), to_gpu(g), *geometry)
    monkeypatch.setattr(cuda_im2col, "COLS_BUDGET_BYTES", 2 * 27 * 72 * 8)  # two images per chunk
    assert cuda_im2col._images_per_gemm(5, 27, 72, 8) == 2
    assert_close(cuda_im2col.conv2d_forward(to_gpu(x), to_gpu(w), None, *geometry), to_host(whole))
    for got, want in zip(cuda_im2col.conv2d_backward(to_gpu(x), to_gpu(w), to_gpu(g), *geometry), whole_grads):
        if want is not None:
            assert_close(got, to_host(want))


# ---------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------


@st.composite
def bn_case(draw, max_n=6, max_c=6, max_side=9):
    ndim = draw(st.sampled_from([2, 3, 4]))
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(ndim - 2))
    if n * int(np.prod(spatial, dtype=np.int64)) < 2:
        n += 2  # training needs two values per channel
    return (n, c) + spatial


def _bn_inputs(shape, dtype, seed, affine, offset=0.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    spread = rng.uniform(0.5, 3.0, size=(1, c) + (1,) * (len(shape) - 2))
    x = (rng.standard_normal(shape) * spread + offset).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    g = rng.standard_normal(shape).astype(dtype)
    return x, w, b, g


@settings(max_examples=25, deadline=None)
@given(shape=bn_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1), affine=st.booleans())
def test_batch_norm_train_forward_and_backward_match_numpy(shape, dtype, seed, affine):
    x, w, b, g = _bn_inputs(shape, dtype, seed, affine)
    ref = bn_kernels.batch_norm_train_forward(x, w, b, 1e-5)
    got = cuda_bn.batch_norm_train_forward(to_gpu(x), to_gpu(w), to_gpu(b), 1e-5)
    for a, r, name in zip(got, ref, ("y", "mean", "var", "inv_std")):
        assert_close(a, r.astype(dtype), f"batch_norm {name}")
    mean, inv_std = got[1], got[3]
    ref_grads = bn_kernels.batch_norm_train_backward(g, x, to_host(mean), to_host(inv_std), w)
    grads = cuda_bn.batch_norm_train_backward(to_gpu(g), to_gpu(x), mean, inv_std, to_gpu(w))
    for a, r, name in zip(grads, ref_grads, ("dx", "dweight", "dbias")):
        # The three sums of the closed form lose a few more digits than the forward.
        assert_close(a, r.astype(dtype), f"batch_norm {name}", rtol=10 * RTOL[np.dtype(dtype)])
    no_dx = cuda_bn.batch_norm_train_backward(to_gpu(g), to_gpu(x), mean, inv_std, to_gpu(w), need_dx=False)
    assert no_dx[0] is None
    assert_close(no_dx[1], to_host(grads[1]), rtol=0)


@settings(max_examples=15, deadline=None)
@given(shape=bn_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1), affine=st.booleans())
def test_batch_norm_relu_with_a_residual_matches_numpy(shape, dtype, seed, affine):
    """relu(bn(x) + r), a residual block's ending, on the device against the reference on the host.

    On the GPU a block runs it as the CUDA kernels in sequence (the fused
    relu(bn(x) + r) of minires.fast is CPU-only); the reference is the same
    composition of minires.kernels with NumPy.
    """
    x, w, b, g = _bn_inputs(shape, dtype, seed, affine)
    r = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    z_ref, *ref_stats = bn_kernels.batch_norm_train_forward(x, w, b, 1e-5)
    y_ref = relu_kernels.relu_forward(z_ref + r)
    z, mean, var, inv_std = cuda_bn.batch_norm_train_forward(to_gpu(x), to_gpu(w), to_gpu(b), 1e-5)
    y = cuda_relu.relu_forward(z + to_gpu(r))
    for a, want, name in zip((y, mean, var, inv_std), (y_ref, *ref_stats), ("y", "mean", "var", "inv_std")):
        assert_close(a, want.astype(dtype), f"batch_norm_relu {name}")
    dz_ref = relu_kernels.relu_backward(g, to_host(y))  # dz: the gradient of bn(x) + r, so also of r
    ref_grads = bn_kernels.batch_norm_train_backward(dz_ref, x, to_host(mean), to_host(inv_std), w) + (dz_ref,)
    dz = cuda_relu.relu_backward(to_gpu(g), y)
    grads = cuda_bn.batch_norm_train_backward(dz, to_gpu(x), mean, inv_std, to_gpu(w)) + (dz,)
    for a, want, name in zip(grads, ref_grads, ("dx", "dweight", "dbias", "dz")):
        assert_close(a, want.astype(dtype), f"batch_norm_relu {name}", rtol=10 * RTOL[np.dtype(dtype)])


@settings(max_examples=15, deadline=None)
@given(shape=bn_case(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       momentum=st.floats(0.0, 1.0))
def test_running_statistics_update_on_the_device_matches_numpy(shape, dtype, seed, momentum):
    rng = np.random.default_rng(seed)
    c = shape[1]
    count = int(np.prod(shape)) // c
    stats = [rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype),
             rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)]
    host = [s.copy() for s in stats]
    gpu = [to_gpu(s) for s in stats]
    running_mean_buffer = gpu[0]
    bn_kernels.update_running_stats(host[0], host[1], host[2], host[3], count, momentum)
    cuda_bn.update_running_stats(gpu[0], gpu[1], gpu[2], gpu[3], count, momentum)
    assert gpu[0] is running_mean_buffer  # updated in place
    assert_close(gpu[0], host[0], "running_mean")
    assert_close(gpu[1], host[1], "running_var")


@pytest.mark.parametrize("dtype, offset, spread, rtol", [(np.float32, 1e3, 1e-2, 1e-5), (np.float64, 1e8, 1.0, 1e-9)])
def test_batch_norm_statistics_survive_a_large_mean(rng, dtype, offset, spread, rtol):
    # |mean| / std of 1e5 and 1e8: E[x^2] - E[x]^2 would lose most or all digits
    # of the variance (in float64 too, for the second case); the shifted sums
    # and Chan's merge keep them.
    x = (rng.standard_normal((64, 3, 16, 16)) * spread + offset).astype(dtype)
    _, mean, var, _ = cuda_bn.batch_norm_train_forward(to_gpu(x), None, None, 0.0)
    true = x.astype(np.float64)
    true_mean = true.mean(axis=(0, 2, 3))
    true_var = ((true - true_mean.reshape(1, 3, 1, 1)) ** 2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(to_host(var), true_var.astype(dtype), rtol=rtol)
    np.testing.assert_allclose(to_host(mean), true_mean.astype(dtype), rtol=1e-7)


def test_batch_norm_kernels_are_deterministic(rng):
    # Several blocks per channel (8 x 32 x 32 values), merged in a fixed order: no atomics.
    x, w, b, g = _bn_inputs((8, 4, 32, 32), np.float32, 0, True)
    x, w, b, g = to_gpu(x), to_gpu(w), to_gpu(b), to_gpu(g)
    first = cuda_bn.batch_norm_train_forward(x, w, b, 1e-5)
    second = cuda_bn.batch_norm_train_forward(x, w, b, 1e-5)
    for a, c in zip(first, second):
        assert bool((a == c).all())
    back1 = cuda_bn.batch_norm_train_backward(g, x, first[1], first[3], w)
    back2 = cuda_bn.batch_norm_train_backward(g, x, first[1], first[3], w)
    for a, c in zip(back1, back2):
        assert bool((a == c).all())


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1), transpose=st.booleans())
def test_relu_forward_and_backward_match_numpy(shape, dtype, seed, transpose):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if x.size:
        x.reshape(-1)[0] = 0.0  # the kink: output 0, gradient 0
    x_gpu = to_gpu(x)
    if transpose and x.ndim > 1:
        x, x_gpu = x.T, x_gpu.T  # a non-contiguous view
    y = cuda_relu.relu_forward(x_gpu)
    ref = relu_kernels.relu_forward(x)
    np.testing.assert_array_equal(to_host(y), ref)
    g = rng.standard_normal(ref.shape).astype(dtype)
    np.testing.assert_array_equal(to_host(cuda_relu.relu_backward(to_gpu(g), y)), relu_kernels.relu_backward(g, ref))


def test_relu_propagates_nan_like_the_cpu(cp):
    x = np.array([np.nan, -1.0, 0.0, 2.0], dtype=np.float32)
    y = cuda_relu.relu_forward(to_gpu(x))
    np.testing.assert_array_equal(to_host(y), relu_kernels.relu_forward(x))  # NaN stays NaN
    g = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    np.testing.assert_array_equal(to_host(cuda_relu.relu_backward(to_gpu(g), y)), [1.0, 0.0, 0.0, 4.0])


# ---------------------------------------------------------------------------
# The kernels really run, and gradient checks on the GPU
# ---------------------------------------------------------------------------


# The CUDA kernels by module, as registered with minires.dispatch for the "cuda" device.
CUDA_KERNELS = (
    (cuda_im2col, ("conv2d_forward", "conv2d_backward", "im2col", "col2im")),
    (cuda_bn, ("batch_norm_train_forward", "batch_norm_train_backward", "update_running_stats")),
    (cuda_relu, ("relu_forward", "relu_backward")),
)


def _record_cuda_kernel_calls(monkeypatch) -> list:
    """Record the name of every CUDA kernel called: through minires.dispatch, or by another kernel (conv -> im2col)."""
    calls = []

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    dispatch._load_plugins()
    for module, names in CUDA_KERNELS:
        for name in names:
            real = getattr(module, name)
            fn, when = dispatch._fast[(name, "cuda")]
            assert fn is real, f"minires.dispatch holds another {name} for cuda than {module.__name__}.{name}"
            monkeypatch.setitem(dispatch._fast, (name, "cuda"), (recording(name, real), when))
            monkeypatch.setattr(module, name, recording(name, real))
    return calls


def _conv_bn_relu_forward_backward(rng) -> None:
    x = Tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), device="cuda", requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), device="cuda", requires_grad=True)
    running_mean, running_var = to_gpu(np.zeros(4, np.float32)), to_gpu(np.ones(4, np.float32))
    y = F.relu(F.batch_norm(F.conv2d(x, w, padding=1), running_mean, running_var, training=True))
    y.backward(to_gpu(rng.standard_normal(y.shape).astype(np.float32)))


def test_dispatch_reaches_the_cuda_kernels(monkeypatch, rng):
    calls = _record_cuda_kernel_calls(monkeypatch)
    with minires.use_kernels("fast"):
        _conv_bn_relu_forward_backward(rng)
    expected = {name for _, names in CUDA_KERNELS for name in names}
    assert expected <= set(calls), f"not dispatched to CUDA: {sorted(expected - set(calls))}"

    # The reference set runs minires.kernels' own array code on CuPy: no CUDA kernel of minires.cuda.
    calls.clear()
    with minires.use_kernels("reference"):
        _conv_bn_relu_forward_backward(rng)
    assert calls == [], f"CUDA kernels ran under the reference set: {sorted(set(calls))}"


def _on_gpu(fn):
    """fn on GPU copies of CPU inputs, result back on the CPU (both moves are differentiable)."""
    return lambda *inputs: fn(*(t.to("cuda") for t in inputs)).to("cpu")


@settings(max_examples=8, deadline=None)
@given(case=window_case(max_n=2, max_c=3, max_side=6), seed=st.integers(0, 2**32 - 1), has_bias=st.booleans())
def test_conv2d_gradcheck_on_the_gpu(case, seed, has_bias):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal(shape), requires_grad=True)
    w = Tensor(rng.standard_normal((2, shape[1]) + kernel), requires_grad=True)
    inputs = [x, w] + ([Tensor(rng.standard_normal(2), requires_grad=True)] if has_bias else [])

    def conv(x, w, b=None):
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)

    assert minires.gradcheck(_on_gpu(conv), inputs, seed=seed)


@settings(max_examples=8, deadline=None)
@given(shape=bn_case(max_n=4, max_c=3, max_side=4), seed=st.integers(0, 2**32 - 1))
def test_batch_norm_gradcheck_on_the_gpu(shape, seed):
    x, w, b, _ = _bn_inputs(shape, np.float64, seed, True)
    inputs = [Tensor(x, requires_grad=True), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)]

    def bn(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True)

    assert minires.gradcheck(_on_gpu(bn), inputs, seed=seed)


@settings(max_examples=8, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), seed=st.integers(0, 2**32 - 1))
def test_relu_gradcheck_on_the_gpu(shape, seed):
    rng = np.random.default_rng(seed)
    # Keep every value at least 0.1 from the kink at 0 (eps is 1e-6).
    x = rng.standard_normal(shape)
    x = np.where(x >= 0, x + 0.1, x - 0.1)
    assert minires.gradcheck(_on_gpu(F.relu), [Tensor(x, requires_grad=True)], seed=seed)
