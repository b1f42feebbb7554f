"""Hand-written CUDA kernels for the GPU backend (CuPy), and the helpers they share.

The code in :mod:`minires.kernels` is the readable reference and runs
on CuPy arrays too (``xp = get_array_module(x)``). For the hot spots that the
array-module idiom would turn into many small kernels, this package has
hand-written CUDA, one module per concept, each a small CUDA source string
plus the Python that launches it:

    im2col       im2col and col2im (col2im as a GATHER: no atomics, deterministic),
                 and the convolution built on them: one cuBLAS GEMM per batch chunk
    batch_norm   training-mode batch norm: one reduction pass for the statistics,
                 one elementwise pass for the normalisation; the backward the same;
                 running statistics updated on the device
    relu         ReLU forward and backward as one-line elementwise kernels

Everything else (pooling, the classifier head, the loss, SGD) runs through
CuPy's own kernels via the array-module idiom.

How the kernels are built. CuPy compiles CUDA source at run time (NVRTC),
the first time a kernel is launched with a given data type, and caches the
binary on disk (``~/.cupy/kernel_cache``), so the first training step is slow
and later runs are not. Two kinds of kernel are used:

* ``cupy.ElementwiseKernel``: we write only the loop BODY for one element
  (``y = x > 0 ? x : 0``); CuPy generates the loop, the indexing and the
  launch. Right for anything "one output element from the same element of
  the inputs".
* ``cupy.RawModule``: a complete CUDA C++ source with ``__global__``
  functions that we launch ourselves with a grid of blocks, needed when
  threads must cooperate (a reduction through shared memory) or when one
  output element reads many inputs in a pattern of our choosing (im2col).
  The kernels are C++ templates over the element type ``T`` (float or
  double), instantiated by name (``"bn_stats_partial<float>"``).

Nothing here imports CuPy: the array module comes from
:func:`minires.backend.get_array_module` of the arrays passed in, so this
package imports (and its sources can be read) on a machine without a GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "supported",
    "c_type",
    "raw_module",
    "kernel_function",
    "multiprocessor_count",
    "grid_size",
    "THREADS",
]

# Threads per block for the hand-launched kernels: a multiple of the warp size
# (32) and a power of two (the shared-memory reductions halve it repeatedly).
THREADS = 256

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def supported(*arrays: Any) -> bool:
    """True when every array is float32 or float64 and they share one dtype.

    The hand-written kernels are instantiated for those two types only; any
    other dtype (float16, ...) stays on the generic CuPy path.
    """
    dtypes = {np.dtype(a.dtype) for a in arrays if a is not None}
    return len(dtypes) == 1 and next(iter(dtypes)) in _C_TYPES


def c_type(dtype: Any) -> str:
    """The CUDA C type name of a NumPy dtype: float32 -> "float", float64 -> "double"."""
    try:
        return _C_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the CUDA kernels support float32 and float64, got dtype {np.dtype(dtype)}") from None


@functools.lru_cache(maxsize=None)
def raw_module(cp: Any, code: str, name_expressions: tuple[str, ...]) -> Any:
    """A ``cupy.RawModule`` for ``code``, built once per process (compiled lazily by CuPy).

    ``name_expressions`` lists the template instantiations to compile
    (``("kernel<float>", "kernel<double>")``); fetch one with
    ``module.get_function(name)``.
    """
    return cp.RawModule(code=code, name_expressions=list(name_expressions))


def kernel_function(cp: Any, code: str, name_expressions: tuple[str, ...], name: str) -> Any:
    """The compiled kernel ``name`` of ``code`` for the current device, looked up once per (device, kernel).

    ``RawModule.get_function`` does a dictionary search and builds a Python
    object on every call: once per launch adds up over a training step.
    """
    return _kernel_function(cp, int(cp.cuda.Device().id), code, name_expressions, name)


@functools.lru_cache(maxsize=None)
def _kernel_function(cp: Any, device_id: int, code: str, name_expressions: tuple[str, ...], name: str) -> Any:
    return raw_module(cp, code, name_expressions).get_function(name)


@functools.lru_cache(maxsize=None)
def _sm_count(cp: Any, device_id: int) -> int:
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def multiprocessor_count(cp: Any) -> int:
    """Streaming multiprocessors of the current device (132 on an H100 SXM)."""
    return _sm_count(cp, int(cp.cuda.Device().id))


def grid_size(cp: Any, total: int, threads: int = THREADS) -> int:
    """Blocks for a grid-stride loop over ``total`` items.

    One thread per item up to 32 blocks per multiprocessor (plenty to keep the
    GPU busy); beyond that each thread loops over several items, so the grid
    stays a modest size whatever ``total`` is.
    """
    needed = max(1, -(-int(total) // threads))
    return min(needed, 32 * multiprocessor_count(cp))


# Importing the kernel modules registers them for the "cuda" device (minires.dispatch).
from . import batch_norm, im2col, relu  # noqa: E402,F401
