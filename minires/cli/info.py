"""``minires info``: versions, the active backend, devices, the kernel set, MPI, and when there is no GPU, why."""

from __future__ import annotations

import argparse
import os
import platform
import sys

from .. import __version__, backend, dispatch
from ..distributed import mpi_status

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, backend, devices")
    p.set_defaults(func=run)


def _print_devices() -> None:
    import numpy

    if backend.cupy_available():
        cp = backend.get_array_module(backend.to_device(numpy.zeros(1), "cuda"))
        for i in range(cp.cuda.runtime.getDeviceCount()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"device  cuda:{i}  {name}  {props['totalGlobalMem'] / 2**30:.1f} GiB")
        print("GPU backend: available (CuPy)")
    else:
        print("device  cpu")
        state, message = backend.cuda_status()
        print(f"GPU backend: unavailable ({state}): {message}")


def run(args: argparse.Namespace) -> int:
    import numpy

    print(f"minires {__version__}")
    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"numpy   {numpy.__version__}")
    try:
        import cupy  # noqa: F401

        cupy_version = cupy.__version__
    except Exception:
        cupy_version = "not installed"
    print(f"cupy    {cupy_version}")
    env = os.environ.get("MINIRES_DEVICE", "")
    print(f"MINIRES_DEVICE = {env or '(unset: auto)'}")
    _print_devices()
    print(f"MPI (data parallel): {mpi_status()}")
    try:
        print(f"kernels: {_kernel_set()}")
    except ValueError as exc:  # a bad MINIRES_KERNELS: every command would fail on it
        print(f"kernels: invalid: {exc}")
        return 1
    try:
        dev = backend.default_device()
        print(f"active backend: {'cupy' if dev.type == 'cuda' else 'numpy'} (default device {dev})")
    except Exception as exc:  # MINIRES_DEVICE=cuda without a GPU: say so, do not crash info
        print(f"active backend: none: {exc}")
        return 1
    return 0


def _kernel_set() -> str:
    """The active kernel set and where the choice came from (ValueError: a bad MINIRES_KERNELS)."""
    active = dispatch.get_kernels()
    source = f"MINIRES_KERNELS={os.environ['MINIRES_KERNELS']}" if os.environ.get("MINIRES_KERNELS") else "default"
    what = "the readable code of minires/kernels" if active == "reference" else "minires/kernels + speed plug-ins"
    return f"{active} ({source}; {what})"
