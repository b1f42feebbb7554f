"""Tensor semantics shared with PyTorch: comparisons, truth values, NumPy interop,
dtype promotion, axis checking and the dtypes a tensor may hold.

Expected values come from NumPy (or from PyTorch, where it is installed),
never from minires itself.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest

import minires as mr
from minires import Tensor
from minires.backend import Device
from minires.nn import Module, Parameter
from minires.optim import SGD


class _FakeCudaTensor(Tensor):
    """A CPU tensor that *claims* to live on cuda:0, to exercise device checks without a GPU."""

    __slots__ = ()

    @property
    def device(self):
        return Device("cuda", 0)


def _torch_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------

COMPARISONS = [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge]


@pytest.mark.parametrize("op", COMPARISONS, ids=lambda op: op.__name__)
def test_comparisons_are_elementwise_and_broadcast(op, rng):
    a_np = rng.integers(-2, 3, (3, 1)).astype(np.float64)
    b_np = rng.integers(-2, 3, (4,)).astype(np.float64)
    a = Tensor(a_np, requires_grad=True)
    expected = op(a_np, b_np)
    for other in (Tensor(b_np), b_np):  # a Tensor or an array on the right
        out = op(a, other)
        assert isinstance(out, Tensor) and out.dtype == np.bool_ and out.shape == (3, 4)
        assert not out.requires_grad and out.is_leaf  # comparisons are not differentiable
        np.testing.assert_array_equal(out.numpy(), expected)
    for scalar in (0, 0.0, np.float64(0.0), np.int64(0), True):
        np.testing.assert_array_equal(op(a, scalar).numpy(), op(a_np, scalar))
        np.testing.assert_array_equal(op(scalar, a).numpy(), op(scalar, a_np))


@pytest.mark.parametrize("op", COMPARISONS, ids=lambda op: op.__name__)
def test_ndarray_on_the_left_of_a_comparison_gives_a_tensor(op, rng):
    a_np, b_np = rng.integers(-2, 3, (2, 3)), rng.integers(-2, 3, (2, 3))
    out = op(a_np, Tensor(b_np))
    assert isinstance(out, Tensor) and out.dtype == np.bool_
    np.testing.assert_array_equal(out.numpy(), op(a_np, b_np))


def test_equal_tensors_compare_equal_elementwise():
    assert (Tensor([1.0, 2.0]) == Tensor([1.0, 2.0])).all().item() is True
    np.testing.assert_array_equal((Tensor([1.0, 2.0]) == 1.0).numpy(), [True, False])
    np.testing.assert_array_equal((Tensor([1.0, 2.0]) != Tensor([1.0, 3.0])).numpy(), [False, True])
    np.testing.assert_array_equal(mr.ops.ge(Tensor([1, 2, 3]), 2).numpy(), [False, True, True])
    np.testing.assert_array_equal(Tensor([1, 2, 3]).lt(Tensor([3, 2, 1])).numpy(), [True, False, False])


def test_float32_compared_with_a_python_float_uses_float32_like_torch():
    # 0.1 is not a float32: compared in float64 the stored 0.1f would differ from it.
    x = Tensor([0.1, 0.2])
    np.testing.assert_array_equal((x == 0.1).numpy(), [True, False])
    torch = pytest.importorskip("torch")
    assert (torch.tensor([0.1, 0.2]) == 0.1).tolist() == [True, False]


def test_comparisons_with_other_objects_fall_back_like_torch():
    t = Tensor([1.0, 2.0])
    assert (t == None) is False and (t != None) is True  # noqa: E711 (the operator is what is tested)
    assert (t == "a") is False and (t == [1.0, 2.0]) is False
    with pytest.raises(TypeError):
        t < None  # noqa: B015


def test_comparison_of_unbroadcastable_shapes_names_them():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        Tensor(np.zeros((2, 3))) == Tensor(np.zeros(4))  # noqa: B015


def test_comparison_across_devices_is_refused():
    gpu_t = _FakeCudaTensor._wrap(np.ones(3))
    with pytest.raises(mr.backend.DeviceError, match="cuda:0"):
        gpu_t == np.ones(3)  # noqa: B015


def test_hash_stays_identity_based():
    a, b = Tensor([1.0, 2.0]), Tensor([1.0, 2.0])
    assert hash(a) != hash(b) and hash(a) == hash(a)
    table = {a: "a", b: "b"}
    assert table[a] == "a" and table[b] == "b" and len({a, b, a}) == 2
    p = Parameter(np.zeros(2))
    assert {p: 1}[p] == 1


def test_all_and_any_reduce_to_bool_tensors():
    x = Tensor([[1.0, 0.0], [2.0, 3.0]])
    assert x.all().item() is False and x.any().item() is True
    np.testing.assert_array_equal(x.all(axis=1).numpy(), [False, True])
    np.testing.assert_array_equal(x.any(axis=0, keepdims=True).numpy(), [[True, True]])
    assert (x > -1).all().dtype == np.bool_


# ---------------------------------------------------------------------------
# Truth values
# ---------------------------------------------------------------------------


def test_bool_of_one_element_and_errors_otherwise():
    assert bool(Tensor(2.0)) and not bool(Tensor([0.0])) and bool(Tensor([[True]]))
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):
        bool(Tensor([1.0, 2.0]) == Tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="no values is ambiguous"):
        bool(Tensor(np.zeros(0)))
    if Tensor([3.0]) > 2:  # the usual use: a one-element comparison in an if
        pass
    else:
        pytest.fail("Tensor([3.]) > 2 is true")


# ---------------------------------------------------------------------------
# Containers: library code finds tensors by identity, never by ==
# ---------------------------------------------------------------------------


class _TwoEqualParameters(Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Parameter(np.zeros((2, 3)))
        self.b = Parameter(np.zeros((2, 3)))  # the same values as a, but another parameter
        self.c = Parameter(np.zeros(1))
        self.d = Parameter(np.zeros(1))  # one element: == would even give a (wrong) truth value


def test_parameters_with_equal_values_stay_distinct_everywhere():
    m = _TwoEqualParameters()
    params = list(m.parameters())
    assert [id(p) for p in params] == [id(m.a), id(m.b), id(m.c), id(m.d)]
    opt = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="twice"):
        SGD([m.a, m.c, m.a], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        opt.add_param_group({"params": [m.d]})
    for p, g in zip(params, (1.0, 2.0, 3.0, 4.0)):
        p.grad = np.full(p.shape, g)
    opt.step()
    np.testing.assert_allclose(m.b.data, -0.2)
    np.testing.assert_allclose(m.d.data, -0.4)
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(state["state"][3]["momentum_buffer"], [4.0])


def test_list_lookup_of_tensors_meets_elementwise_eq_as_in_torch():
    """``in`` and ``list.index`` try identity first, then ``==``: a tensor met before the
    one looked for gives an elementwise result, whose truth value is ambiguous. Hence
    the library's ``id()``-based lookups."""
    a, b = Parameter(np.zeros((2, 3))), Parameter(np.zeros((2, 3)))
    params = [a, b]
    assert a in params and params.index(a) == 0  # a itself is met first: no == needed
    with pytest.raises(RuntimeError, match="ambiguous"):
        b in params  # noqa: B015 (a == b is a (2, 3) bool tensor)
    assert id(b) in {id(p) for p in params}
    torch = pytest.importorskip("torch")
    ta, tb = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="ambiguous"):
        tb in [ta, tb]  # noqa: B015


