"""The autograd engine: graph recording, backward(), hooks, modes, dtypes and errors.

Expected gradients here are derived by hand in the comments (or computed with
NumPy from the chain rule), never copied from the engine's own output.
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref

import numpy as np
import pytest

import minires as mr
from minires import Function, Tensor
from minires.backend import Device, DeviceError

# ---------------------------------------------------------------------------
# Graph shapes: diamonds and deep chains
# ---------------------------------------------------------------------------


def test_diamond_gradients_sum(rng):
    """x feeds two branches that meet again: d/dx (x*a + exp(x)) = a + exp(x)."""
    x_np, a_np, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    x = Tensor(x_np, requires_grad=True)
    a = Tensor(a_np, requires_grad=True)
    y = x * a + x.exp()
    y.backward(g)
    np.testing.assert_allclose(x.grad, g * (a_np + np.exp(x_np)), rtol=1e-12)
    np.testing.assert_allclose(a.grad, g * x_np, rtol=1e-12)


def test_diamond_sum_is_a_new_page_aligned_array_in_the_first_gradients_layout(rng):
    """The summed gradient of a residual block's input: right values, a fresh array (neither
    contribution is modified), starting a memory page and keeping the channels-last layout."""
    from minires.fast.layout import empty_channels_last, is_channels_last
    from minires.fast.memory import PAGE_BYTES

    x_np, a_np, g = (empty_channels_last(np, (2, 3, 4, 5), np.float64) for _ in range(3))
    for array in (x_np, a_np, g):
        array[...] = rng.standard_normal(array.shape)
    x = Tensor(x_np, requires_grad=True)
    h = x * 1.0  # an intermediate, so that a hook sees the summed gradient
    seen = []
    h.register_hook(lambda grad: seen.append(grad.data))
    (h * Tensor(a_np) + h.exp()).backward(g)
    (summed,) = seen
    np.testing.assert_allclose(summed, g * a_np + g * np.exp(x_np), rtol=1e-12)
    assert summed.__array_interface__["data"][0] % PAGE_BYTES == 0
    assert is_channels_last(summed)


def test_tensor_used_twice_in_one_op():
    """y = x * x uses the same tensor for both inputs: dy/dx = 2x."""
    x = Tensor(np.array([1.5, -2.0, 3.0]), requires_grad=True)
    (x * x).backward(np.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(x.grad, [3.0, -8.0, -6.0])


def test_intermediate_used_by_many_consumers(rng):
    """h = 2x is used three times: d/dx (h + h*h + h.sum()) = 2 (1 + 2h + 1) elementwise."""
    x_np, g = rng.standard_normal(5), rng.standard_normal(5)
    x = Tensor(x_np, requires_grad=True)
    h = 2 * x
    y = h + h * h + h.sum()
    y.backward(g)
    h_np = 2 * x_np
    # d y_i / d h_j = delta_ij (1 + 2 h_i) + 1, so dL/dh_j = g_j (1 + 2 h_j) + sum(g).
    expected = 2 * (g * (1 + 2 * h_np) + g.sum())
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)


def test_deep_chain_of_2000_unary_ops_does_not_hit_recursion_limit():
    """2,000 tanh layers: deeper than Python's recursion limit (1,000 by default)."""
    depth = max(2000, 2 * sys.getrecursionlimit())
    x = Tensor(np.array([0.3, -0.2]), requires_grad=True)
    y = x
    values = [x.data]
    for _ in range(depth):
        y = y.tanh()
        values.append(y.data)
    y.backward(np.array([1.0, -1.0]))
    # Chain rule: the product over layers of (1 - tanh(v_k)^2), v_k the input of layer k.
    factor = np.prod([1 - np.tanh(v) ** 2 for v in values[:-1]], axis=0)
    np.testing.assert_allclose(x.grad, factor * np.array([1.0, -1.0]), rtol=1e-9)


