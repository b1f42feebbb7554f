"""Which array library runs the numbers: NumPy always, CuPy when it can.

Every array in minires is either a ``numpy.ndarray`` (device ``cpu``) or a
``cupy.ndarray`` (device ``cuda:N``). Code that must work on both asks for the
module that owns its arrays::

    xp = get_array_module(x)      # numpy or cupy
    y = xp.maximum(x, 0)

This is the only module that imports CuPy. It decides once, at first use,
whether CuPy is usable: importing it is not enough, because a machine can have
the package but no driver or no device, or a device but no run-time compiler
(NVRTC) for the kernels. When CuPy is unusable the reason is kept so that
``minires info`` and error messages can say *why* the GPU backend is off
(:func:`cuda_status`) instead of failing later with an obscure CUDA error.

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
    "cuda_status",
    "CUDA_STATES",
    "DeviceError",
]


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or arrays on
    different devices were mixed."""


# ---------------------------------------------------------------------------
# CuPy detection (done lazily, once)
# ---------------------------------------------------------------------------

# The four answers of the probe, in the order it can fail (see cuda_status).
CUDA_STATES = ("missing", "no-device", "compile-failed", "ok")

# CuPy majors this code was checked against (the APIs it calls exist in both).
SUPPORTED_CUPY_MAJORS = (13, 14)

_cupy_state: dict[str, Any] = {"checked": False, "module": None, "reason": None, "state": None, "message": None}


def _probe_cupy() -> None:
    """Import CuPy and prove a device works and kernels compile; remember the module or the reason.

    Three steps, because each fails for a different reason and needs a
    different fix: the import (is CuPy installed?), a device allocation (is
    there a driver and a GPU?), and compiling and running a tiny kernel of our
    own (is NVRTC, CUDA's run-time compiler, installed with its headers?).
    CuPy compiles almost every kernel it launches, its own ``x * 2`` included,
    so a machine without NVRTC has a GPU that cannot do anything useful, and
    the error it gives deep inside a training step does not say so.
    """
    if _cupy_state["checked"]:
        return
    _cupy_state["checked"] = True
    try:
        import cupy  # noqa: WPS433 (optional dependency, imported on purpose here only)
    except Exception as exc:  # ImportError, or a broken install raising anything
        _set_state("missing", (
            f"CuPy is not installed or failed to import ({type(exc).__name__}: {exc}); on a machine with an "
            "NVIDIA driver install the extra for its CUDA major version: `pip install -e \".[gpu-cuda12]\"` "
            "or `pip install -e \".[gpu-cuda13]\"` (`nvidia-smi` shows the CUDA version)"
        ))
        return
    version = getattr(cupy, "__version__", "?")
    try:
        probe = _probe_device(cupy)
    except Exception as exc:
        _set_state("no-device", (
            f"CuPy {version} is installed but no CUDA device is usable ({type(exc).__name__}: {exc}); "
            "check that `nvidia-smi` lists a GPU and that the driver supports this CuPy's CUDA version"
        ))
        return
    try:
        _probe_compile(cupy, probe)
    except Exception as exc:
        _set_state("compile-failed", (
            f"CuPy {version} sees a CUDA device but cannot compile and run a kernel "
            f"({type(exc).__name__}: {_first_lines(exc)}); {_nvrtc_hint(cupy)}"
        ))
        return
    _cupy_state["module"] = cupy
    _set_state("ok", _ok_message(cupy))


def _set_state(state: str, message: str) -> None:
    _cupy_state["state"] = state
    _cupy_state["message"] = message
    _cupy_state["reason"] = None if state == "ok" else message


def _probe_device(cupy: Any) -> Any:
    """A small array on device 0, made without compiling anything (raises when there is no GPU)."""
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise RuntimeError("no CUDA device found")
    # A missing or mismatched driver often fails only here, at the first
    # allocation; zeros is a memset, which needs no compiled kernel.
    return cupy.zeros(4, dtype=np.float32)