# ---------------------------------------------------------------------------
# NumPy interop
# ---------------------------------------------------------------------------


def test_asarray_gives_the_data():
    t = Tensor([1.0, 2.0])
    a = np.asarray(t)
    assert a.dtype == np.float32 and a.shape == (2,) and np.shares_memory(a, t.data)
    b = np.asarray(t, dtype=np.float64)
    assert b.dtype == np.float64 and not np.shares_memory(b, t.data)
    c = np.array(t)  # np.array copies by default
    assert not np.shares_memory(c, t.data)
    np.testing.assert_array_equal(c, [1.0, 2.0])
    np.testing.assert_array_equal(np.stack([Tensor(1.0), Tensor(2.0)]), [1.0, 2.0])


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="copy= in __array__ is NumPy 2")
def test_asarray_copy_false_refuses_a_conversion():
    t = Tensor([1.0, 2.0])
    assert np.shares_memory(np.asarray(t, copy=False), t.data)
    with pytest.raises(ValueError, match="copy"):
        np.asarray(t, dtype=np.float64, copy=False)


def test_asarray_of_a_gpu_tensor_says_to_copy_it_first():
    gpu_t = _FakeCudaTensor._wrap(np.ones(3))
    with pytest.raises(TypeError, match=r"cuda:0.*\.cpu\(\)"):
        np.asarray(gpu_t)


@pytest.mark.parametrize(
    "op", [operator.add, operator.sub, operator.mul, operator.truediv], ids=lambda op: op.__name__
)
def test_ndarray_and_tensor_in_either_order_give_a_differentiable_tensor(op, rng):
    a_np, x_np = rng.uniform(1, 2, (2, 3)), rng.uniform(1, 2, (2, 3))
    for left_array in (True, False):
        x = Tensor(x_np, requires_grad=True)
        out = op(a_np, x) if left_array else op(x, a_np)
        assert isinstance(out, Tensor) and out.dtype == np.float64 and out.requires_grad
        expected = op(a_np, x_np) if left_array else op(x_np, a_np)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
        seed = 1 if left_array else 2
        assert mr.gradcheck(lambda t: op(a_np, t) if left_array else op(t, a_np), [x], seed=seed)


def test_numpy_ufuncs_refuse_tensors_instead_of_dropping_the_graph():
    x = Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError):
        np.add(np.ones(2), x)
    with pytest.raises(TypeError):
        np.exp(x)


def test_ndarray_matmul_tensor_and_numpy_scalars_give_tensors(rng):
    a_np, w_np = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    out = a_np @ Tensor(w_np)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.numpy(), a_np @ w_np, rtol=1e-12)
    x = Tensor([1.0, 2.0])
    for out in (np.float64(2.0) * x, x * np.float64(2.0), np.int64(2) + x):
        assert isinstance(out, Tensor) and out.dtype == np.float32


# ---------------------------------------------------------------------------
# Unary ops on integer and bool tensors
# ---------------------------------------------------------------------------

UNARY = [("exp", np.exp), ("log", np.log), ("sqrt", np.sqrt), ("tanh", np.tanh),
         ("sigmoid", lambda v: 1 / (1 + np.exp(-v)))]


@pytest.mark.parametrize("name, ref", UNARY, ids=[n for n, _ in UNARY])
@pytest.mark.parametrize("values", [np.array([1, 2, 3]), np.array([1, 2], dtype=np.int32), np.array([True, False])],
                         ids=["int64", "int32", "bool"])