def test_deep_chain_of_2000_adds_and_muls():
    """y <- (y + c) * 0.999, 1,000 times each: dy/dx = 0.999 ** 1000, whatever the constants."""
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = x
    for k in range(1000):
        y = y + float(k % 7)
        y = y * 0.999
    assert y._ctx is not None
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 0.999 ** 1000), rtol=1e-12)


def test_deep_diamond_chain():
    """y <- (y + y) / 2 repeated 2,000 times: each step is a diamond, and the gradient stays exactly 1."""
    x = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x
    for _ in range(2000):
        y = (y + y) / 2
    y.backward(np.array([3.0, -4.0]))
    np.testing.assert_allclose(x.grad, [3.0, -4.0])


def test_deep_graph_is_released_without_recursion_error():
    """Dropping a 5,000-node graph (kept with retain_graph=True) must not overflow the C stack."""
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward(retain_graph=True)
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


# ---------------------------------------------------------------------------
# no_grad / enable_grad
# ---------------------------------------------------------------------------


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with mr.no_grad():
        assert not mr.is_grad_enabled()
        y = (x * 2).exp().sum()
    assert mr.is_grad_enabled()
    assert not y.requires_grad
    assert y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_restores_mode_after_exception():
    with pytest.raises(KeyError):
        with mr.no_grad():
            raise KeyError("boom")
    assert mr.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with mr.no_grad():
        with mr.enable_grad():
            assert mr.is_grad_enabled()
            y = x * x
        z = x * x
        assert not mr.is_grad_enabled()
    assert y.requires_grad and not z.requires_grad
    y.backward(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_grad_mode_is_thread_local():
    """A background thread (e.g. a data loader) does not inherit or change the main thread's mode."""
    seen = {}

    def worker():
        seen["enabled"] = mr.is_grad_enabled()
        with mr.no_grad():
            seen["inside"] = mr.is_grad_enabled()

    with mr.no_grad():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert not mr.is_grad_enabled()
    assert seen == {"enabled": True, "inside": False}
    assert mr.is_grad_enabled()


def test_backward_itself_records_no_graph():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    seen = []
    y = x * x
    y.register_hook(lambda g: seen.append((g.requires_grad, g._ctx, mr.is_grad_enabled())))
    y.sum().backward()
    assert seen == [(False, None, False)]


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


def test_hook_on_leaf_sees_gradient_and_can_replace_it():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    g = np.array([0.5, 1.5, -1.0])
    seen = []

    def double(grad):
        seen.append(grad.numpy().copy())
        return grad * 2

    handle = x.register_hook(double)
    (x * 3).backward(g)
    np.testing.assert_allclose(seen[0], 3 * g)
    np.testing.assert_allclose(x.grad, 6 * g)  # the replacement is what accumulates

    handle.remove()
    x.grad = None
    (x * 3).backward(g)
    assert len(seen) == 1, "a removed hook must not be called"
    np.testing.assert_allclose(x.grad, 3 * g)
    handle.remove()  # removing twice is harmless


def test_hook_on_intermediate_sees_summed_gradient_and_replacement_flows_on(rng):
    """h = x * 2 has two consumers; its hook sees the SUM, and what it returns reaches x."""
    x_np, g = rng.standard_normal(4), rng.standard_normal(4)
    x = Tensor(x_np, requires_grad=True)
    h = x * 2
    y = h * h + h  # dy/dh = 2h + 1
    seen = []

    def hook(grad):
        seen.append(grad.numpy().copy())
        return grad * 10

    h.register_hook(hook)
    y.backward(g)
    expected_h_grad = g * (2 * (2 * x_np) + 1)
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], expected_h_grad, rtol=1e-12)
    np.testing.assert_allclose(x.grad, 2 * 10 * expected_h_grad, rtol=1e-12)
    assert h.grad is None, "intermediates keep no .grad unless retain_grad()"


