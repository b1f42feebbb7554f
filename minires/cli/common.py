"""What every command shares: the error exit, integer arguments, loading CIFAR-10, the banner."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

__all__ = ["fail", "integer", "at_least", "load_cifar", "print_banner"]


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``minires COMMAND: error: MESSAGE`` to standard error; return the exit code (2: usage error)."""
    print(f"minires {command}: error: {message}", file=sys.stderr)
    return code


def integer(text: str) -> int:
    """An argparse type: an integer, with a clear message otherwise."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, refused while parsing, before any data is loaded."""

    def parse(text: str) -> int:
        value = integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def load_cifar(data_dir: str | None, download: bool, say: Callable[[str], None] = print) -> Any:
    """CIFAR-10 from ``data_dir`` (or the default location); ``CIFARError`` says what is missing or damaged."""
    from ..data import load_cifar10, resolve_data_dir

    root = resolve_data_dir(data_dir)
    # "meta": every batch file must hold the number of images batches.meta
    # declares (10,000 in the official files, fewer in the tests' small
    # synthetic CIFAR-10), so a short but readable file is still refused.
    data = load_cifar10(root, download=download, examples_per_batch="meta")
    say(f"data: {data.train_images.shape[0]} training / {data.test_images.shape[0]} test images from {root}")
    return data


def print_banner(device: Any, model: Any) -> None:
    """The active backend/device and the model's one-line summary."""
    from ..summary import summary

    module = "cupy" if device.type == "cuda" else "numpy"
    print(f"backend: {module} | device: {device}")
    print(summary(model, (3, 32, 32)).summary_line())
