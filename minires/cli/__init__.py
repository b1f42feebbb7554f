"""The ``minires`` command line: one module per command, each with ``add_parser`` and ``run(args) -> exit code``.

* ``minires info``: versions, backend, devices (:mod:`.info`);
* ``minires train``: train a model on CIFAR-10 (:mod:`.train`);
* ``minires eval``: test accuracy and loss of a saved checkpoint (:mod:`.eval`);
* ``minires compare``: train plain and residual twins side by side (:mod:`.compare`);
* ``minires gradflow``: per-layer gradient norms at initialisation, plain
  versus residual (:mod:`.gradflow`).

Exit codes: 0 success; 1 a runtime failure (data missing, training
diverged); 2 a usage error found before any work (unknown model, impossible
batch size, output directory not writable, damaged or mismatching
checkpoint); 130 interrupted by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import compare, gradflow, info, train
from . import eval as eval_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minires", description="minires: residual networks from scratch in NumPy/CuPy, trained and taken apart"
    )
    parser.add_argument("--version", action="version", version=f"minires {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (info, train, eval_command, compare, gradflow):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` runs it again under mpiexec
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))