def test_hook_returning_none_keeps_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    calls = []
    x.register_hook(lambda grad: calls.append(1))
    (x * 5).backward(np.array([1.0, 1.0]))
    assert calls == [1]
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])


def test_hooks_run_in_registration_order_and_chain():
    x = Tensor(np.array([1.0]), requires_grad=True)
    x.register_hook(lambda g: g + 1)
    x.register_hook(lambda g: g * 3)
    (x * 2).backward(np.array([1.0]))
    np.testing.assert_array_equal(x.grad, [(2 + 1) * 3])


def test_hook_with_wrong_shape_is_an_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.register_hook(lambda g: Tensor(np.ones(3)))
    with pytest.raises(RuntimeError, match=r"shape \(3,\).*\(2,\)"):
        (x * 2).backward(np.ones(2))


def test_hook_needs_requires_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).register_hook(lambda g: g)


def test_retain_grad_on_intermediate():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = (x * 3).retain_grad()
    (h * h).backward(np.array([1.0, -1.0]))
    np.testing.assert_allclose(h.grad, [2 * 3.0, -2 * 6.0])
    np.testing.assert_allclose(x.grad, [3 * 6.0, -3 * 12.0])


# ---------------------------------------------------------------------------
# backward() semantics: retain_graph, accumulation, seeds
# ---------------------------------------------------------------------------


def test_second_backward_without_retain_graph_raises():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    # A new graph reusing a freed intermediate is also refused.
    x2 = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x2.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2).sum().backward()


def test_retain_graph_allows_second_backward_and_accumulates():
    x_np = np.array([1.0, -2.0, 0.5])
    x = Tensor(x_np, requires_grad=True)
    y = (x * x * x).sum()  # dy/dx = 3x^2
    y.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad, 3 * x_np ** 2)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 3 * x_np ** 2)


def test_leaf_gradients_accumulate_across_graphs():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2 * 1.0, 3 + 2 * 2.0])
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_accumulated_grad_is_not_aliased_to_internal_arrays():
    """The first gradient is copied into .grad: mutating it must not corrupt a later backward."""
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    g = np.array([1.0, 1.0])
    (x + 0).backward(g)
    x.grad *= 100
    assert g.tolist() == [1.0, 1.0]


def test_non_scalar_backward_without_grad_raises():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"single-element.*\(2, 3\)"):
        (x * 2).backward()


def test_single_element_non_scalar_backward_without_grad():
    x = Tensor(np.array([[2.0]]), requires_grad=True)
    (x * x).backward()
    np.testing.assert_array_equal(x.grad, [[4.0]])


def test_grad_shape_mismatch_raises():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        (x * 2).backward(np.ones((3, 2)))


def test_backward_accepts_tensor_and_list_grads():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 2).backward(Tensor(np.array([1.0, 3.0])))
    (x * 2).backward([1.0, 1.0])
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_backward_on_a_leaf():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    x.backward(np.array([5.0, 6.0]))
    np.testing.assert_array_equal(x.grad, [5.0, 6.0])


def test_only_requires_grad_inputs_get_gradients():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 4.0]))
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, [3.0, 4.0])
    assert b.grad is None
    assert a.is_leaf and b.is_leaf and not (a * b).is_leaf


# ---------------------------------------------------------------------------
# Memory: backward frees the graph
# ---------------------------------------------------------------------------


class _SaveBig(Function):
    """y = 2x, saving an array that only its ctx references (to watch it being freed)."""

    @staticmethod
    def forward(ctx, a):
        big = np.full(a.shape, 2.0)
        ctx.save_for_backward(big)
        ctx.note = "extra attribute"
        return a * big

    @staticmethod
    def backward(ctx, grad):
        (big,) = ctx.saved_tensors
        return grad * big


