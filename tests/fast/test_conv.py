"""Convolution kernels: the fast path against the reference, both against PyTorch.

The fast path splits the batch into chunks and may run them on several
threads; the tests shrink the chunk size (so chunks need not divide the
batch and the last one is smaller) and force the threaded path on tiny
problems, so that the bookkeeping is exercised, not just the one-chunk case.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minires.fast import conv as K
from minires.fast import threads as T
from minires.kernels import conv as R


def _stored_channels_last(a):
    """The memory is an (N, H, W, C) C-contiguous buffer (whether or not it is also NCHW-contiguous)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


threadpoolctl_missing = pytest.mark.skipif(
    T._blas_controller() is None, reason="threadpoolctl is not installed: the threaded path is not used"
)


@contextlib.contextmanager
def fast_path_settings(chunk_rows: int | None = None, threads: int | None = None):
    """Temporarily change the chunk size (in matrix rows), the thread count and the parallel threshold."""
    old = K._CHUNK_WORK, K._MIN_CHUNK_ROWS, T._MIN_PARALLEL_WORK
    old_env = os.environ.get("MINIRES_NUM_THREADS")
    try:
        if chunk_rows is not None:
            K._CHUNK_WORK, K._MIN_CHUNK_ROWS = 1, chunk_rows  # chunks of ceil(chunk_rows / rows per image) images
        if threads is not None:
            os.environ["MINIRES_NUM_THREADS"] = str(threads)
            T._MIN_PARALLEL_WORK = 0  # thread even tiny problems
        yield
    finally:
        K._CHUNK_WORK, K._MIN_CHUNK_ROWS, T._MIN_PARALLEL_WORK = old
        if old_env is None:
            os.environ.pop("MINIRES_NUM_THREADS", None)
        else:
            os.environ["MINIRES_NUM_THREADS"] = old_env


@st.composite
def conv_cases(draw, max_side: int = 9):
    """A convolution problem: shapes, geometry, bias flag, gradient flags, seed, chunk size."""
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 5))
    c_out = draw(st.integers(1, 5))
    kernel = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = []
    for a in (0, 1):
        smallest = max(1, dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a])
        hw.append(draw(st.integers(smallest, max(smallest, max_side))))
    return {
        "x": (n, c, hw[0], hw[1]),
        "w": (c_out, c, kernel[0], kernel[1]),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "bias": draw(st.booleans()),
        "needs": (draw(st.booleans()), draw(st.booleans()), draw(st.booleans())),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "chunk_rows": draw(st.sampled_from([1, 7, None])),  # None: the real setting
    }


def make(case, dtype=np.float64):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["x"]).astype(dtype)
    w = rng.standard_normal(case["w"]).astype(dtype)
    b = rng.standard_normal(case["w"][0]).astype(dtype) if case["bias"] else None
    geometry = (case["stride"], case["padding"], case["dilation"])
    y = R.conv2d_forward(x, w, b, *geometry)
    g = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, g, geometry


def assert_close(actual, expected, rtol=1e-12):
    if expected is None:
        assert actual is None
        return
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@given(conv_cases())
def test_fast_forward_matches_reference(case):
    x, w, b, _, geometry = make(case)
    with fast_path_settings(case["chunk_rows"]):
        fast = K.conv2d_forward(x, w, b, *geometry)
    assert _stored_channels_last(fast)  # the fast path's documented output layout
    assert_close(fast, R.conv2d_forward(x, w, b, *geometry))


@given(conv_cases())
def test_fast_backward_matches_reference(case):
    x, w, b, g, geometry = make(case)
    needs = case["needs"][:2] + ((case["needs"][2] and b is not None),)
    with fast_path_settings(case["chunk_rows"]):
        fast = K.conv2d_backward(x, w, g, *geometry, needs_input_grad=needs)
    reference = R.conv2d_backward(x, w, g, *geometry, needs_input_grad=needs)
    for got, want, needed in zip(fast, reference, needs):
        assert (got is None) == (not needed)
        assert_close(got, want)
    if needs[0]:
        assert _stored_channels_last(fast[0])  # d x comes back in the layout of the forward's output


@threadpoolctl_missing
@given(conv_cases())
def test_threaded_chunks_give_the_same_result(case):
    x, w, b, g, geometry = make(case)
    with fast_path_settings(chunk_rows=5, threads=2):
        forward = K.conv2d_forward(x, w, b, *geometry)
        backward = K.conv2d_backward(x, w, g, *geometry)
    assert_close(forward, R.conv2d_forward(x, w, b, *geometry))
    for got, want in zip(backward, R.conv2d_backward(x, w, g, *geometry)):
        assert_close(got, want)


def test_float32_stays_float32(rng):
    """No silent promotion to float64 anywhere in the fast path (both backward branches)."""
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    for stride in ((1, 1), (2, 1)):  # transposed-convolution and strided-scatter branches
        y = K.conv2d_forward(x, w, b, stride, (1, 1), (1, 1))
        assert y.dtype == np.float32
        g = rng.standard_normal(y.shape).astype(np.float32)
        grads = K.conv2d_backward(x, w, g, stride, (1, 1), (1, 1))
        assert [a.dtype for a in grads] == [np.float32] * 3


