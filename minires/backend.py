"""Which array library runs the numbers: NumPy always, CuPy when it can.

Every array in minires is either a ``numpy.ndarray`` (device ``cpu``) or a
``cupy.ndarray`` (device ``cuda:N``). Code that must work on both asks for the
module that owns its arrays::

    xp = get_array_module(x)      # numpy or cupy
    y = xp.maximum(x, 0)

This is the only module that imports CuPy. It decides once, at first use,
whether CuPy is usable: importing it is not enough, because a machine can have
the package but no driver or no device. When CuPy is unusable the reason is
kept so that ``minires info`` and error messages can say *why* the GPU
backend is off instead of failing later with an obscure CUDA error.

The default device comes from the environment variable ``MINIRES_DEVICE``:
``cpu``, ``cuda`` (or ``cuda:N``), or ``auto`` (the default: ``cuda`` when
usable, else ``cpu``). Like PyTorch, tensors built from Python data live on
the CPU unless a device is named; the default device is what the trainer and
the CLI use when the user says ``--device auto``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Device",
    "device",
    "cpu",
    "default_device",
    "get_array_module",
    "is_array",
    "device_of",
    "to_device",
    "cupy_available",
    "cupy_unavailable_reason",
    "DeviceError",
]


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or arrays on
    different devices were mixed."""


# ---------------------------------------------------------------------------
# CuPy detection (done lazily, once)
# ---------------------------------------------------------------------------

_cupy_state: dict[str, Any] = {"checked": False, "module": None, "reason": None}


def _probe_cupy() -> None:
    """Import CuPy and prove a device works; remember the module or the reason."""
    if _cupy_state["checked"]:
        return
    _cupy_state["checked"] = True
    try:
        import cupy  # noqa: WPS433 (optional dependency, imported on purpose here only)
    except Exception as exc:  # ImportError, or a broken install raising anything
        _cupy_state["reason"] = (
            f"CuPy is not installed or failed to import ({type(exc).__name__}: {exc}); "
            "install the extra with `pip install -e \".[gpu]\"` on a machine with CUDA"
        )
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise RuntimeError("no CUDA device found")
        # A tiny allocation and kernel launch: a missing or mismatched driver
        # often only fails here, not at import or device count.
        probe = cupy.arange(4, dtype=cupy.float32)
        float((probe * 2).sum())
    except Exception as exc:
        _cupy_state["reason"] = (
            f"CuPy {getattr(cupy, '__version__', '?')} is installed but no CUDA device is usable "
            f"({type(exc).__name__}: {exc})"
        )
        return
    _cupy_state["module"] = cupy


def cupy_available() -> bool:
    """True when CuPy imports and a CUDA device answers."""
    _probe_cupy()
    return _cupy_state["module"] is not None


def cupy_unavailable_reason() -> str | None:
    """Why the GPU backend is off (``None`` when it is on)."""
    _probe_cupy()
    return _cupy_state["reason"]