def test_backward_releases_saved_arrays():
    x = Tensor(np.ones(4), requires_grad=True)
    h = _SaveBig.apply(x)
    saved = weakref.ref(h._ctx.saved_tensors[0])
    y = (h * h).sum()
    y.backward()
    gc.collect()
    assert saved() is None, "the saved array must be freed after backward()"
    for node in (h, y):
        assert node._ctx.released
        assert node._ctx.saved_tensors == ()
        assert node._ctx.inputs == ()
    assert not hasattr(h._ctx, "note")
    np.testing.assert_allclose(x.grad, 2 * (2 * 2.0 * np.ones(4)))  # d(sum h^2)/dx = 2h * 2


def test_retain_graph_keeps_saved_arrays():
    x = Tensor(np.ones(4), requires_grad=True)
    h = _SaveBig.apply(x)
    saved = weakref.ref(h._ctx.saved_tensors[0])
    h.sum().backward(retain_graph=True)
    gc.collect()
    assert saved() is not None
    assert not h._ctx.released
    assert len(h._ctx.inputs) == 1


# ---------------------------------------------------------------------------
# Function API
# ---------------------------------------------------------------------------


def test_function_needs_input_grad_params_and_constants():
    record = {}

    class ScaleAdd(Function):
        @staticmethod
        def forward(ctx, a, b, scale=1.0):
            record["needs"] = ctx.needs_input_grad
            record["types"] = (type(a), type(b))
            ctx.scale = scale
            return scale * a + b

        @staticmethod
        def backward(ctx, grad):
            record["backward_needs"] = ctx.needs_input_grad
            ga = grad * ctx.scale if ctx.needs_input_grad[0] else None
            gb = grad if ctx.needs_input_grad[1] else None
            return ga, gb

    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    out = ScaleAdd.apply(x, np.array([10.0, 20.0]), scale=3.0)
    assert record["needs"] == (True, False)
    assert record["types"] == (np.ndarray, np.ndarray)
    np.testing.assert_array_equal(out.data, [13.0, 26.0])
    out.backward(np.array([1.0, -1.0]))
    assert record["backward_needs"] == (True, False)
    np.testing.assert_array_equal(x.grad, [3.0, -3.0])
    assert mr.gradcheck(lambda t: ScaleAdd.apply(t, 5.0, scale=-2.0), [Tensor(np.ones(3), requires_grad=True)])


def test_function_backward_wrong_count_or_shape_is_reported():
    class WrongCount(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, grad):
            return (grad,)

    class WrongShape(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, grad):
            return grad.sum(keepdims=True)

    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="WrongCount.backward returned 1 gradients for 2 inputs"):
        WrongCount.apply(x, x).sum().backward()
    with pytest.raises(RuntimeError, match=r"WrongShape.backward returned a gradient of shape \(1,\).*\(3,\)"):
        WrongShape.apply(x).sum().backward()


def test_function_without_forward_is_an_error():
    class Empty(Function):
        pass

    with pytest.raises(NotImplementedError):
        Empty.apply(Tensor(np.ones(2)))


# ---------------------------------------------------------------------------
# Errors on bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape, b_shape, pattern",
    [
        ((2, 3), (4, 5), r"\(2, 3\) @ \(4, 5\)"),
        ((5, 2, 3), (4, 3, 2), r"batch dimensions \(5,\) and \(4,\)"),
        ((3,), (3, 2), r"at least 2 dimensions.*\(3,\)"),
    ],
)
def test_matmul_shape_errors(a_shape, b_shape, pattern):
    a, b = Tensor(np.ones(a_shape), requires_grad=True), Tensor(np.ones(b_shape))
    with pytest.raises(ValueError, match=pattern):
        a @ b


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
                                lambda a, b: a / b, mr.maximum])
def test_incompatible_broadcasting_names_both_shapes(op):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 1, 2)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 1, 2\) cannot be broadcast"):
        op(a, b)


def test_incompatible_broadcasting_with_numpy_operand():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        Tensor(np.ones((2, 3))) + np.ones(4)


def test_non_float_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        Tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError, match="bool"):
        Tensor(np.array([True, False])).requires_grad_()


def test_requires_grad_off_only_on_leaves():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)
    x.requires_grad_(False)
    assert not (x * 2).requires_grad


def test_integer_ops_give_no_grad_outputs():
    """Comparisons/indices produce integer results: they never require grad, even from float inputs."""
    x = Tensor(np.array([1.5, 2.5]), requires_grad=True)
    i = Tensor(np.array([1, 2]))
    assert (i * 2).dtype == np.int64 and not (i * 2).requires_grad
    assert (x * 2).requires_grad


class _FakeCudaTensor(Tensor):
    """A CPU tensor that *claims* to live on cuda:0, to exercise device checks on a machine without a GPU."""

    __slots__ = ()

    @property
    def device(self):
        return Device("cuda", 0)


def test_mixing_devices_is_refused():
    cpu_t = Tensor(np.ones(3), requires_grad=True)
    gpu_t = _FakeCudaTensor._wrap(np.ones(3), requires_grad=True)
    with pytest.raises(DeviceError, match=r"Add: inputs are on different devices \(cpu and cuda:0\)"):
        cpu_t + gpu_t
    with pytest.raises(DeviceError, match="different devices"):
        mr.concatenate([gpu_t, cpu_t])
    # A NumPy (host) array combined with a "GPU" tensor is refused as well.
    with pytest.raises(DeviceError, match="cpu was combined with a tensor on cuda:0"):
        gpu_t * np.ones(3)
    # And a host gradient for a "GPU" output.
    with pytest.raises(DeviceError, match="grad is on cpu but the tensor is on cuda:0"):
        gpu_t.backward(np.ones(3))


def test_requesting_cuda_without_gpu_raises(monkeypatch):
    from minires import backend

    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", None)
    monkeypatch.setitem(backend._cupy_state, "reason", "simulated: no driver")
    with pytest.raises(DeviceError, match="simulated: no driver"):
        Tensor([1.0, 2.0], device="cuda")
    with pytest.raises(DeviceError, match="simulated: no driver"):
        Tensor([1.0, 2.0]).to(device="cuda:0")
    with pytest.raises(DeviceError, match="simulated: no driver"):
        Tensor([1.0]).cuda()


# ---------------------------------------------------------------------------
# Construction, dtypes, conversions
# ---------------------------------------------------------------------------


def test_construction_dtypes():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([[1, 2], [3, 4]]).dtype == np.int64
    assert Tensor(2.5).dtype == np.float32 and Tensor(2.5).shape == ()
    assert Tensor(3).dtype == np.int64
    assert Tensor([True, False]).dtype == np.bool_
    assert Tensor(np.zeros(2, dtype=np.float64)).dtype == np.float64  # arrays keep their dtype
    assert Tensor(np.zeros(2, dtype=np.int32)).dtype == np.int32
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(np.float64(1.0)).dtype == np.float64  # NumPy scalars keep theirs too
    assert mr.tensor([1.0], requires_grad=True).requires_grad
    for t in (Tensor([1.0]), Tensor(2.5), Tensor(np.float64(1.0))):
        assert isinstance(t.data, np.ndarray)
    with pytest.raises(TypeError, match="mixed or non-numeric"):
        Tensor([1.0, "a", None])


def test_tensor_from_array_shares_memory_and_from_tensor():
    a = np.arange(3.0)
    t = Tensor(a)
    assert np.shares_memory(t.data, a)
    u = Tensor(t)
    assert u.data is t.data and not u.requires_grad