def _probe_compile(cupy: Any, probe: Any) -> None:
    """Compile a one-line ElementwiseKernel (NVRTC), run it, and check its result on the host."""
    add_one = cupy.ElementwiseKernel("T x", "T y", "y = x + T(1)", "minires_probe_add_one")
    result = add_one(probe).get()
    if result.tolist() != [1.0, 1.0, 1.0, 1.0]:
        raise RuntimeError(f"a kernel computing x + 1 on zeros returned {result.tolist()}")


def _first_lines(exc: BaseException, limit: int = 3) -> str:
    """The first lines of an exception's text (a compiler log can be pages long)."""
    lines = str(exc).strip().splitlines()
    return " / ".join(lines[:limit]) + (" / ..." if len(lines) > limit else "")


def _cuda_major(cupy: Any) -> int | None:
    """The CUDA major version CuPy was built for (12 or 13), or None when it cannot say."""
    try:
        return int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:
        return None


def _nvrtc_hint(cupy: Any) -> str:
    """What to install so that CuPy can compile kernels (NVRTC and the CUDA headers)."""
    major = _cuda_major(cupy)
    if major == 12:
        packages = "nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12"
    elif major == 13:
        packages = "\"nvidia-cuda-nvrtc==13.*\" \"nvidia-cuda-runtime==13.*\""
    else:
        return ("install NVRTC and the CUDA headers of the CUDA version CuPy was built for (a CUDA toolkit, "
                "or the nvidia-cuda-nvrtc and nvidia-cuda-runtime wheels)")
    return (f"install NVRTC and the CUDA {major} headers: `pip install {packages}` "
            f"(with CuPy 14, `pip install \"cupy-cuda{major}x[ctk]\"` does the same), or a CUDA {major} toolkit "
            "with CUDA_PATH pointing at it")


def _ok_message(cupy: Any) -> str:
    version = getattr(cupy, "__version__", "?")
    parts = [f"CuPy {version}"]
    major = _cuda_major(cupy)
    if major is not None:
        parts.append(f"CUDA {major}")
    try:
        parts.append(f"{cupy.cuda.runtime.getDeviceCount()} device(s)")
    except Exception:
        pass
    message = ", ".join(parts) + ": kernels compile and run"
    try:
        cupy_major = int(str(version).split(".")[0])
    except ValueError:
        cupy_major = None
    if cupy_major not in SUPPORTED_CUPY_MAJORS:
        tested = " and ".join(map(str, SUPPORTED_CUPY_MAJORS))
        message += f" (untested CuPy version: minires is checked with CuPy {tested})"
    return message


def cuda_status() -> tuple[str, str]:
    """``(state, message)``: whether the GPU backend works, and if not, why and what to do.

    ``state`` is one of :data:`CUDA_STATES`:

    * ``"missing"``: CuPy is not installed (or does not import);
    * ``"no-device"``: CuPy imports but finds no usable GPU (no driver, no
      device, or a driver too old for this CuPy's CUDA);
    * ``"compile-failed"``: a GPU answers but a kernel does not compile or
      run, usually because NVRTC or the CUDA headers are missing; the message
      says which package to install;
    * ``"ok"``: CuPy, a device and kernel compilation all work.
    """
    _probe_cupy()
    if _cupy_state["module"] is not None:
        return "ok", _cupy_state.get("message") or "CuPy: kernels compile and run"
    state = _cupy_state.get("state")
    # No module but no failure recorded either: nothing usable was found.
    return (state if state not in (None, "ok") else "missing"), _cupy_state["reason"]


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

    def synchronize(self) -> None:
        """Wait until the work queued on this device is done (nothing to wait for on the CPU).

        GPU kernels run asynchronously: read a clock only after this, or it
        measures how fast the work was queued, not how fast it ran.
        """
        if self.type == "cuda":
            _cupy().cuda.Device(self.index or 0).synchronize()

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


def cuda_device_count() -> int:
    """How many CUDA devices this process can use (0 when CuPy or the driver is not usable)."""
    if not cupy_available():
        return 0
    return int(_cupy_state["module"].cuda.runtime.getDeviceCount())


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
