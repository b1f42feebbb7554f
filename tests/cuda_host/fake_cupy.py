"""A stand-in for CuPy that runs on the CPU, strict where CuPy is strict, to exercise the GPU code without a GPU.

minires decides that an array lives on a GPU by the module of its class
(``type(a).__module__.startswith("cupy")``, see ``minires/backend.py``), and
asks ``backend`` for the array module. This module provides both: arrays of
class ``cupy._fake.ndarray`` that hold a NumPy array, and a module object
whose functions are NumPy's. Installed as the backend's CuPy (:func:`install`),
it lets the REAL GPU code path run: ``dispatch.kernel(op, array)`` picks
``minires.cuda``'s functions, which build ``RawModule`` and
``ElementwiseKernel`` objects and launch them, exactly as on a GPU.

What a launch does here: each hand-written kernel has a transcription in
NumPy (``kernel_transcriptions.py``), looked up by the kernel's name. It
follows the CUDA source line by line (grid-stride loops, shared-memory tree
reductions, index arithmetic), vectorised over the threads of the launched
grid, so a wrong grid, a wrong index or a missed element shows up as a wrong
number. What CuPy would refuse is refused here too, with an explanation:

* a RawKernel argument must have exactly the C type of its parameter,
  parsed from the CUDA source: ``np.int32`` for ``int``, ``np.int64`` for
  ``long long``, ``np.float64`` for ``double``. A Python int is not enough:
  CuPy passes it as a 64-bit value, and a kernel reading an ``int`` then
  reads half of it (on little-endian machines often the right half, which
  hides the bug until a negative or large value arrives);
* an array argument must have the element type of its pointer and be
  C-contiguous (the kernel gets a bare pointer and indexes it itself);
* launch sizes within CUDA's limits (1024 threads per block, 65535 blocks
  in y and z);
* arrays on the host (NumPy) and on the device cannot be mixed in one
  operation, and an array does not silently convert to NumPy (use ``.get()``);
* ``empty`` returns NaN-filled memory, so a kernel that leaves an element
  unwritten produces a NaN instead of a plausible zero.

It also counts what matters for speed on a real GPU: kernel launches by
name, and reads from the device to the host (``get``, ``item``, ``float()``,
``int()``, ``bool()``), each of which would wait for the GPU.

Limits: NumPy's arithmetic is not the GPU's (the GPU contracts ``a*b + c``
into one fused multiply-add, so results may differ in the last bits);
type promotion follows NumPy 2, as CuPy 14 does (CuPy 13 used NumPy 1's
value-based rules). Nothing here checks memory races or timing.
"""

from __future__ import annotations

import collections
import hashlib
import types
from typing import Any

import numpy as np
from kernel_sources import elementwise_params, global_functions, kernel_params

__all__ = ["ndarray", "FakeCuPy", "FAKE", "install", "fingerprint"]


def fingerprint(text: str) -> str:
    """A short hash of CUDA text with comments and spacing removed: changes when the code changes."""
    code = " ".join(_strip_comments(text).split())
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def _strip_comments(code: str) -> str:
    import re

    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", code)


# ---------------------------------------------------------------------------
# Arrays "on the device"
# ---------------------------------------------------------------------------


class _Device:
    """What ``array.device`` is in CuPy: a device with an ``id`` (always 0 here)."""

    def __init__(self, index: int = 0) -> None:
        self.id = index