def test_floating_unary_ops_of_integers_and_bools_are_float32(name, ref, values):
    with np.errstate(divide="ignore"):  # log(False) = -inf
        out = getattr(mr, name)(Tensor(values))
        expected = ref(values.astype(np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_sigmoid_of_integers_is_not_rounded_to_zero():
    np.testing.assert_allclose(mr.sigmoid(Tensor([1, 2])).numpy(), [0.7310586, 0.8807971], rtol=1e-6)


@pytest.mark.parametrize("name", [n for n, _ in UNARY])
def test_floating_unary_dtypes_match_torch(name):
    torch = pytest.importorskip("torch")
    for values in ([1, 2], [True, False]):
        with np.errstate(divide="ignore"):  # log(False) = -inf
            ours = getattr(mr, name)(Tensor(values))
        theirs = getattr(torch, name)(torch.tensor(values))
        assert str(ours.dtype) == _torch_dtype_name(theirs)


# ---------------------------------------------------------------------------
# Axis checking
# ---------------------------------------------------------------------------

X = np.arange(6.0).reshape(2, 3)

BAD_AXES = [
    ("permute(3, 0)", lambda t: t.permute(3, 0), "axis 3"),
    ("transpose(0, 2)", lambda t: t.transpose(0, 2), "axis 2"),
    ("flatten(3)", lambda t: mr.flatten(t, 3), "axis 3"),
    ("flatten(0, -3)", lambda t: t.flatten(0, -3), "axis -3"),
    ("cat axis=2", lambda t: mr.cat([t, t], axis=2), "axis 2"),
    ("cat axis=-3", lambda t: mr.cat([t, t], axis=-3), "axis -3"),
    ("stack axis=3", lambda t: mr.stack([t, t], axis=3), "axis 3"),
    ("stack axis=-4", lambda t: mr.stack([t, t], axis=-4), "axis -4"),
    ("sum axis=2", lambda t: t.sum(axis=2), "axis 2"),
    ("mean axis=-3", lambda t: t.mean(axis=-3), "axis -3"),
    ("max axis=(0, 5)", lambda t: t.max(axis=(0, 5)), "axis 5"),
]


@pytest.mark.parametrize("call, fn, words", BAD_AXES, ids=[c for c, _, _ in BAD_AXES])
def test_out_of_range_axes_raise_index_error_naming_axis_and_ndim(call, fn, words):
    with pytest.raises(IndexError, match=words + r".*2 dimension"):
        fn(Tensor(X))


@pytest.mark.parametrize(
    "fn", [lambda t: t.permute(0, 0), lambda t: t.permute(0), lambda t: t.permute(0, 1, 2)],
    ids=["repeated", "missing", "extra"],
)
def test_permute_needs_each_axis_once(fn):
    with pytest.raises(ValueError, match=r"permute.*\(0"):
        fn(Tensor(X))


def test_axes_at_the_edges_of_the_range_work():
    t = Tensor(X)
    np.testing.assert_array_equal(t.permute(-1, 0).numpy(), X.T)
    np.testing.assert_array_equal(mr.stack([t, t], axis=2).numpy(), np.stack([X, X], axis=2))
    np.testing.assert_array_equal(mr.stack([t, t], axis=-3).numpy(), np.stack([X, X], axis=0))
    np.testing.assert_array_equal(mr.cat([t, t], axis=-1).numpy(), np.concatenate([X, X], axis=1))
    np.testing.assert_array_equal(t.flatten(-2, -1).numpy(), X.reshape(6))
    v = Tensor([1.0, 2.0])
    np.testing.assert_array_equal(v.transpose(0, -1).numpy(), [1.0, 2.0])  # 1-D: nothing to swap, as in torch
    np.testing.assert_array_equal(t.sum(axis=np.int64(1)).numpy(), X.sum(axis=1))


def test_concatenating_0d_tensors_is_refused():
    with pytest.raises(ValueError, match="0-d"):
        mr.cat([Tensor(1.0), Tensor(2.0)])


AXIS_OPS = {
    "sum": (lambda t, d: t.sum(axis=d), lambda t, d: t.sum(dim=d)),
    "max": (lambda t, d: t.max(axis=d), lambda t, d: t.amax(dim=d)),
    "cat": (lambda t, d: mr.cat([t, t], axis=d), lambda t, d: __import__("torch").cat([t, t], dim=d)),
    "stack": (lambda t, d: mr.stack([t, t], axis=d), lambda t, d: __import__("torch").stack([t, t], dim=d)),
    "flatten": (lambda t, d: t.flatten(d), lambda t, d: t.flatten(d)),
    "transpose": (lambda t, d: t.transpose(0, d), lambda t, d: t.transpose(0, d)),
}


@pytest.mark.parametrize("name", list(AXIS_OPS))
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)], ids=["0d", "1d", "2d"])
def test_valid_axes_are_the_same_as_torch(name, shape):
    torch = pytest.importorskip("torch")
    ours, theirs = AXIS_OPS[name]
    x = np.arange(float(np.prod(shape))).reshape(shape)
    for d in range(-4, 4):
        try:
            expected = theirs(torch.tensor(x), d)
        except IndexError:
            with pytest.raises(IndexError):
                ours(Tensor(x), d)
            continue
        except RuntimeError:
            continue  # refused by torch for another reason (e.g. cat of 0-d tensors)
        np.testing.assert_array_equal(ours(Tensor(x), d).numpy(), expected.numpy(), err_msg=f"{name} axis {d}")


