"""NVRTC, CUDA's run-time compiler, called directly through ctypes: compile CUDA C++ without a GPU.

CuPy compiles every kernel with NVRTC when it is first launched. NVRTC is a
plain shared library (``libnvrtc.so``) that turns source text into GPU machine
code for a named architecture; it needs no GPU and no driver. CuPy itself
cannot be used for this on a machine without a GPU, because it asks the
device for its architecture before compiling. So the tests call the library
directly, with the options CuPy would pass.

Where the library comes from, first found wins:

1. ``MINIRES_NVRTC``: a path to ``libnvrtc.so*``;
2. the NVIDIA wheels on ``sys.path``: ``nvidia-cuda-nvrtc-cu12`` installs
   ``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``, ``nvidia-cuda-nvrtc`` (CUDA 13)
   ``nvidia/cu13/lib/libnvrtc.so.13``;
3. ``cuda.pathfinder`` (installed with CuPy 14), which knows the other places;
4. a CUDA toolkit: ``$CUDA_PATH``, ``$CUDA_HOME``, ``/usr/local/cuda``;
5. the system's library search path.

The API used (all functions return an ``nvrtcResult``, 0 for success)::

    nvrtcCreateProgram(&prog, source, name, 0, NULL, NULL)
    nvrtcAddNameExpression(prog, "kernel<float>")     # a template instantiation to compile
    nvrtcCompileProgram(prog, n_options, options)
    nvrtcGetLoweredName(prog, "kernel<float>", &mangled)
    nvrtcGetCUBINSize / nvrtcGetCUBIN                  # machine code for -arch=sm_XX
    nvrtcGetProgramLogSize / nvrtcGetProgramLog        # the compiler's messages
    nvrtcDestroyProgram(&prog)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NVRTCError", "Compiled", "find_library", "load", "compile_source"]


class NVRTCError(RuntimeError):
    """A compilation failed; the message holds NVRTC's log."""


@dataclass
class Compiled:
    """What one compilation produced: the machine code, the log, and each name expression's symbol."""

    cubin: bytes
    log: str
    lowered_names: dict[str, str]


def _wheel_candidates() -> list[str]:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for root in spec.submodule_search_locations:
        for sub in ("cuda_nvrtc/lib", "cu13/lib", "cu12/lib"):
            found += sorted(glob.glob(os.path.join(root, sub, "libnvrtc.so*")))
    return found


def _pathfinder_candidates() -> list[str]:
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError:
        return []
    try:
        return [load_nvidia_dynamic_lib("nvrtc").abs_path]
    except Exception:  # not found: pathfinder raises its own error types
        return []


def _toolkit_candidates() -> list[str]:
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    found = []
    for root in filter(None, roots):
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            found += sorted(glob.glob(os.path.join(root, lib, "libnvrtc.so*")))
    return found


def find_library() -> str | None:
    """The path (or soname) of a libnvrtc to load, or None when there is none."""
    explicit = os.environ.get("MINIRES_NVRTC")
    if explicit:
        return explicit
    for candidates in (_wheel_candidates, _pathfinder_candidates, _toolkit_candidates):
        # The "alt" builds are alternative variants of the same library; the plain one is enough.
        paths = [p for p in candidates() if ".alt." not in Path(p).name]
        if paths:
            return paths[0]
    return ctypes.util.find_library("nvrtc")


_loaded: dict[str, ctypes.CDLL] = {}


def load() -> ctypes.CDLL:
    """libnvrtc, loaded once; raises OSError saying where it looked when none is found."""
    path = find_library()
    if path is None:
        raise OSError(
            "no libnvrtc found (looked at MINIRES_NVRTC, the nvidia-cuda-nvrtc wheels, cuda.pathfinder, "
            "CUDA_PATH/CUDA_HOME//usr/local/cuda and the system library path); "
            "install one with `pip install nvidia-cuda-nvrtc-cu12`"
        )
    if path not in _loaded:
        lib = ctypes.CDLL(path)
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        _loaded[path] = lib
    return _loaded[path]


def version(lib: ctypes.CDLL | None = None) -> tuple[int, int]:
    """NVRTC's (major, minor) version, e.g. (12, 6)."""
    lib = lib or load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_architectures(lib: ctypes.CDLL | None = None) -> list[int]:
    """The sm_XX numbers this NVRTC can compile for (e.g. [50, ..., 80, 86, 89, 90])."""
    lib = lib or load()
    count = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * count.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _check(lib: ctypes.CDLL, result: int, what: str, log: str = "") -> None:
    if result != 0:
        message = lib.nvrtcGetErrorString(result).decode()
        raise NVRTCError(f"{what} failed: {message}" + (f"\n{log}" if log else ""))


def _log(lib: ctypes.CDLL, prog: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    text = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, text)
    return text.value.decode(errors="replace")


def compile_source(source: str, options: list[str], name_expressions: list[str] = (),
                   filename: str = "kern.cu") -> Compiled:
    """Compile ``source`` to a cubin with ``options`` (one must be ``-arch=sm_XX``).

    ``name_expressions`` are template instantiations (``"kernel<float>"``) to
    compile and look up, as ``cupy.RawModule(name_expressions=...)`` does.
    Raises :class:`NVRTCError` with the compiler's log when compilation fails.
    """
    lib = load()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expression in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expression.encode()), f"nvrtcAddNameExpression({expression})")
        encoded = [o.encode() for o in options]
        argv = (ctypes.c_char_p * len(encoded))(*encoded)
        result = lib.nvrtcCompileProgram(prog, len(encoded), argv)
        log = _log(lib, prog)
        _check(lib, result, f"compiling {filename} with {' '.join(options)}", log)
        lowered = {}
        for expression in name_expressions:
            name = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expression.encode(), ctypes.byref(name)),
                   f"nvrtcGetLoweredName({expression})")
            lowered[expression] = name.value.decode()
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return Compiled(cubin=cubin.raw, log=log, lowered_names=lowered)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