class _Memory:
    """``cupy.cuda.MemoryPointer``, as far as ``.ptr`` goes."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
    """A device array: a NumPy array inside, reachable only through CuPy-like operations.

    Arithmetic operators come from NumPy's ``NDArrayOperatorsMixin`` (they
    call the ufuncs, which come back to :meth:`__array_ufunc__`); methods
    (``sum``, ``reshape``, ``astype``, ...) are NumPy's, their results
    wrapped again. Reductions and scalar indexing give 0-d arrays, as in CuPy,
    never host scalars.
    """

    __module__ = "cupy._fake"  # the name minires.backend recognises a CuPy array by
    __slots__ = ("_a",)

    def __init__(self, host: np.ndarray) -> None:
        self._a = host

    # Metadata lives on the host in CuPy too: reading it costs nothing.
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    device = property(lambda self: _Device(0))
    # ``a.data.ptr``: the address of the first element, what CuPy hands to libraries such as NCCL.
    data = property(lambda self: _Memory(self._a.ctypes.data))

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __getitem__(self, key: Any) -> "ndarray":
        return _wrap(self._a[_unwrap(key, "indexing")])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_unwrap(key, "indexing")] = _unwrap(value, "assignment", allow_host=True)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        where = f"numpy.{ufunc.__name__}"
        args = _unwrap(inputs, where)
        if "out" in kwargs:
            outs = kwargs["out"]
            kwargs["out"] = tuple(_unwrap(o, where) for o in outs)
            getattr(ufunc, method)(*args, **kwargs)
            return outs[0] if len(outs) == 1 else outs
        return _wrap(getattr(ufunc, method)(*args, **_unwrap(kwargs, where)))

    def __array_function__(self, func, types_, args, kwargs):
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))

    def __array__(self, dtype=None, copy=None):
        # CuPy refuses this too: a device array reaches the host only through .get().
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly. (fake cupy)")

    # -- reads that would wait for the GPU -----------------------------------

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        FAKE.host_reads += 1
        return np.array(self._a, order=order, copy=True)

    def item(self):
        FAKE.host_reads += 1
        return self._a.item()

    def tolist(self):
        FAKE.host_reads += 1
        return self._a.tolist()

    def __float__(self) -> float:
        FAKE.host_reads += 1
        return float(self._a)

    def __int__(self) -> int:
        FAKE.host_reads += 1
        return int(self._a)

    def __bool__(self) -> bool:
        FAKE.host_reads += 1
        return bool(self._a)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # NumPy looks for __array_interface__ and the like to read memory directly: a device array has none.
            raise AttributeError(name)
        attribute = getattr(self._a, name)
        if callable(attribute):
            return lambda *args, **kwargs: _wrap(attribute(*_unwrap(args, f".{name}"), **_unwrap(kwargs, f".{name}")))
        return _wrap(attribute)

    def __repr__(self) -> str:
        return f"fake_cupy.{self._a!r}"


def _wrap(value: Any) -> Any:
    """NumPy results -> device arrays (scalars become 0-d arrays, as CuPy returns them)."""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value: Any, where: str, allow_host: bool = False) -> Any:
    """Device arrays -> their NumPy arrays for NumPy to work on; a host array is refused, as CuPy does."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not allow_host:
        raise TypeError(f"{where}: a host (NumPy) array {value.shape} {value.dtype} met a device array; CuPy "
                        "refuses to mix them (move it with backend.to_device first). (fake cupy)")
    if isinstance(value, tuple):
        return tuple(_unwrap(v, where, allow_host) for v in value)
    if isinstance(value, list):
        return [_unwrap(v, where, allow_host) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v, where, allow_host) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------

# Functions that take host data and put it on the device (a copy: the device has its own memory).
_FROM_HOST = {"asarray", "array", "asanyarray"}


def _device_function(function: Any, name: str, from_host: bool = False) -> Any:
    def call(*args, **kwargs):
        if from_host and args and isinstance(args[0], np.ndarray) and not isinstance(args[0], ndarray):
            return ndarray(np.array(args[0], dtype=kwargs.get("dtype"), copy=True))
        return _wrap(function(*_unwrap(args, f"cupy.{name}", from_host), **_unwrap(kwargs, f"cupy.{name}")))

    call.__name__ = name
    return call


class _Namespace:
    """A NumPy submodule (``lib.stride_tricks``, ``linalg``, ...) seen through device arrays."""

    def __init__(self, module: types.ModuleType, prefix: str) -> None:
        self._module, self._prefix = module, prefix

    def __getattr__(self, name: str) -> Any:
        return _device_attribute(getattr(self._module, name), f"{self._prefix}.{name}")


class _Ufunc:
    """A NumPy ufunc that takes and returns device arrays (its methods ``at``, ``reduce``, ... too)."""

    def __init__(self, ufunc: np.ufunc) -> None:
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return _device_function(self._ufunc, self._ufunc.__name__)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return _device_attribute(getattr(self._ufunc, name), f"{self._ufunc.__name__}.{name}")


