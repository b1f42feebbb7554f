"""Page-aligned arrays (minires/kernels/aligned.py) and where the kernels use them."""

from __future__ import annotations

import numpy as np
import pytest

from minires.fast import batch_norm as BN
from minires.fast import conv as K
from minires.fast import memory
from minires.fast.memory import PAGE_BYTES, empty_aligned, zeros_aligned


def address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (7, 3, 2, 5), 1000, np.int64(12)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_arrays_start_a_page_and_are_ordinary_arrays(shape, dtype):
    for make in (empty_aligned, zeros_aligned):
        a = make(np, shape, dtype)
        expected_shape = (int(shape),) if np.ndim(shape) == 0 else shape
        assert a.shape == expected_shape and a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous and a.flags.writeable
        if a.size:
            assert address(a) % PAGE_BYTES == 0
        a[...] = 1  # the whole array is usable memory
        assert np.all(a == 1)


def test_zeros_are_zero():
    for _ in range(5):  # fresh memory may hold anything; each one must be zeroed
        assert not np.any(zeros_aligned(np, (33, 129), np.float32))


def test_kernel_outputs_and_scratch_buffers_start_a_page(rng):
    x = rng.standard_normal((4, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    y = K.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1))
    gx, _, _ = K.conv2d_backward(x, w, np.ones_like(y), (1, 1), (1, 1), (1, 1), (True, True, False))
    assert address(y) % PAGE_BYTES == 0 and address(gx) % PAGE_BYTES == 0
    buffers = list(memory._workspace_local.buffers.values())
    assert buffers and all(address(b) % PAGE_BYTES == 0 for b in buffers)
    out, mean, _, inv_std = BN.batch_norm_relu_train_forward(y, np.ones(8, np.float32), np.zeros(8, np.float32), 1e-5)
    assert address(out) % PAGE_BYTES == 0
    dx, _, _, _ = BN._train_backward(rng.standard_normal(y.shape).astype(np.float32), y, mean, inv_std, None, True, relu_out=out)
    assert address(dx) % PAGE_BYTES == 0