def _float_ops(x, w):
    """A tour of every op, combined with Python scalars, returning a list of outputs."""
    return [
        x + 1, 1 + x, x - 1, 1 - x, x * 2.5, 2.5 * x, x / 3, 3 / x, -x, x ** 2, x ** 0.5, x ** -1,
        x * np.int64(2), np.float64(0.5) * x,
        x.exp(), x.log(), x.sqrt(), x.tanh(), x.sigmoid(), mr.maximum(x, 0.5), x.clip(0.2, 0.8),
        x.sum(), x.mean(axis=0), x.max(axis=1, keepdims=True), x @ w, x.reshape(-1), x.T, x.flatten(),
        x[0], x[[0, 0]], mr.concatenate([x, x]), mr.stack([x, x]), mr.pad(x, 1, value=0.5),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved_through_ops_and_backward(dtype, rng):
    x = Tensor(rng.uniform(0.1, 1.0, (2, 3)).astype(dtype), requires_grad=True)
    w = Tensor(rng.uniform(-1, 1, (3, 2)).astype(dtype), requires_grad=True)
    for i, out in enumerate(_float_ops(x, w)):
        assert out.dtype == dtype, f"op #{i} turned {np.dtype(dtype).name} into {out.dtype}"
        assert isinstance(out.data, np.ndarray), f"op #{i} produced a {type(out.data).__name__}, not an array"
        out.backward(np.ones(out.shape, dtype=dtype))
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_grad_dtype_follows_the_leaf_even_after_promotion():
    """float32 x times a float64 array is float64 (NumPy's rule), but x.grad stays float32."""
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = x * np.array([0.5, 0.25])
    assert y.dtype == np.float64
    y.backward(np.ones(2))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [0.5, 0.25])


def test_zero_dim_gradients_are_arrays():
    a = Tensor(np.array(2.0), requires_grad=True)
    b = Tensor(np.array(3.0), requires_grad=True)
    (a * b).backward()
    (a * b).backward()
    assert isinstance(a.grad, np.ndarray) and a.grad.shape == ()
    assert float(a.grad) == 6.0 and float(b.grad) == 4.0


def test_item_numpy_detach():
    x = Tensor(np.array([[1.5]]), requires_grad=True)
    assert x.item() == 1.5 and isinstance(x.item(), float)
    assert Tensor([3]).item() == 3 and isinstance(Tensor([3]).item(), int)
    with pytest.raises(ValueError, match=r"one element.*\(2,\)"):
        Tensor([1.0, 2.0]).item()
    arr = x.numpy()
    assert isinstance(arr, np.ndarray) and np.shares_memory(arr, x.data)
    assert float(x) == 1.5

    y = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    d = y.detach()
    assert not d.requires_grad and d._ctx is None and np.shares_memory(d.data, y.data)
    # The detached path carries no gradient: d/dy (detach(y) * y) = detach(y).
    (d * y).backward(np.ones(2))
    np.testing.assert_array_equal(y.grad, [1.0, 2.0])


def test_to_dtype_is_differentiable_and_casts_gradient_back():
    x = Tensor(np.array([1.0, -2.0], dtype=np.float32), requires_grad=True)
    y = x.to(dtype=np.float64)
    assert y.dtype == np.float64 and y.requires_grad
    (y * y).backward(np.array([1.0, 0.5]))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [2.0, -2.0])
    assert x.double().dtype == np.float64 and x.double().float().dtype == np.float32
    # Nothing to change: the same tensor comes back.
    assert x.to(dtype=np.float32) is x
    assert x.to(device="cpu") is x and x.cpu() is x
    # To an integer dtype: allowed, but the result cannot carry gradients.
    assert not x.to(dtype=np.int64).requires_grad


def test_properties_and_repr():
    x = Tensor(np.zeros((2, 3, 4), dtype=np.float32), requires_grad=True)
    assert x.shape == (2, 3, 4) and x.ndim == 3 and x.size == 24 and len(x) == 2
    assert x.device == mr.backend.cpu and str(x.device) == "cpu"
    assert "requires_grad=True" in repr(x)
    assert "grad_fn=Mul" in repr(x * 2)
    assert "dtype=float64" in repr(Tensor(np.zeros(2)))
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(1.0))
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):  # PyTorch's error type
        bool(Tensor([1.0, 2.0]))