def _device_attribute(value: Any, name: str) -> Any:
    if isinstance(value, type):  # dtypes (float32, ...) are the same objects in CuPy
        return value
    if isinstance(value, np.ufunc):
        return _Ufunc(value)
    if isinstance(value, types.ModuleType):
        return _Namespace(value, name)
    if callable(value):
        return _device_function(value, name, from_host=name.split(".")[-1] in _FROM_HOST)
    return value


class FakeCuPy(types.ModuleType):
    """The module object: NumPy's functions on device arrays, and CuPy's kernel and device classes."""

    def __init__(self) -> None:
        super().__init__("cupy")
        self.__file__ = __file__
        self.__version__ = "14.2.0+fake"
        self.ndarray = ndarray
        self.cuda = _Cuda()
        self.RawModule = RawModule
        self.ElementwiseKernel = ElementwiseKernel
        self.reset()

    def reset(self) -> None:
        """Forget the counters (one call per test)."""
        self.launches: collections.Counter = collections.Counter()
        self.grids: dict[str, tuple[int, int, int]] = {}  # each RawKernel's latest grid
        self.host_reads = 0

    def __getattr__(self, name: str) -> Any:
        return _device_attribute(getattr(np, name), name)

    # Uninitialised memory looks like NaN (or a large integer), never like a plausible zero.
    def empty(self, shape, dtype=float, order="C") -> ndarray:
        return ndarray(_garbage(np.empty(shape, dtype=dtype, order=order)))

    def empty_like(self, a, dtype=None, order="K", shape=None) -> ndarray:
        return ndarray(_garbage(np.empty_like(_unwrap(a, "cupy.empty_like"), dtype=dtype, order=order, shape=shape)))


