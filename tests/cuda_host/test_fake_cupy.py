"""The GPU code path of minires, run on the CPU through the CuPy stand-in (fake_cupy.py).

Everything here goes through the real dispatch: arrays "on cuda" make
``dispatch.kernel(op, x)`` return minires.cuda's functions, which build and
launch their kernels; the stand-in checks every launch the way CuPy would
and runs the kernels' NumPy transcriptions. Results are compared with the
reference kernels (minires/kernels) on the same inputs: float64 to ~1e-12,
float32 to ~1e-5 relative to the largest value (sums that cancel make single
elements small). The tests of the stand-in itself come first: they prove it
refuses what CuPy refuses, so that the parity tests mean something.

What this cannot show (it needs a GPU, tests/gpu): that the CUDA compiles
into what the transcriptions say (tests/cuda_host/test_compile.py checks it
compiles at all), races between threads, timing, and the GPU's rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from fake_cupy import RawModule, install
from fake_cupy import ndarray as DeviceArray

from minires import backend, cuda, dispatch, models
from minires.cuda import batch_norm as cuda_bn
from minires.cuda import im2col as cuda_im2col
from minires.nn import functional as F
from minires.optim import SGD
from minires.tensor import Tensor

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = [np.float32, np.float64]


@pytest.fixture
def gpu(monkeypatch):
    """The stand-in installed as minires's CuPy, with the fast kernel set (the one that uses minires.cuda)."""
    fake = install(monkeypatch)
    with dispatch.use_kernels("fast"):
        yield fake


def to_gpu(a):
    return None if a is None else backend.to_device(np.asarray(a), "cuda")


def to_host(a):
    return None if a is None else backend.to_device(a, "cpu")


