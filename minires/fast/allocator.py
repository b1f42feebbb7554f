"""Keep freed memory for reuse instead of handing it back to the operating system (CPU, glibc).

Why this matters for training speed
-----------------------------------
A training step allocates the same arrays every time: the forward pass keeps
each layer's output for the backward pass (a few MB each at batch 128), the
backward pass creates a gradient of the same size for each, and at the end of
the step all of them are freed. What happens next is decided by the C
library's ``malloc``, not by NumPy:

* Blocks above the *mmap threshold* get pages of their own from the kernel
  (``mmap``) and are returned when freed (``munmap``).
* Freed memory at the top of the ordinary heap is returned once more than the
  *trim threshold* is free.

Memory that went back to the kernel comes back as fresh pages. The first write
to each 4 kB page is a page fault, and the kernel zeroes the page before the
program may use it. At CIFAR sizes a ResNet-20 step touches several hundred MB
of such pages, about a sixth of the step on a 2-core machine (README.md).
glibc does raise both thresholds by itself after the first large ``free``
(the trim threshold to twice the largest block freed), but a whole step's
arrays released together still exceed that, and the heap is trimmed.

:func:`keep_freed_memory` sets the mmap threshold to 32 MB (glibc's maximum,
so every activation of a CIFAR ResNet comes from the heap) and the trim
threshold to 1 GB. Freed arrays then stay mapped and are reused by the next
step: the process's resident size stays at its peak instead of breathing in
and out, which for a training loop is the peak anyway.

The settings are process-wide: they apply to every library in the process,
PyTorch included. Nothing is changed unless you call the function;
:func:`minires.fast.training_context` does, for CPU training under the fast set. Where the C
library is not glibc (macOS, Windows, musl) the function does nothing and
returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc; larger values are refused
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied = False


def _libc_mallopt():
    """glibc's ``mallopt`` as a ctypes function, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Ask ``malloc`` to keep freed blocks for reuse (see the module docstring).

    Returns True when both settings were accepted (glibc), False when the
    C library has no ``mallopt`` or refused them. Calling it again is harmless.
    """
    global _applied
    if _applied:
        return True
    mallopt = _libc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 on error.
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok
