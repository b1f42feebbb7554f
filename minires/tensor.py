"""Tensor: an array that remembers how it was computed, and ``backward()``.

A :class:`Tensor` wraps a raw NumPy or CuPy array (``.data``). When it is the
result of a differentiable operation and gradients are enabled, it also keeps
``_ctx``: the :class:`~minires.function.Context` of the :class:`Function` that
produced it, which knows the inputs and what the backward pass needs. Those
links form a directed acyclic graph from the loss back to the leaves (the
parameters and inputs you created yourself).

``loss.backward()`` walks that graph once, in reverse topological order, and
applies the chain rule: each node receives the sum of the gradients of all
its consumers, hands it to its Function's ``backward``, and passes the results
on to its inputs. Leaves that ``requires_grad`` accumulate into ``.grad``.

Semantics (the same as PyTorch's, so learners can move between the two):

* Gradients ACCUMULATE: calling ``backward`` twice adds twice into ``.grad``.
  Clear them with ``zero_grad()`` on the optimiser or module, or ``x.grad = None``.
* After ``backward`` the intermediate graph is freed (the saved arrays and the
  links to the inputs are dropped), so memory goes back before the next
  forward pass. A second ``backward`` through a freed graph raises
  ``RuntimeError``; pass ``retain_graph=True`` to keep the graph instead.
* Only leaves get ``.grad``. To see the gradient of an intermediate tensor,
  use :meth:`Tensor.register_hook` (the diagnostics do) or :meth:`retain_grad`.
* ``backward()`` without an argument needs a single-element output.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import numpy as np

from . import backend
from .backend import Device, DeviceError

__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "tensor"]


# ---------------------------------------------------------------------------
# Gradient mode (thread-local so a prefetching data thread cannot switch it
# off for the training thread)
# ---------------------------------------------------------------------------

_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether new operations record the graph (False inside ``no_grad()``)."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def _set_grad_enabled(flag: bool):
    previous = is_grad_enabled()
    _grad_mode.enabled = flag
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def no_grad():
    """Context manager: operations inside record no graph (evaluation, updates).

    >>> with no_grad():
    ...     y = model(x)      # y.requires_grad is False, nothing is saved for backward
    """
    return _set_grad_enabled(False)


def enable_grad():
    """Context manager: turn graph recording back on inside a ``no_grad`` block."""
    return _set_grad_enabled(True)


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


class RemovableHandle:
    """Returned by ``register_hook``; ``handle.remove()`` detaches the hook."""

    def __init__(self, hooks: list, hook: Callable) -> None:
        self._hooks = hooks
        self._hook = hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


# ---------------------------------------------------------------------------
# Tensor
# ---------------------------------------------------------------------------

_FLOAT_KINDS = ("f",)


# What a tensor may hold (NumPy dtype kinds): bool, signed and unsigned integers, floats.
_TENSOR_KINDS = "biuf"


def _to_array(data: Any, dtype: Any, dev: Device | None):
    """Turn ``data`` into a raw array on the right device with the right dtype."""
    if isinstance(data, Tensor):
        data = data.data
    is_array = isinstance(data, np.ndarray) or backend.device_of(data).type == "cuda"
    if is_array:
        array = data
        if dev is not None:
            array = backend.to_device(array, dev)
        if dtype is not None and array.dtype != np.dtype(dtype):
            array = array.astype(dtype)
        return _checked(array, data)
    # Python scalars, lists, NumPy scalars: float32 by default for floats, like
    # PyTorch, so that a stray Python float does not drag a model to float64.
    # NumPy scalars (np.float64(1.0)) keep their dtype, like NumPy arrays do.
    array = np.asarray(data)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    elif isinstance(data, np.generic):
        pass
    elif array.dtype.kind == "f":
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu":
        array = array.astype(np.int64)
    array = _checked(array, data)
    if dev is not None and dev.type != "cpu":
        array = backend.to_device(array, dev)
    return array


def _checked(array: Any, data: Any) -> Any:
    """``array`` itself, if its dtype is one a tensor may hold; a TypeError naming the dtype otherwise.

    NumPy happily makes arrays of strings (``<U3`` from "abc") or of Python
    objects, on which no operation of minires has a meaning.
    """
    if array.dtype.kind in _TENSOR_KINDS:
        return array
    if array.dtype == np.dtype(object):
        raise TypeError(
            f"cannot build a tensor from {type(data).__name__} holding mixed or non-numeric items (dtype object)"
        )
    raise TypeError(
        f"cannot build a tensor of dtype {array.dtype} from {type(data).__name__}: "
        "tensors hold bool, integer or floating-point numbers"
    )


class Tensor:
    """An n-dimensional array with an optional gradient and a link to its creator.

    Args:
        data: a NumPy/CuPy array (kept as is, dtype included), a Tensor, or
            Python data (lists/scalars; floats become float32, ints int64).
        requires_grad: record operations on this tensor so that ``backward``
            can compute ``d(output)/d(this)``. Only floating tensors may.
        dtype: optional dtype to convert to.
        device: optional device (``"cpu"``, ``"cuda"``, ...) to move to.

    Attributes:
        data: the raw array, shape ``self.shape``.
        grad: raw array of the same shape holding the accumulated gradient,
            or ``None``; only leaves (and tensors that ``retain_grad()``) get one.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_hooks", "_retains_grad", "name", "__weakref__")
    # ``ndarray + Tensor`` must give a Tensor, not an ndarray made with __array__
    # (below) and cut from the graph. __array_ufunc__ = None makes NumPy's operators
    # return NotImplemented, so Python calls Tensor.__radd__; a ufunc called directly,
    # np.add(a, t), refuses with a TypeError. __array_priority__ asks the same of CuPy.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None, device: Any = None) -> None:
        dev = backend.device(device) if device is not None else None
        self.data = _to_array(data, dtype, dev)
        self.grad = None
        self._ctx = None
        self._hooks: list[Callable] = []
        self._retains_grad = False
        self.name: str | None = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array: Any, requires_grad: bool = False) -> "Tensor":
        """Wrap an existing raw array without any conversion (used by Function)."""
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t._ctx = None
        t._hooks = []
        t._retains_grad = False
        t.name = None
        t.requires_grad = requires_grad
        return t

    # -- basic properties ----------------------------------------------------

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> Device:
        return backend.device_of(self.data)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation."""
        return self._ctx is None

    @property
    def xp(self):
        """The array module (numpy or cupy) that owns ``data``."""
        return backend.get_array_module(self.data)

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place (only floating tensors may require grad)."""
        if flag and self.data.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}"
            )
        if not flag and self._ctx is not None:
            raise RuntimeError("requires_grad can only be switched off on leaf tensors; use detach()")
        self.requires_grad = bool(flag)
        return self

    # -- conversions ---------------------------------------------------------

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed; shares memory on the CPU)."""
        backend._transfer_count[0] += 1  # counted on every device: see minires.debug.count_transfers
        if self.device.type == "cpu":
            return self.data
        return self.data.get()

    def item(self):
        """The single value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        backend._transfer_count[0] += 1  # counted on every device: see minires.debug.count_transfers
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """NumPy's conversion protocol: ``np.asarray(t)`` is the data of a CPU tensor.

        As with ``np.asarray`` on an array: no copy unless ``dtype`` asks for a
        conversion or ``copy=True``; ``copy=False`` refuses to convert. A tensor
        on the GPU is refused: the copy to the host is slow, so it must be
        asked for with ``.cpu()`` or ``.numpy()``, as in PyTorch.
        """
        if self.device.type != "cpu":
            raise TypeError(
                f"cannot convert a tensor on {self.device} to a NumPy array: "
                "call .cpu() or .numpy() first to copy it to the host"
            )
        array = self.data
        if dtype is not None and array.dtype != np.dtype(dtype):
            if copy is False:
                raise ValueError(f"converting a {array.dtype} tensor to {np.dtype(dtype)} needs a copy, but copy=False")
            return array.astype(dtype)
        return array.copy() if copy else array

    def detach(self) -> "Tensor":
        """A tensor sharing the same data but cut from the graph (no grad)."""
        return Tensor._wrap(self.data, requires_grad=False)

    def to(self, device: Any = None, dtype: Any = None) -> "Tensor":
        """Copy to another device and/or dtype; returns ``self`` when nothing changes.

        The copy is differentiable for dtype changes (the gradient is cast
        back); moving between devices is differentiable too.
        """
        from .ops.elementwise import to_copy  # noqa: WPS433 (avoid import cycle)

        dev = backend.device(device) if device is not None else self.device
        dt = np.dtype(dtype) if dtype is not None else self.dtype
        if dev == self.device and dt == self.dtype:
            return self
        return to_copy(self, device=dev, dtype=dt)

    def float(self) -> "Tensor":
        return self.to(dtype=np.float32)

    def double(self) -> "Tensor":
        return self.to(dtype=np.float64)

    def cpu(self) -> "Tensor":
        return self.to(device="cpu")

    def cuda(self, index: int = 0) -> "Tensor":
        return self.to(device=f"cuda:{index}")

    # -- autograd --------------------------------------------------------------

    def register_hook(self, hook: Callable[["Tensor"], "Tensor | None"]) -> RemovableHandle:
        """Call ``hook(grad)`` with the gradient flowing into this tensor during backward.

        ``grad`` is a Tensor of this tensor's shape. If the hook returns a
        Tensor, it replaces the gradient (what flows on and what accumulates).
        """
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        self._hooks.append(hook)
        return RemovableHandle(self._hooks, hook)

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` for this non-leaf tensor after backward."""
        if not self.requires_grad:
            raise RuntimeError("cannot retain_grad() on a tensor that does not require grad")
        self._retains_grad = True
        return self

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate ``d(self)/d(leaf)`` (weighted by ``grad``) into every leaf's ``.grad``.

        Args:
            grad: the upstream gradient, same shape as ``self``. May be omitted
                only when ``self`` has one element (it is then 1).
            retain_graph: keep the graph so that backward can be called again.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the computation "
                "had requires_grad=True (or it was computed under no_grad())"
            )
        xp = self.xp
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a single-element output, got shape {self.shape}; "
                    "pass grad= with the same shape"
                )
            seed = xp.ones_like(self.data)
        else:
            seed = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if tuple(seed.shape) != self.shape:
                raise ValueError(f"grad has shape {tuple(seed.shape)} but the tensor has shape {self.shape}")
            if backend.device_of(seed) != self.device:
                raise DeviceError(f"grad is on {backend.device_of(seed)} but the tensor is on {self.device}")
            if seed.dtype != self.dtype:
                seed = seed.astype(self.dtype)  # a gradient has the dtype of what it differentiates
        _run_backward(self, seed, retain_graph)

    # -- printing ----------------------------------------------------------------

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", precision=4, threshold=50, prefix="tensor(")
        extras = []
        if self.dtype != np.float32:
            extras.append(f"dtype={self.dtype}")
        if self.device.type != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn={self._ctx.fn.__name__}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extras) + ")"

    def __bool__(self) -> bool:
        """``if t:`` for a one-element tensor; more (or no) elements raise, as in PyTorch.

        ``if x == y:`` on whole tensors is usually a mistake: ``(x == y).all()``
        says whether every element matches.
        """
        if self.data.size != 1:
            amount = "more than one value" if self.data.size else "no values"
            raise RuntimeError(
                f"the truth value of a tensor with {amount} is ambiguous (shape {self.shape}); "
                "use .all() or .any() on a comparison, or .item() for one element"
            )
        return bool(self.data.reshape(()))

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    # Python's default hash (identity) is kept on purpose: tensors are used as
    # dictionary keys by the engine and by optimisers, like in PyTorch. But ``==``
    # is elementwise (see minires/ops), so ``t in some_list``, ``list.index`` and
    # ``list.remove`` only work when they meet ``t`` itself first: to look a tensor
    # up among others, compare ``id()``s or use a dict or set keyed by the tensor.
    __hash__ = object.__hash__


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None, device: Any = None) -> Tensor:
    """Build a Tensor (same as ``Tensor(...)``, PyTorch's spelling)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


# ---------------------------------------------------------------------------
# The backward pass
# ---------------------------------------------------------------------------


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` that need a gradient, inputs before outputs.

    Iterative depth-first search with an explicit stack: a recursive version
    hits Python's recursion limit around a thousand layers, and minires builds
    1202-layer ResNets.
    """
    order: list[Tensor] = []
    visited: set[int] = {id(root)}
    # Each stack entry is (tensor, index of the next input to visit).
    stack: list[tuple[Tensor, int]] = [(root, 0)]
    while stack:
        node, i = stack[-1]
        inputs = node._ctx.inputs if node._ctx is not None and node._ctx.inputs is not None else ()
        if i < len(inputs):
            stack[-1] = (node, i + 1)
            child = inputs[i]
            if child.requires_grad and id(child) not in visited:
                visited.add(id(child))
                stack.append((child, 0))
        else:
            stack.pop()
            order.append(node)  # post-order: every input is appended before its consumer
    return order


def _as_array(a: Any) -> Any:
    """NumPy returns scalars (``np.float64``), not 0-d arrays, from arithmetic on 0-d
    arrays; gradients must stay arrays (``.grad`` is documented as one, and scalars
    are read-only, which breaks in-place updates)."""
    return np.asarray(a) if isinstance(a, np.generic) else a


def _sum_of_gradients(a: Any, b: Any) -> Any:
    """``a + b`` in a new array: not ``a += b``, as either may alias an array a Function still owns.

    A speed plug-in may replace this sum (:func:`set_gradient_sum`): the fast
    CPU set places it at the start of a memory page, like its own arrays.
    """
    return a + b if _gradient_sum is None else _gradient_sum(a, b)


_gradient_sum: Callable[[Any, Any], Any] | None = None


def set_gradient_sum(fn: Callable[[Any, Any], Any] | None) -> None:
    """Let ``fn(a, b)`` (same values as ``a + b``, a new array) sum gradient contributions; None restores ``+``."""
    global _gradient_sum
    _gradient_sum = fn


def _run_backward(root: Tensor, seed: Any, retain_graph: bool) -> None:
    order = _topological_order(root)
    # Gradients waiting to be delivered, keyed by tensor identity. A tensor used
    # by several consumers (a diamond, e.g. a residual shortcut) receives the
    # sum of their contributions before its own backward runs; reverse
    # topological order guarantees all consumers have run by then.
    pending: dict[int, Any] = {id(root): seed}
    with no_grad():  # backward computations are never recorded themselves
        for node in reversed(order):
            grad = pending.pop(id(node), None)
            if grad is None:
                continue  # nothing flowed here (e.g. an input whose gradient was not needed)
            grad = _as_array(grad)
            for hook in list(node._hooks):
                replaced = hook(Tensor._wrap(grad))
                if replaced is not None:
                    grad = _as_array(replaced.data if isinstance(replaced, Tensor) else replaced)
                    if tuple(grad.shape) != node.shape:
                        raise RuntimeError(
                            f"a hook returned a gradient of shape {tuple(grad.shape)} "
                            f"for a tensor of shape {node.shape}"
                        )
            ctx = node._ctx
            if ctx is None or node._retains_grad:
                # Leaves accumulate: this `+=` is what makes two backward calls add up.
                node.grad = grad.copy() if node.grad is None else _as_array(node.grad + grad)
            if ctx is None:
                continue
            if ctx.released:
                raise RuntimeError(
                    f"trying to backward through the graph a second time (at {ctx.fn.__name__}): its saved "
                    "arrays were freed by the first backward(); call backward(retain_graph=True) the first time "
                    "if you need to go through it again"
                )
            input_grads = ctx.fn.backward(ctx, grad)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            if len(input_grads) != len(ctx.inputs):
                raise RuntimeError(
                    f"{ctx.fn.__name__}.backward returned {len(input_grads)} gradients for {len(ctx.inputs)} inputs"
                )
            for inp, g in zip(ctx.inputs, input_grads):
                if g is None or not inp.requires_grad:
                    continue
                if tuple(g.shape) != inp.shape:
                    raise RuntimeError(
                        f"{ctx.fn.__name__}.backward returned a gradient of shape {tuple(g.shape)} "
                        f"for an input of shape {inp.shape}"
                    )
                if g.dtype != inp.dtype:
                    # e.g. float32 x * float64 array: the product is float64, but x's gradient must be
                    # float32 like x (as in PyTorch), or an SGD step would silently promote the weights.
                    g = g.astype(inp.dtype)
                key = id(inp)
                pending[key] = g if key not in pending else _sum_of_gradients(pending[key], g)
            if not retain_graph:
                ctx.release()


# The operators (+, *, @, indexing, sum, ...) are attached at the end of
# ``minires/ops/__init__.py`` so that this file stays about the graph itself.
from . import ops as _ops  # noqa: E402,F401  (import for its side effect of installing operators)