def assert_close(device_result, reference, what="", rtol=None):
    host = to_host(device_result)
    assert host.shape == reference.shape and host.dtype == reference.dtype, what
    rtol = RTOL[np.dtype(reference.dtype)] if rtol is None else rtol
    scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
    np.testing.assert_allclose(host, reference, rtol=0, atol=rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------
# The stand-in refuses what CuPy refuses
# ---------------------------------------------------------------------------


def _im2col_kernel(gpu):
    names = cuda_im2col._KERNEL_NAMES
    return cuda.kernel_function(gpu, cuda_im2col.IM2COL_SOURCE, names, "im2col_gather<float, int>")


def _im2col_args(x, cols):
    dims = (1, 1, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4)
    return [x, cols] + [np.int32(v) for v in dims] + [np.int32(0)]


def test_the_fake_arrays_are_cupy_arrays_to_minires(gpu):
    x = to_gpu(np.ones((2, 3), np.float32))
    assert isinstance(x, DeviceArray) and not isinstance(x, np.ndarray)
    assert backend.device_of(x) == backend.Device("cuda", 0)
    assert backend.get_array_module(x) is gpu
    assert isinstance(x.sum(), DeviceArray) and x.sum().shape == ()  # reductions stay on the device
    assert isinstance(x[0, 0], DeviceArray)


def test_a_python_int_for_an_int_parameter_is_refused(gpu):
    x, cols = to_gpu(np.ones((1, 1, 4, 4), np.float32)), gpu.empty((9, 16), dtype=np.float32)
    args = _im2col_args(x, cols)
    _im2col_kernel(gpu)((1,), (256,), tuple(args))  # the right types: accepted
    args[5] = 4  # W as a Python int
    with pytest.raises(TypeError, match=r"parameter int W: CuPy needs exactly int32 .* got int 4"):
        _im2col_kernel(gpu)((1,), (256,), tuple(args))
    args[5] = np.int64(4)
    with pytest.raises(TypeError, match="needs exactly int32"):
        _im2col_kernel(gpu)((1,), (256,), tuple(args))


def test_arrays_must_match_the_pointer_type_and_be_contiguous(gpu):
    x, cols = to_gpu(np.ones((1, 1, 4, 4), np.float64)), gpu.empty((9, 16), dtype=np.float32)
    with pytest.raises(TypeError, match="needs float32 elements, got float64"):
        _im2col_kernel(gpu)((1,), (256,), tuple(_im2col_args(x, cols)))
    strided = to_gpu(np.ones((1, 1, 4, 8), np.float32))[..., ::2]
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _im2col_kernel(gpu)((1,), (256,), tuple(_im2col_args(strided, cols)))


def test_launch_sizes_and_argument_counts_are_checked(gpu):
    x, cols = to_gpu(np.ones((1, 1, 4, 4), np.float32)), gpu.empty((9, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="exceeds CUDA's limits"):
        _im2col_kernel(gpu)((1,), (2048,), tuple(_im2col_args(x, cols)))
    with pytest.raises(TypeError, match="takes 17 arguments"):
        _im2col_kernel(gpu)((1,), (256,), tuple(_im2col_args(x, cols)[:-1]))


def test_host_and_device_arrays_do_not_mix(gpu):
    device = to_gpu(np.ones(3))
    with pytest.raises(TypeError, match="host .NumPy. array"):
        device + np.ones(3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(device)
    assert (device + 1.0).get().tolist() == [2.0, 2.0, 2.0]  # Python scalars are fine


def test_empty_memory_is_nan_and_reads_to_the_host_are_counted(gpu):
    assert np.isnan(gpu.empty((2, 2), dtype=np.float32).get()).all()
    x = to_gpu(np.arange(3.0))
    before = gpu.host_reads
    float(x.sum())
    x.get()
    assert gpu.host_reads == before + 2


def test_a_kernel_whose_source_changed_is_not_run_with_its_old_transcription(gpu):
    changed = cuda_im2col.IM2COL_SOURCE.replace("T(0)", "T(1)")
    with pytest.raises(AssertionError, match="not the one the NumPy transcriptions"):
        RawModule(code=changed, name_expressions=cuda_im2col._KERNEL_NAMES)
    spec = dict(cuda.relu.FORWARD, operation="y = x;")
    with pytest.raises(AssertionError, match="changed since its NumPy transcription"):
        gpu.ElementwiseKernel(spec["in_params"], spec["out_params"], spec["operation"], spec["name"])


@pytest.mark.parametrize("op, kernel_names", [
    ("im2col", ["im2col_gather<float, int>"]),
    ("relu_forward", ["minires_relu_forward"]),
    ("batch_norm_train_forward", ["bn_stats_partial<float>", "bn_stats_finalize<float>", "minires_bn_normalize"]),
])
def test_dispatch_reaches_the_cuda_kernels(gpu, op, kernel_names):
    x = to_gpu(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    fn = dispatch.kernel(op, x)
    assert dispatch._fast[(op, "cuda")][0].__module__.startswith("minires.cuda.")
    args = {"im2col": (x, 3, 1, 1), "relu_forward": (x,), "batch_norm_train_forward": (x, None, None, 1e-5)}[op]
    fn(*args)
    for name in kernel_names:
        assert gpu.launches[name] == 1, dict(gpu.launches)


# ---------------------------------------------------------------------------
# im2col / col2im / convolution
# ---------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, dilation)
GEOMETRIES = [
    (2, 3, 8, 8, 3, 1, 1, 1),
    (2, 4, 9, 7, (3, 2), (2, 1), (1, 0), 1),
    (1, 2, 11, 10, 3, 2, 2, 2),
    (3, 1, 5, 5, 1, 1, 0, 1),
    (2, 2, 6, 6, 5, 3, 2, 1),
]


@pytest.mark.parametrize("k_major", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_im2col_and_col2im_match_the_reference(gpu, rng, geometry, dtype, k_major):
    n, c, h, w, kernel, stride, padding, dilation = geometry
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    reference_cols = dispatch.reference("im2col")(x, kernel, stride, padding, dilation)  # (N, K, L)
    cols = cuda_im2col.im2col(to_gpu(x), kernel, stride, padding, dilation, k_major=k_major)
    expected = reference_cols.transpose(1, 0, 2).reshape(reference_cols.shape[1], -1) if k_major else reference_cols
    np.testing.assert_array_equal(to_host(cols), expected)  # a gather copies: exact
    g = rng.standard_normal(expected.shape).astype(dtype)
    reference_g = g.reshape(expected.shape[0], n, -1).transpose(1, 0, 2) if k_major else g
    image = cuda_im2col.col2im(to_gpu(g), (n, c, h, w), kernel, stride, padding, dilation, k_major=k_major)
    assert_close(image, dispatch.reference("col2im")(np.ascontiguousarray(reference_g), (n, c, h, w), kernel,
                                                     stride, padding, dilation), "col2im")


def test_large_arrays_take_the_64_bit_index_kernels(gpu, rng, monkeypatch):
    monkeypatch.setattr(cuda_im2col, "INDEX32_LIMIT", 0)  # pretend every array is too large for int
    x = rng.standard_normal((2, 3, 6, 6))
    cols = cuda_im2col.im2col(to_gpu(x), 3, 1, 1)
    np.testing.assert_array_equal(to_host(cols), dispatch.reference("im2col")(x, 3, 1, 1))
    assert gpu.launches["im2col_gather<double, long long>"] == 1


CONVS = [  # (N, C_in, H, C_out, kernel, stride, padding, bias)
    (2, 3, 8, 4, 3, 1, 1, True),
    (2, 4, 9, 5, 3, 2, 1, False),
    (3, 2, 6, 3, 1, 1, 0, True),
]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS)
def test_convolution_forward_and_backward_match_the_reference(gpu, rng, monkeypatch, case, dtype, chunked):
    n, c, h, c_out, k, s, p, with_bias = case
    if chunked:  # a column budget of one image: one GEMM per image, as for huge layers
        monkeypatch.setattr(cuda_im2col, "COLS_BUDGET_BYTES", 1)
    x = rng.standard_normal((n, c, h, h)).astype(dtype)
    weight = rng.standard_normal((c_out, c, k, k)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    geometry = ((s, s), (p, p), (1, 1))
    y = dispatch.kernel("conv2d_forward", to_gpu(x))(to_gpu(x), to_gpu(weight), to_gpu(bias), *geometry)
    reference_y = dispatch.reference("conv2d_forward")(x, weight, bias, *geometry)
    assert_close(y, reference_y, "forward")
    g = rng.standard_normal(reference_y.shape).astype(dtype)
    grads = dispatch.kernel("conv2d_backward", to_gpu(x))(to_gpu(x), to_gpu(weight), to_gpu(g), *geometry)
    reference = dispatch.reference("conv2d_backward")(x, weight, g, *geometry)
    for name, got, expected in zip(("dx", "dweight", "dbias"), grads, reference):
        assert_close(got, expected, name)
    assert gpu.launches[f"col2im_gather<{'float' if dtype == np.float32 else 'double'}, int>"] >= 1


# ---------------------------------------------------------------------------
# Batch norm and ReLU
# ---------------------------------------------------------------------------

BN_SHAPES = [(4, 3, 5, 5), (2, 7, 3, 2), (32, 2, 16, 16), (3, 5)]  # the third: several slices per channel


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_forward_backward_and_running_stats_match_the_reference(gpu, rng, shape, dtype, affine):
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    weight = rng.uniform(0.5, 1.5, c).astype(dtype) if affine else None
    bias = rng.standard_normal(c).astype(dtype) if affine else None
    got = dispatch.kernel("batch_norm_train_forward", to_gpu(x))(to_gpu(x), to_gpu(weight), to_gpu(bias), 1e-5)
    expected = dispatch.reference("batch_norm_train_forward")(x, weight, bias, 1e-5)
    for name, a, b in zip(("y", "mean", "var", "inv_std"), got, expected):
        assert_close(a, b, name)
    if shape[0] * int(np.prod(shape[2:])) > 4096:  # a channel this long is split over several blocks
        assert gpu.grids[f"bn_stats_partial<{'float' if dtype == np.float32 else 'double'}>"][0] > 1
    g = rng.standard_normal(shape).astype(dtype)
    mean, inv_std = expected[1], expected[3]
    got = dispatch.kernel("batch_norm_train_backward", to_gpu(g))(to_gpu(g), to_gpu(x), to_gpu(mean),
                                                                   to_gpu(inv_std), to_gpu(weight))
    expected = dispatch.reference("batch_norm_train_backward")(g, x, mean, inv_std, weight)
    for name, a, b in zip(("dx", "dweight", "dbias"), got, expected):
        assert_close(a, b, name)
    running = [rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)]
    on_gpu = [to_gpu(r) for r in running]
    count, batch_var = x.size // c, rng.uniform(0.5, 2, c).astype(dtype)
    dispatch.kernel("update_running_stats", on_gpu[0])(*on_gpu, to_gpu(mean), to_gpu(batch_var), count, 0.1)
    dispatch.reference("update_running_stats")(*running, mean, batch_var, count, 0.1)
    assert_close(on_gpu[0], running[0], "running_mean")
    assert_close(on_gpu[1], running[1], "running_var")


def test_batch_norm_keeps_its_digits_when_the_mean_dwarfs_the_spread(gpu, rng):
    # |mean| / std = 1e4: the shifted sums keep the float32 variance, E[x^2] - E[x]^2 would not.
    x = (1e4 + rng.standard_normal((16, 4, 8, 8))).astype(np.float32)
    _, _, var, _ = cuda_bn.batch_norm_train_forward(to_gpu(x), None, None, 1e-5)
    np.testing.assert_allclose(to_host(var), x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_the_reference_with_nan(gpu, rng, dtype):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    x[0, 0, :2] = [np.nan, 0.0]
    y = dispatch.kernel("relu_forward", to_gpu(x))(to_gpu(x))
    reference_y = dispatch.reference("relu_forward")(x)
    np.testing.assert_array_equal(to_host(y), reference_y)
    g = rng.standard_normal(x.shape).astype(dtype)
    dx = dispatch.kernel("relu_backward", to_gpu(g))(to_gpu(g), y)
    np.testing.assert_array_equal(to_host(dx), dispatch.reference("relu_backward")(g, reference_y))


# ---------------------------------------------------------------------------
# A whole ResNet-20, forward and backward, and a training step
# ---------------------------------------------------------------------------


def test_resnet20_forward_backward_on_the_fake_gpu_equals_the_cpu_in_float64(gpu, rng):
    images = rng.standard_normal((2, 3, 32, 32))
    labels = np.array([3, 7])
    results = {}
    for where in ("cpu", "cuda"):
        model = models.create("resnet20", seed=0).to(device=where, dtype=np.float64)
        model.train()
        logits = model(Tensor(images, device=where))
        loss = F.cross_entropy(logits, labels)  # host labels: checked there, then moved
        loss.backward()
        grads = {name: to_host(p.grad) if where == "cuda" else p.grad for name, p in model.named_parameters()}
        state = {k: to_host(v) if where == "cuda" else v for k, v in model.state_dict().items()}
        results[where] = (to_host(logits.data) if where == "cuda" else logits.data, float(loss.item()), grads, state)
    cpu, fake = results["cpu"], results["cuda"]
    np.testing.assert_allclose(fake[0], cpu[0], rtol=1e-9, atol=1e-10)
    assert fake[1] == pytest.approx(cpu[1], rel=1e-10)
    for name, grad in cpu[2].items():
        scale = max(1e-12, float(np.abs(grad).max()))
        np.testing.assert_allclose(fake[2][name], grad, rtol=0, atol=1e-8 * scale, err_msg=name)
    for key, value in cpu[3].items():
        np.testing.assert_allclose(np.asarray(fake[3][key]), np.asarray(value), rtol=1e-10, atol=1e-12, err_msg=key)
    for kernel in ("im2col_gather<double, int>", "col2im_gather<double, int>", "bn_stats_partial<double>",
                   "bn_backward_partial<double>", "minires_bn_update_running", "minires_relu_backward"):
        assert gpu.launches[kernel] > 0, kernel


def test_a_training_step_reads_nothing_back_from_the_device(gpu, rng):
    model = models.create("resnet_cifar", depth=8, width=8, seed=0).to(device="cuda")
    model.train()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = Tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32), device="cuda")
    labels = Tensor(np.array([1, 0, 9, 3]), device="cuda")
    before = gpu.host_reads
    for _ in range(2):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert gpu.host_reads == before, f"{gpu.host_reads - before} device-to-host reads (each one a GPU sync)"
    assert np.isfinite(float(loss.item()))


def test_device_labels_out_of_range_poison_the_loss_on_the_device(gpu, rng):
    logits = Tensor(rng.standard_normal((3, 4)).astype(np.float32), device="cuda")
    before = gpu.host_reads
    loss = F.cross_entropy(logits, Tensor(np.array([0, 4, 1]), device="cuda"))
    assert gpu.host_reads == before
    assert np.isnan(float(loss.item()))
    with pytest.raises(ValueError, match=r"target\[1\] = 4 is out of range"):
        F.cross_entropy(logits, np.array([0, 4, 1]))  # host labels: the clear error, before any copy


@pytest.mark.parametrize("prefetch", [0, 2])
def test_dataloader_batches_on_the_fake_gpu_equal_the_cpu_batches(gpu, rng, prefetch):
    from minires.data import DataLoader, standard_augment

    images = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    cpu = DataLoader(images, labels, 8, augment=standard_augment, seed=5)
    fake = DataLoader(images, labels, 8, augment=standard_augment, seed=5, device="cuda", prefetch=prefetch)
    for (xc, yc), (xg, yg) in zip(cpu, fake):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        np.testing.assert_allclose(to_host(xg.data), xc.numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(to_host(yg.data), yc.numpy())


def test_device_synchronize_waits_for_the_gpu_and_is_free_on_the_cpu(gpu, monkeypatch):
    waited = []
    monkeypatch.setattr(type(gpu.cuda.Device(0)), "synchronize", lambda self: waited.append(self.id))
    backend.device("cuda").synchronize()
    backend.device("cpu").synchronize()
    assert waited == [0]