# ---------------------------------------------------------------------------
# dtype promotion
# ---------------------------------------------------------------------------

F32 = np.array([1.0, 2.0, 3.0], dtype=np.float32)

# (description, minires expression, torch expression or None, expected dtype)
PROMOTIONS = [
    ("f32 + i64 tensor", lambda: Tensor(F32) + Tensor([1, 2, 3]), lambda t: t.tensor(F32) + t.tensor([1, 2, 3]),
     np.float32),
    ("i64 tensor + f32", lambda: Tensor([1, 2, 3]) + Tensor(F32), lambda t: t.tensor([1, 2, 3]) + t.tensor(F32),
     np.float32),
    ("f32 + 0-d i32 tensor", lambda: Tensor(F32) + Tensor(np.int32(2)),
     lambda t: t.tensor(F32) + t.tensor(2, dtype=t.int32), np.float32),
    ("f32 * i64 array", lambda: Tensor(F32) * np.array([1, 2, 3]), None, np.float32),
    ("i64 array * f32", lambda: np.array([1, 2, 3]) * Tensor(F32), None, np.float32),
    ("f32 ** np.float64", lambda: Tensor(F32) ** np.float64(2), None, np.float32),
    ("f32 ** np.float32", lambda: Tensor(F32) ** np.float32(2), None, np.float32),
    ("f32 ** np.int64", lambda: Tensor(F32) ** np.int64(2), None, np.float32),
    ("i64 * 0.5", lambda: Tensor([1, 2]) * 0.5, lambda t: t.tensor([1, 2]) * 0.5, np.float32),
    ("i64 * np.float64(0.5)", lambda: Tensor([1, 2]) * np.float64(0.5), None, np.float32),
    ("i32 + 3", lambda: Tensor(np.array([1, 2], np.int32)) + 3,
     lambda t: t.tensor([1, 2], dtype=t.int32) + 3, np.int32),
    ("i32 + np.int64(3)", lambda: Tensor(np.array([1, 2], np.int32)) + np.int64(3),
     lambda t: t.tensor([1, 2], dtype=t.int32) + np.int64(3), np.int32),
    ("bool * 2", lambda: Tensor([True, False]) * 2, lambda t: t.tensor([True, False]) * 2, np.int64),
    ("bool * 2.5", lambda: Tensor([True, False]) * 2.5, lambda t: t.tensor([True, False]) * 2.5, np.float32),
    ("i64 / i64", lambda: Tensor([1, 2]) / Tensor([2, 2]), lambda t: t.tensor([1, 2]) / t.tensor([2, 2]), np.float32),
    ("i64 / 2", lambda: Tensor([1, 2]) / 2, lambda t: t.tensor([1, 2]) / 2, np.float32),
    ("i64 ** 0.5", lambda: Tensor([1, 4]) ** 0.5, lambda t: t.tensor([1, 4]) ** 0.5, np.float32),
    ("i64 ** 2", lambda: Tensor([1, 4]) ** 2, lambda t: t.tensor([1, 4]) ** 2, np.int64),
    ("clip(i64, 1.5)", lambda: Tensor([1, 2]).clip(1.5), lambda t: t.tensor([1, 2]).clamp(1.5), np.float32),
    ("clip(f32, np.float64)", lambda: Tensor(F32).clip(np.float64(1.5), np.int64(2)), None, np.float32),
    ("maximum(i64, f32)", lambda: mr.maximum(Tensor([1, 5]), Tensor([2.0, 3.0])),
     lambda t: t.maximum(t.tensor([1, 5]), t.tensor([2.0, 3.0])), np.float32),
    ("cat(f32, i64)", lambda: mr.cat([Tensor([1.0]), Tensor([2])]),
     lambda t: t.cat([t.tensor([1.0]), t.tensor([2])]), np.float32),
    ("stack(i64, f32)", lambda: mr.stack([Tensor([2]), Tensor([1.0])]),
     lambda t: t.stack([t.tensor([2]), t.tensor([1.0])]), np.float32),
    ("f32 @ i64 array", lambda: Tensor(np.ones((2, 2), np.float32)) @ np.ones((2, 2), np.int64), None, np.float32),
    # Two floating dtypes: the wider one, as in NumPy and in PyTorch (for tensors with dimensions).
    ("f32 + f64 tensor", lambda: Tensor(F32) + Tensor(np.ones(3)),
     lambda t: t.tensor(F32) + t.ones(3, dtype=t.float64), np.float64),
]


