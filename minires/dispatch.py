"""One dispatch point: which implementation of a kernel runs, per (operation, device).

Two kernel sets exist:

* ``reference``: the functions in :mod:`minires.kernels`, the mathematics
  written once for NumPy and CuPy (``xp = get_array_module(x)``). This is what
  a learner reads, and every operation has one.
* ``fast``: speed plug-ins that compute the same numbers. :mod:`minires.fast`
  registers CPU versions (threads, cache-sized chunks, channels-last memory);
  :mod:`minires.cuda` registers hand-written CUDA kernels for the ``cuda``
  device. An operation a plug-in does not cover falls back to the reference.

The set is chosen by the environment variable ``MINIRES_KERNELS``
(``reference`` or ``fast``, default ``fast``), by :func:`set_kernels`, or for
a block of code by the context manager :func:`use_kernels`::

    with minires.use_kernels("reference"):
        loss = F.cross_entropy(model(x), y)      # runs the code in minires/kernels
        loss.backward()

Callers ask for an implementation by name: ``kernel("conv2d_forward", x)``
returns the function to call for x's device under the active set. A plug-in
registers with :func:`register`. Besides kernels, a plug-in may replace a
module's forward as a whole (:func:`register_forward`): the fast set runs a
residual block's ``relu(bn(z) + s)`` as one fused operation this way, with the
same parameters and state_dict keys, so ``models/blocks.py`` stays the plain
computation.

This module imports nothing of minires but :mod:`minires.backend`: the
reference kernels and the plug-ins are imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, Callable, Iterator

from . import backend

__all__ = [
    "KERNEL_SETS",
    "get_kernels",
    "set_kernels",
    "use_kernels",
    "kernel",
    "register",
    "register_forward",
    "forward_override",
]

KERNEL_SETS = ("reference", "fast")

# Where each operation's reference lives (imported on first use).
_REFERENCE_MODULES = {
    "conv2d_forward": "conv",
    "conv2d_backward": "conv",
    "im2col": "im2col",
    "col2im": "im2col",
    "batch_norm_train_forward": "batch_norm",
    "batch_norm_train_backward": "batch_norm",
    "batch_norm_eval_forward": "batch_norm",
    "batch_norm_eval_backward": "batch_norm",
    "update_running_stats": "batch_norm",
    "relu_forward": "relu",
    "relu_backward": "relu",
    "max_pool2d_forward": "pooling",
    "max_pool2d_backward": "pooling",
    "avg_pool2d_forward": "pooling",
    "avg_pool2d_backward": "pooling",
    "global_avg_pool_forward": "pooling",
    "global_avg_pool_backward": "pooling",
    "cross_entropy_forward": "cross_entropy",
    "cross_entropy_backward": "cross_entropy",
}

# The speed plug-ins, imported when the fast set is first used.
_PLUGINS = ("minires.fast", "minires.cuda")

_fast: dict[tuple[str, str], tuple[Callable, Callable | None]] = {}  # (op, device type) -> (fn, when)
_forwards: dict[type, Callable] = {}  # module class -> forward override (fast set only)
_state: dict[str, Any] = {"set": None, "plugins_loaded": False}


def _check_set(name: Any) -> str:
    if name not in KERNEL_SETS:
        raise ValueError(f"unknown kernel set {name!r}: choose one of {', '.join(KERNEL_SETS)}")
    return name


def get_kernels() -> str:
    """The active kernel set: ``"reference"`` or ``"fast"``."""
    if _state["set"] is None:
        value = os.environ.get("MINIRES_KERNELS", "fast").strip().lower() or "fast"
        if value not in KERNEL_SETS:
            raise ValueError(f"MINIRES_KERNELS={value!r} is not a kernel set: use 'reference' or 'fast'")
        _state["set"] = value
    return _state["set"]


def set_kernels(name: str) -> None:
    """Make ``name`` (``"reference"`` or ``"fast"``) the active kernel set for the whole process."""
    _state["set"] = _check_set(name)


@contextlib.contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Run the body with kernel set ``name``, then restore the previous set (also on error)."""
    _check_set(name)
    previous = get_kernels()
    _state["set"] = name
    try:
        yield
    finally:
        _state["set"] = previous


def _load_plugins() -> None:
    if not _state["plugins_loaded"]:
        _state["plugins_loaded"] = True  # first: a plug-in may look kernels up while it imports
        for name in _PLUGINS:
            importlib.import_module(name)


def register(op: str, device_type: str, when: Callable[..., bool] | None = None) -> Callable:
    """Decorator: register ``fn`` as the fast ``op`` for ``device_type`` (``"cpu"`` or ``"cuda"``).

    ``when(*args)``, if given, is asked on every call with the kernel's
    arguments; False falls back to the reference (e.g. a CUDA kernel that
    exists for float32 and float64 only).
    """
    if op not in _REFERENCE_MODULES:
        raise ValueError(f"cannot register {op!r}: no reference kernel has that name")

    def decorate(fn: Callable) -> Callable:
        _fast[(op, device_type)] = (fn, when)
        return fn

    return decorate


def reference(op: str) -> Callable:
    """The reference implementation of ``op`` (a function of :mod:`minires.kernels`)."""
    try:
        module = importlib.import_module(f"minires.kernels.{_REFERENCE_MODULES[op]}")
    except KeyError:
        raise ValueError(f"unknown kernel {op!r}; known: {', '.join(sorted(_REFERENCE_MODULES))}") from None
    return getattr(module, op)


def kernel(op: str, array: Any) -> Callable:
    """The function that computes ``op`` for ``array``'s device under the active kernel set."""
    if get_kernels() == "fast":
        _load_plugins()
        entry = _fast.get((op, backend.device_of(array).type))
        if entry is not None:
            fn, when = entry
            return fn if when is None else _guarded(fn, when, op)
    return reference(op)


def _guarded(fn: Callable, when: Callable[..., bool], op: str) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if when(*args) else reference(op)(*args, **kwargs)

    return call


def register_forward(module_class: type) -> Callable:
    """Decorator: ``fn(module, *args)`` replaces ``module_class.forward`` under the fast set.

    ``fn`` returns ``NotImplemented`` when it does not apply to this call (the
    module then runs its own forward), e.g. a block in evaluation mode.
    Only instances of exactly ``module_class`` are affected, not subclasses.
    """

    def decorate(fn: Callable) -> Callable:
        _forwards[module_class] = fn
        return fn

    return decorate


def forward_override(module: Any) -> Callable | None:
    """The fast set's replacement for ``module.forward``, or None (run the module's own)."""
    if get_kernels() != "fast":
        return None
    _load_plugins()
    return _forwards.get(type(module))