def _garbage(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        a.fill(np.nan)
    elif a.dtype.kind in "iu":
        a.fill(np.iinfo(a.dtype).max // 3)
    return a


# ---------------------------------------------------------------------------
# cupy.cuda: one device, streams and events that only record
# ---------------------------------------------------------------------------

MULTIPROCESSORS = 4  # few, so the grids are small and every grid-stride loop goes round several times


class _DeviceHandle:
    """``cupy.cuda.Device``: ``.id``, ``.attributes``, and a context manager selecting it."""

    def __init__(self, index: int | None = None) -> None:
        self.id = 0 if index is None else int(index)
        if self.id != 0:
            raise RuntimeError(f"fake cupy has one device, cuda:0; asked for {self.id}")
        self.attributes = {"MultiProcessorCount": MULTIPROCESSORS, "MaxThreadsPerBlock": 1024}
        self.compute_capability = "90"

    def __enter__(self) -> "_DeviceHandle":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Stream:
    ptr = 0  # the handle CuPy passes to libraries; 0 is CUDA's default stream

    def synchronize(self) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass


class _Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Runtime:
    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 (CuPy's name)
        return 1

    @staticmethod
    def runtimeGetVersion() -> int:  # noqa: N802
        return 13000

    @staticmethod
    def getDeviceProperties(index: int) -> dict:  # noqa: N802
        return {"name": b"fake cupy device", "totalGlobalMem": 16 << 30, "multiProcessorCount": MULTIPROCESSORS}


class _Cuda:
    def __init__(self) -> None:
        self.Device = _DeviceHandle
        self.Stream = _Stream
        self.Event = _Event
        self.runtime = _Runtime()
        self.nccl = None  # like a CuPy built without NCCL; tests/cuda_host/test_nccl.py puts one in
        self._stream = _Stream()

    def get_current_stream(self) -> _Stream:
        return self._stream


# ---------------------------------------------------------------------------
# Kernels: checked like CuPy checks them, run by their NumPy transcription
# ---------------------------------------------------------------------------

# CUDA's launch limits.
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)


def _dims(value: Any, what: str) -> tuple[int, int, int]:
    """A grid or block given as an int or a tuple of up to 3 ints -> (x, y, z)."""
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims):
        raise ValueError(f"{what} must be 1 to 3 positive integers, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


class Launch:
    """The shape of one launch, for a transcription: ``grid`` and ``block`` as (x, y, z)."""

    def __init__(self, grid: tuple[int, int, int], block: tuple[int, int, int]) -> None:
        self.grid, self.block = grid, block

    @property
    def threads(self) -> int:
        """Threads in the whole grid along x (the transcribed kernels use 1-D thread numbering)."""
        return self.grid[0] * self.block[0]

    def grid_stride(self, total: int):
        """The items of a grid-stride loop, round by round: thread t handles t, t + G, t + 2G, ..."""
        t = np.arange(self.threads, dtype=np.int64)  # blockIdx.x * blockDim.x + threadIdx.x
        for start in range(0, int(total), self.threads):
            e = t + start
            yield e[e < total]


class RawModule:
    """``cupy.RawModule(code=..., name_expressions=[...])``: a source and the instantiations to compile."""

    def __init__(self, code: str, name_expressions: Any = None, options: tuple = (), **kwargs: Any) -> None:
        from kernel_transcriptions import check_source

        self.code = code
        self.name_expressions = tuple(name_expressions or ())
        kernels = global_functions(code)
        for expression in self.name_expressions:
            if expression.split("<")[0] not in kernels:
                raise ValueError(f"name expression {expression!r} names no __global__ function of this source")
        check_source(code)  # the transcriptions were written for exactly this code

    def get_function(self, name: str) -> "RawKernel":
        if self.name_expressions and name not in self.name_expressions:
            raise KeyError(f"{name!r} was not among the name expressions {self.name_expressions} of this RawModule")
        return RawKernel(name, kernel_params(self.code, name))


class RawKernel:
    """A compiled kernel: ``kernel(grid, block, args)`` checks the arguments and runs the transcription."""

    def __init__(self, name: str, params: list) -> None:
        from kernel_transcriptions import RAW_KERNELS

        self.name = name
        self.params = params
        base = name.split("<")[0]
        if base not in RAW_KERNELS:
            raise NotImplementedError(f"no NumPy transcription of kernel {base!r}: add one to kernel_transcriptions.py")
        self._run = RAW_KERNELS[base]

    def __call__(self, grid: Any, block: Any, args: Any, *, shared_mem: int = 0, stream: Any = None,
                 enable_cooperative_groups: bool = False) -> None:
        grid3, block3 = _dims(grid, "grid"), _dims(block, "block")
        if np.prod(block3) > MAX_THREADS_PER_BLOCK or any(b > m for b, m in zip(block3, MAX_BLOCK)):
            raise ValueError(f"{self.name}: block {block3} exceeds CUDA's limits (1024 threads, {MAX_BLOCK})")
        if any(g > m for g, m in zip(grid3, MAX_GRID)):
            raise ValueError(f"{self.name}: grid {grid3} exceeds CUDA's limits {MAX_GRID}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments "
                            f"({', '.join(p.name for p in self.params)}), got {len(args)}")
        values = [self._check(p, a) for p, a in zip(self.params, args)]
        FAKE.launches[self.name] += 1
        FAKE.grids[self.name] = grid3
        self._run(Launch(grid3, block3), *values)

    def _check(self, param: Any, arg: Any) -> Any:
        from kernel_sources import C_TYPES

        where = f"{self.name}, parameter {param.c_type}{'*' if param.pointer else ''} {param.name}"
        expected = C_TYPES[param.c_type]
        if param.pointer:
            if not isinstance(arg, ndarray):
                raise TypeError(f"{where}: needs a device array, got {type(arg).__name__}")
            if arg.dtype != np.dtype(expected):
                raise TypeError(f"{where}: needs {np.dtype(expected)} elements, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise ValueError(f"{where}: the kernel indexes a bare pointer, so the array must be C-contiguous")
            return arg._a.reshape(-1)  # a view: the kernel's writes land in the array
        if type(arg) is not expected:
            raise TypeError(f"{where}: CuPy needs exactly {expected.__name__} for a C {param.c_type}, got "
                            f"{type(arg).__name__} {arg!r} (a Python int is passed as 64 bits)")
        return arg


class ElementwiseKernel:
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name)``: one body, run for every element."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel", **kwargs: Any) -> None:
        from kernel_transcriptions import ELEMENTWISE_KERNELS, check_elementwise

        self.spec = {"in_params": in_params, "out_params": out_params, "operation": operation, "name": name}
        self.params = elementwise_params(self.spec)
        if name not in ELEMENTWISE_KERNELS:
            raise NotImplementedError(f"no NumPy transcription of elementwise kernel {name!r}: add one to "
                                      "kernel_transcriptions.py")
        check_elementwise(self.spec)
        self._run = ELEMENTWISE_KERNELS[name]

    def __call__(self, *args: Any, size: int | None = None, block_size: int | None = None) -> Any:
        inputs = [p for p in self.params if not p.output]
        outputs = [p for p in self.params if p.output]
        name = self.spec["name"]
        if len(args) not in (len(inputs), len(self.params)):
            raise TypeError(f"{name}: wrong number of arguments: {len(args)} for {len(inputs)} inputs and "
                            f"{len(outputs)} outputs")
        element = self._element_type(args)
        shape = np.broadcast_shapes(*(a.shape for p, a in zip(self.params, args) if p.c_type == "T" and not p.raw))
        given = dict(zip((p.name for p in self.params), args))
        for p in outputs:
            if p.name not in given:
                given[p.name] = FAKE.empty(shape, dtype=element)
            elif given[p.name].shape != shape:
                raise ValueError(f"{name}: output {p.name} has shape {given[p.name].shape}, the elements {shape}")
        values = {p.name: self._value(p, given[p.name], shape) for p in self.params}
        FAKE.launches[name] += 1
        results = self._run(i=np.arange(int(np.prod(shape)), dtype=np.int64), **values)
        for p in outputs:
            given[p.name]._a[...] = np.asarray(results[p.name]).astype(element).reshape(shape)
        out = [given[p.name] for p in outputs]
        return out[0] if len(out) == 1 else tuple(out)

    def _element_type(self, args: tuple) -> np.dtype:
        """T: the one dtype of every array given for a T parameter (CuPy refuses two)."""
        types_ = {np.dtype(a.dtype) for p, a in zip(self.params, args) if p.c_type == "T"}
        for p, a in zip(self.params, args):
            if p.c_type == "T" and not isinstance(a, ndarray):
                raise TypeError(f"{self.spec['name']}: {p.name} needs a device array, got {type(a).__name__}")
        if len(types_) != 1:
            raise TypeError(f"{self.spec['name']}: the arrays for T have different dtypes {sorted(map(str, types_))}")
        return types_.pop()

    def _value(self, param: Any, arg: Any, shape: tuple) -> Any:
        if param.c_type == "T":
            host = arg._a
            return host.reshape(-1) if param.raw else np.broadcast_to(host, shape).reshape(-1)
        # A scalar parameter: CuPy casts a Python or NumPy number to the declared type.
        if isinstance(arg, (ndarray, np.ndarray)):
            raise TypeError(f"{self.spec['name']}: {param.name} is a {param.c_type} scalar, got an array")
        dtype = np.dtype(param.c_type)
        if dtype.kind in "iu":
            if not float(arg).is_integer() or not np.iinfo(dtype).min <= int(arg) <= np.iinfo(dtype).max:
                raise ValueError(f"{self.spec['name']}: {param.name}={arg!r} does not fit a {param.c_type}")
        return dtype.type(arg)


# ---------------------------------------------------------------------------
# Installing it as minires's CuPy
# ---------------------------------------------------------------------------

FAKE = FakeCuPy()  # one instance: minires.cuda caches kernels per module object


def install(monkeypatch: Any) -> FakeCuPy:
    """Make ``minires.backend`` use the fake as CuPy for this test (restored afterwards by monkeypatch)."""
    from minires import backend

    FAKE.reset()
    monkeypatch.setattr(backend, "_cupy_state", {"checked": True, "module": FAKE, "reason": None, "state": "ok",
                                                 "message": "fake cupy (tests/cuda_host/fake_cupy.py)"})
    return FAKE