@pytest.mark.parametrize("case, ours, theirs, dtype", PROMOTIONS, ids=[c[0] for c in PROMOTIONS])
def test_promotion_follows_torch(case, ours, theirs, dtype):
    out = ours()
    assert isinstance(out, Tensor) and out.dtype == dtype, f"{case}: got {out.dtype}"
    if theirs is not None:
        torch = pytest.importorskip("torch")
        assert str(out.dtype) == _torch_dtype_name(theirs(torch))


def test_promoted_values_and_gradients_are_right(rng):
    x_np = rng.standard_normal(3).astype(np.float32)
    x = Tensor(x_np, requires_grad=True)
    y = x * Tensor([1, 2, 3]) + np.array([1, 1, 1]) + x ** np.float64(2)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), x_np * [1, 2, 3] + 1 + x_np**2, rtol=1e-6)
    y.backward(np.ones(3))
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [1, 2, 3] + 2 * x_np, rtol=1e-6)


def test_gradients_through_mixed_integer_operands_pass_gradcheck(rng):
    """float64 x combined with integer tensors, arrays and NumPy scalars: central differences agree."""
    x = Tensor(rng.uniform(0.5, 1.5, (2, 3)), requires_grad=True)
    ints = Tensor(rng.integers(1, 4, (3,)))
    arr = rng.integers(1, 4, (2, 1))

    def fn(t):
        return (t * ints + arr) / ints - t ** np.int64(3) + t.clip(np.float32(0.7), np.int64(1))

    assert fn(x).dtype == np.float64
    assert mr.gradcheck(fn, [x], seed=3)


# ---------------------------------------------------------------------------
# What a tensor may hold
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, dtype_name",
    [("abc", "<U3"), (np.array(["a", "bc"]), "<U2"), (b"x", "S1"), (np.array([1 + 2j]), "complex128"),
     (np.array([object()]), "object")],
    ids=["str", "str-array", "bytes", "complex", "object"],
)
def test_non_numeric_data_is_refused_naming_the_dtype(data, dtype_name):
    with pytest.raises(TypeError, match=dtype_name):
        Tensor(data)


def test_numeric_dtypes_are_kept():
    for dtype in (np.bool_, np.int8, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64):
        assert Tensor(np.zeros(2, dtype=dtype)).dtype == dtype


def test_a_string_array_operand_is_refused_naming_the_dtype():
    with pytest.raises(TypeError, match="<U1"):
        Tensor([1.0]) + np.array(["a"])