def test_any_memory_layout_is_accepted(rng):
    """Channels-last or sliced inputs give the same numbers as contiguous ones."""
    x = rng.standard_normal((4, 3, 7, 6))
    w = rng.standard_normal((2, 3, 3, 3))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x_strided = np.repeat(x, 2, axis=3)[:, :, :, ::2]
    g = rng.standard_normal((4, 2, 7, 6))
    g_strided = np.asfortranarray(g)
    expected_y = R.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    expected = R.conv2d_backward(x, w, g, (1, 1), (1, 1), (1, 1))
    for xin in (x_nhwc, x_strided):
        assert_close(K.conv2d_forward(xin, w, None, (1, 1), (1, 1), (1, 1)), expected_y)
        for got, want in zip(K.conv2d_backward(xin, w, g_strided, (1, 1), (1, 1), (1, 1)), expected):
            assert_close(got, want)


def test_nothing_needed_returns_only_what_was_asked(rng):
    x, w = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    g = rng.standard_normal((2, 3, 3, 3))
    assert K.conv2d_backward(x, w, g, (1, 1), (0, 0), (1, 1), needs_input_grad=(False, False, False)) == (None, None, None)
    gx, gw, gb = K.conv2d_backward(x, w, g, (1, 1), (0, 0), (1, 1), needs_input_grad=(False, False, True))
    assert gx is None and gw is None
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3)))


def test_num_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MINIRES_NUM_THREADS", "3")
    assert T.num_threads() == 3
    monkeypatch.setenv("MINIRES_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="MINIRES_NUM_THREADS must be a positive integer, got 'zero'"):
        T.num_threads()
    monkeypatch.setenv("MINIRES_NUM_THREADS", "0")
    with pytest.raises(ValueError, match="got '0'"):
        T.num_threads()


@given(conv_cases())
def test_parity_with_torch(case):
    torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch parity checks")
    x, w, b, g, geometry = make(case)
    stride, padding, dilation = geometry
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if b is not None else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation)
    ty.backward(torch.from_numpy(g))
    expected_grads = (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy() if b is not None else None)
    with fast_path_settings(case["chunk_rows"]):
        y = K.conv2d_forward(x, w, b, *geometry)
        grads = K.conv2d_backward(x, w, g, *geometry, needs_input_grad=(True, True, b is not None))
    assert_close(y, ty.detach().numpy(), rtol=1e-10)
    assert_close(R.conv2d_forward(x, w, b, *geometry), ty.detach().numpy(), rtol=1e-10)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, rtol=1e-10)
    for got, want in zip(R.conv2d_backward(x, w, g, *geometry, needs_input_grad=(True, True, b is not None)),
                         expected_grads):
        assert_close(got, want, rtol=1e-10)


def test_resnet_shapes_float32_parity_with_torch(rng):
    """The shapes the benchmark times (batch cut to 4), in float32, against PyTorch."""
    torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch parity checks")
    for c, c_out, size, stride in [(3, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (64, 64, 8, 1)]:
        x = rng.standard_normal((4, c, size, size)).astype(np.float32)
        w = (rng.standard_normal((c_out, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        y = K.conv2d_forward(x, w, None, (stride, stride), (1, 1), (1, 1))
        g = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, _ = K.conv2d_backward(x, w, g, (stride, stride), (1, 1), (1, 1), needs_input_grad=(True, True, False))
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        ty = torch.nn.functional.conv2d(tx, tw, None, stride, 1)
        ty.backward(torch.from_numpy(g))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-4, atol=1e-3)


@threadpoolctl_missing
def test_chunks_are_spread_over_threads(monkeypatch):
    """The threaded path really runs: chunks are filled on more than one thread."""
    import threading

    seen = set()
    original = K._RowWindows.fill

    def spy(self, chunk):
        seen.add(threading.get_ident())
        return original(self, chunk)

    monkeypatch.setattr(K._RowWindows, "fill", spy)
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5))
    w = np.random.default_rng(1).standard_normal((3, 2, 3, 3))
    with fast_path_settings(chunk_rows=25, threads=2):
        y = K.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    assert len(seen) == 2
    assert_close(y, R.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1)))


def test_scratch_buffers_reused_across_calls_give_fresh_results(rng):
    """Each thread keeps its scratch buffers between calls (kernels/conv.py, _workspace).

    Alternate geometries whose padded buffers have the same shape but a different
    zero border (padding 1 vs 0 on a larger input), and large values that would
    show up if a border were not zero or a buffer leaked from an earlier call.
    """
    w = rng.standard_normal((3, 2, 3, 3))
    small = rng.standard_normal((2, 2, 5, 5))
    large = 1e6 * rng.standard_normal((2, 2, 7, 7))  # padded (7, 7) like small with padding 1
    for x, pad in [(small, 1), (large, 0), (small, 1), (large, 0), (small, 1)]:
        geometry = ((1, 1), (pad, pad), (1, 1))
        g = rng.standard_normal((2, 3, 5, 5))
        assert_close(K.conv2d_forward(x, w, None, *geometry), R.conv2d_forward(x, w, None, *geometry))
        for got, want in zip(K.conv2d_backward(x, w, g, *geometry), R.conv2d_backward(x, w, g, *geometry)):
            assert_close(got, want)


