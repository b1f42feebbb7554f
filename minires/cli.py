"""The ``minires`` command line.

Sub-commands are small functions registered in :func:`build_parser`; each
returns a process exit code.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from . import __version__, backend


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the active backend, devices and, when there is no GPU, why."""
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
    if backend.cupy_available():
        cp = backend.get_array_module(backend.to_device(numpy.zeros(1), "cuda"))
        count = cp.cuda.runtime.getDeviceCount()
        for i in range(count):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"device  cuda:{i}  {name}  {props['totalGlobalMem'] / 2**30:.1f} GiB")
        print("GPU backend: available (CuPy)")
    else:
        print("device  cpu")
        print(f"GPU backend: unavailable: {backend.cupy_unavailable_reason()}")
    try:
        dev = backend.default_device()
        print(f"active backend: {'cupy' if dev.type == 'cuda' else 'numpy'} (default device {dev})")
    except Exception as exc:  # MINIRES_DEVICE=cuda without a GPU: say so, do not crash info
        print(f"active backend: none: {exc}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minires", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"minires {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="versions, backend, devices")
    p_info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