def _cupy():
    _probe_cupy()
    if _cupy_state["module"] is None:
        raise DeviceError(f"CUDA was requested but is not usable: {_cupy_state['reason']}")
    return _cupy_state["module"]


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A place where arrays live: ``Device("cpu")`` or ``Device("cuda", 0)``."""

    type: str
    index: int | None = None

    def __post_init__(self) -> None:
        if self.type not in ("cpu", "cuda"):
            raise ValueError(f"device type must be 'cpu' or 'cuda', got {self.type!r}")
        if self.type == "cpu" and self.index not in (None, 0):
            raise ValueError(f"the cpu device has no index, got {self.index!r}")
        if self.type == "cuda" and self.index is not None and (not isinstance(self.index, int) or self.index < 0):
            raise ValueError(f"a cuda device index must be a non-negative int, got {self.index!r}")
        # One spelling per device, so that equality and hashing work: Device("cuda") is
        # cuda:0 and Device("cpu", 0) is the cpu (a frozen dataclass needs object.__setattr__).
        object.__setattr__(self, "index", None if self.type == "cpu" else (self.index or 0))

    @property
    def xp(self):
        """The array module for this device (``numpy`` or ``cupy``)."""
        return np if self.type == "cpu" else _cupy()

    def enabled(self) -> bool:
        """Whether this device can be used on this machine."""
        if self.type == "cpu":
            return True
        if not cupy_available():
            return False
        return (self.index or 0) < _cupy_state["module"].cuda.runtime.getDeviceCount()

    def __str__(self) -> str:
        if self.type == "cpu":
            return "cpu"
        return f"cuda:{self.index or 0}"

    def __repr__(self) -> str:
        return f"device('{self}')"


cpu = Device("cpu")


def device(spec: "str | Device | None" = None) -> Device:
    """Parse ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a :class:`Device`.

    ``None`` and ``"auto"`` resolve to :func:`default_device`. Asking for a
    CUDA device that is not usable raises :class:`DeviceError` with the reason.
    """
    if isinstance(spec, Device):
        dev = spec
    elif spec is None or spec == "auto":
        return default_device()
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "cpu":
            dev = cpu
        elif text == "cuda":
            dev = Device("cuda", 0)
        elif text.startswith("cuda:") and text[5:].isdigit():
            dev = Device("cuda", int(text[5:]))
        else:
            raise ValueError(f"unknown device {spec!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    else:
        raise TypeError(f"device must be a string or Device, got {type(spec).__name__}")
    if dev.type == "cuda":
        if not cupy_available():
            raise DeviceError(f"device {dev} was requested but CUDA is not usable: {cupy_unavailable_reason()}")
        count = _cupy_state["module"].cuda.runtime.getDeviceCount()
        if (dev.index or 0) >= count:
            raise DeviceError(f"device {dev} was requested but this machine has {count} CUDA device(s)")
    return dev


def default_device() -> Device:
    """The device chosen by ``MINIRES_DEVICE`` (cpu | cuda | cuda:N | auto; default auto)."""
    choice = os.environ.get("MINIRES_DEVICE", "auto").strip().lower() or "auto"
    if choice == "auto":
        return Device("cuda", 0) if cupy_available() else cpu
    try:
        return device(choice)
    except ValueError as exc:
        raise ValueError(f"MINIRES_DEVICE={choice!r} is invalid: {exc}") from None


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------


def _is_cupy_array(a: Any) -> bool:
    # Checked by the class's module name so NumPy-only machines never import CuPy.
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays: Any):
    """``cupy`` if any argument is a CuPy array, else ``numpy``.

    Takes raw arrays (``Tensor.data``), not Tensors: this module sits below the
    autograd engine and knows nothing about it. Non-array arguments (Python scalars, None) are ignored, so
    ``get_array_module(x, None)`` works.
    """
    for a in arrays:
        if _is_cupy_array(a):
            return _cupy()
    return np


def is_array(value: Any) -> bool:
    """True for a raw NumPy or CuPy array (what Tensors, buffers and checkpoints hold)."""
    return isinstance(value, np.ndarray) or _is_cupy_array(value)


def device_of(array: Any) -> Device:
    """The :class:`Device` an array lives on."""
    if _is_cupy_array(array):
        return Device("cuda", int(array.device.id))
    return cpu


_transfer_count = [0]  # host<->device copies so far, read by minires.debug.count_transfers


def to_device(array: Any, dev: "str | Device") -> Any:
    """Return ``array`` on device ``dev`` (the same object when already there)."""
    dev = device(dev)
    here = device_of(array)
    if here == dev:
        return array
    _transfer_count[0] += 1  # a real copy between devices (see minires.debug)
    if dev.type == "cpu":
        return array.get()  # cupy -> numpy: one explicit device-to-host copy
    cp = _cupy()
    with cp.cuda.Device(dev.index or 0):
        return cp.asarray(array)