def test_gemm_block_rows_divide_the_rows_within_the_small_kernel_limit():
    """Blocks for BLAS's small-matrix kernels: a divisor of the rows, under the work limit, or no blocking."""
    # ResNet-20's 16-channel layer, a 4-image chunk: (4096, 48) @ (48, 16) -> blocks of 1024 rows.
    assert K._gemm_block_rows(4096, 48, 16) == 1024
    for rows, k, n in [(4096, 48, 16), (2048, 96, 32), (3000, 48, 16), (1000, 30, 7)]:
        step = K._gemm_block_rows(rows, k, n)
        assert rows % step == 0
        assert step == rows or (K._SMALL_GEMM_MIN_ROWS <= step and step * k * n <= K._SMALL_GEMM_WORK)
    assert K._gemm_block_rows(4096, 192, 64) == 4096  # 64 channels: blocks would be too small, left whole
    assert K._gemm_block_rows(4099, 48, 16) == 4099  # a prime: no divisor in range, left whole
    assert K._gemm_block_rows(500, 48, 16) == 500  # small enough already


def test_reduction_block_rows_divide_the_rows_and_fit_the_product_buffer():
    """d weight's sums over the rows: blocks of at most _REDUCTION_BLOCK_MAX rows that divide them."""
    assert K._reduction_block_rows(4096) == K._REDUCTION_BLOCK_MAX  # a 4-image chunk of 32x32 pixels
    for rows in range(1, 4100):
        step = K._reduction_block_rows(rows)
        assert rows % step == 0
        assert step == rows or K._REDUCTION_BLOCK_MIN <= step <= K._REDUCTION_BLOCK_MAX
        assert step <= K._REDUCTION_BLOCK_MAX or rows > K._REDUCTION_BLOCK_MAX  # small sums are not cut
    assert K._reduction_block_rows(4099) == 4099  # a prime: no divisor in range, one product
    assert K._reduction_block_rows(100) == 100  # small enough already
    # The product buffer holds the blocks of a full chunk and of the last, smaller one.
    for n, per_chunk, rows_per_image in [(10, 4, 64), (8, 4, 64), (7, 3, 49), (1, 1, 1), (5, 2, 1024)]:
        g = K._Geometry(n, 1, 1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0), (1, 1), np.float64, per_chunk)
        for m in {per_chunk, n % per_chunk or per_chunk}:
            rows = m * rows_per_image
            assert rows // K._reduction_block_rows(rows) <= K._max_reduction_blocks(g, rows_per_image)


@pytest.mark.parametrize(
    "c, c_out, size, padding, dilation",
    [
        (16, 16, 32, (1, 1), (1, 1)),  # chunks of 2 images: 2048 rows -> d weight sums in 16 blocks of 128
        (32, 32, 16, (1, 1), (1, 1)),  # 512 rows -> 4 blocks of 128
        (3, 5, 9, (3, 2), (1, 1)),  # padding > d (k - 1): the transposed convolution crops
        (4, 3, 11, (1, 2), (2, 2)),  # dilation: d weight reads the g taps kH - 1 - i, kW - 1 - j
    ],
)
def test_unit_stride_weight_gradient_from_the_unfolded_output_gradient(
    rng, monkeypatch, c, c_out, size, padding, dilation
):
    """Unit stride with both gradients: d weight is taken against the g unfold that d x uses.

    float64, every element against the reference (im2col) formulas, including
    blocked products and a geometry whose transposed convolution crops.
    """
    steps = []
    original = K._reduction_block_rows
    monkeypatch.setattr(K, "_reduction_block_rows", lambda rows: steps.append((rows, original(rows))) or steps[-1][1])
    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")  # chunks of 2 images, whatever the machine
    n = 4
    x = rng.standard_normal((n, c, size, size))
    w = rng.standard_normal((c_out, c, 3, 3))
    geometry = ((1, 1), padding, dilation)
    y = R.conv2d_forward(x, w, None, *geometry)
    g = rng.standard_normal(y.shape)
    assert_close(K.conv2d_forward(x, w, None, *geometry), y)
    got = K.conv2d_backward(x, w, g, *geometry, needs_input_grad=(True, True, False))
    want = R.conv2d_backward(x, w, g, *geometry, needs_input_grad=(True, True, False))
    for a, b in zip(got, want):
        assert_close(a, b)
    # Weight gradient alone takes the other branch (unfold of x): the same numbers.
    only_w = K.conv2d_backward(x, w, g, *geometry, needs_input_grad=(False, True, False))[1]
    assert_close(only_w, want[1])
    assert any(step < rows for rows, step in steps)  # the sums really ran in blocks (162 rows: 2 of 81)
