"""What the CUDA code in ``minires/cuda`` declares, read from the sources themselves.

Two kinds of kernel live there (see ``minires/cuda/__init__.py``):

* ``cupy.RawModule`` sources: strings of CUDA C++ with ``__global__``
  template functions, compiled for the instantiations listed in a tuple of
  *name expressions* (``"bn_stats_partial<float>"``);
* ``cupy.ElementwiseKernel`` specs: dicts with ``in_params``, ``out_params``,
  ``operation`` (the loop body for ONE element) and ``name``. CuPy writes the
  rest of the kernel; :func:`expand_elementwise` writes it the same way.

Everything is found by looking at the modules' values, not by a list kept by
hand, so a kernel added to minires/cuda is compiled and checked by the tests
without anyone remembering to add it. The parameter lists are parsed from the
source text so that the CuPy stand-in (``fake_cupy.py``) can check each
launch's arguments against what the kernel really declares.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import numpy as np

import minires.cuda

__all__ = [
    "RawSource",
    "Param",
    "raw_sources",
    "elementwise_specs",
    "kernel_params",
    "elementwise_params",
    "expand_elementwise",
    "STAND_IN_PREAMBLE",
    "C_TYPES",
]

# CUDA C type -> the NumPy scalar type CuPy requires for it in a RawKernel's argument tuple.
C_TYPES = {
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
    "float": np.float32,
    "double": np.float64,
    "bool": np.bool_,
}

# ElementwiseKernel type names (NumPy's) -> C types, as CuPy spells them in the code it writes.
_ELEMENTWISE_C_TYPES = {"int32": "int", "int64": "long long", "float32": "float", "float64": "double",
                        "bool": "bool", "uint32": "unsigned int"}


@dataclass(frozen=True)
class RawSource:
    """One RawModule source: where it is defined, its text, and the instantiations it is built for."""

    module: str
    attribute: str
    code: str
    name_expressions: tuple[str, ...]


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its C type (``"const float*"`` becomes type "float", pointer True) and name."""

    name: str
    c_type: str
    pointer: bool
    raw: bool = False  # ElementwiseKernel only: "raw T x" is indexed by hand, not per element
    output: bool = False  # ElementwiseKernel only: declared in out_params


def _cuda_modules() -> list:
    """minires.cuda and each of its submodules (importing them registers the kernels, too)."""
    modules = [minires.cuda]
    for info in pkgutil.iter_modules(minires.cuda.__path__):
        modules.append(importlib.import_module(f"minires.cuda.{info.name}"))
    return modules


_NAME_EXPRESSION = re.compile(r"^\w+<[\w\s,]+>$")


def raw_sources() -> list[RawSource]:
    """Every RawModule source in minires/cuda with the name expressions that instantiate its templates.

    A source is a module-level string defining a ``__global__`` function; its name
    expressions are the module's tuples of strings like ``"kernel<float>"``
    whose kernel names occur in that source.
    """
    found = []
    for module in _cuda_modules():
        values = vars(module)
        tuples = [v for v in values.values()
                  if isinstance(v, tuple) and v and all(isinstance(s, str) and _NAME_EXPRESSION.match(s) for s in v)]
        for attribute, value in values.items():
            # Docstrings mention __global__ too: a source is code that defines a kernel.
            if attribute.startswith("__") or not isinstance(value, str):
                continue
            kernels = set(global_functions(value))
            if not kernels:
                continue
            names = tuple(s for t in tuples for s in t if s.split("<")[0] in kernels)
            found.append(RawSource(module.__name__, attribute, value, names))
    return found


def elementwise_specs() -> list[tuple[str, dict]]:
    """Every ElementwiseKernel spec in minires/cuda: ``(module.attribute, spec dict)``."""
    keys = {"in_params", "out_params", "operation", "name"}
    found = []
    for module in _cuda_modules():
        for attribute, value in vars(module).items():
            if isinstance(value, dict) and set(value) == keys:
                found.append((f"{module.__name__}.{attribute}", value))
    return found


# -- RawModule kernels --------------------------------------------------------

_GLOBAL = re.compile(r"(?:template\s*<(?P<template>[^>]*)>\s*)?__global__\s+void\s+(?P<name>\w+)\s*\((?P<params>[^)]*)\)")


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", code)


def global_functions(code: str) -> dict[str, tuple[list[str], list[str]]]:
    """``{kernel name: (template parameter names, parameter declarations)}`` of a CUDA source."""
    out = {}
    for match in _GLOBAL.finditer(_strip_comments(code)):
        template = [t.split()[-1] for t in (match["template"] or "").split(",") if t.strip()]
        params = [p.strip() for p in match["params"].split(",") if p.strip()]
        out[match["name"]] = (template, params)
    return out


def _split_expression(expression: str) -> tuple[str, list[str]]:
    """``"kernel<float, long long>"`` -> ``("kernel", ["float", "long long"])``."""
    name, _, rest = expression.partition("<")
    return name, [a.strip() for a in rest.rstrip(">").split(",")] if rest else []


def _parse_declaration(declaration: str, substitutions: dict[str, str]) -> Param:
    """``"const T* __restrict__ x"`` with T=float -> Param("x", "float", pointer=True)."""
    pointer = "*" in declaration
    words = declaration.replace("*", " ").split()
    name = words[-1]
    type_words = [w for w in words[:-1] if w not in ("const", "__restrict__", "volatile")]
    c_type = " ".join(substitutions.get(w, w) for w in type_words)
    return Param(name, c_type, pointer)


def kernel_params(code: str, expression: str) -> list[Param]:
    """The parameters of the instantiation ``expression`` (``"im2col_gather<float, int>"``) of ``code``."""
    name, args = _split_expression(expression)
    template, declarations = global_functions(code)[name]
    if len(args) != len(template):
        raise ValueError(f"{expression}: {name} has template parameters {template}")
    substitutions = dict(zip(template, args))
    # "long long" arrives as two words; substitute whole template names only.
    return [_parse_declaration(d, substitutions) for d in declarations]


# -- ElementwiseKernels -------------------------------------------------------


def _parse_elementwise(text: str, output: bool) -> list[Param]:
    params = []
    for declaration in (d.strip() for d in text.split(",") if d.strip()):
        words = declaration.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        type_name, name = words
        params.append(Param(name, type_name, pointer=False, raw=raw, output=output))
    return params


def elementwise_params(spec: dict) -> list[Param]:
    """The in_params then out_params of an ElementwiseKernel spec (type names as written: "T", "int32")."""
    return _parse_elementwise(spec["in_params"], False) + _parse_elementwise(spec["out_params"], True)


# The parts of CuPy's <cupy/carray.cuh> that a generated elementwise kernel
# touches, with the same names and template parameters, so the expansion can
# be compiled without CuPy installed. CArray<T, ndim, c_contiguous,
# use_32bit_indexing> is an array argument; operator[] with one index reads
# element i of a contiguous array. CIndexer walks the elements; CUPY_FOR is
# CuPy's grid-stride loop, with a 64-bit index (ptrdiff_t, built into NVRTC).
STAND_IN_PREAMBLE = r"""
template <typename T, int ndim, bool c_contiguous = false, bool use_32bit_indexing = false>
class CArray {
 public:
  T* data_;
  ptrdiff_t size_;
  ptrdiff_t shape_[ndim];
  ptrdiff_t strides_[ndim];
  __device__ T& operator[](ptrdiff_t i) const { return data_[i]; }
};

template <int ndim, bool use_32bit_indexing = false>
class CIndexer {
 public:
  ptrdiff_t size_;
  ptrdiff_t index_;
  __device__ ptrdiff_t size() const { return size_; }
  __device__ void set(ptrdiff_t i) { index_ = i; }
  __device__ ptrdiff_t get() const { return index_; }
};

#define CUPY_FOR(i, n) \
    for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x)
"""

# What CuPy puts in front of an ElementwiseKernel's code (compile_with_cache, prepend_cupy_headers).
CUPY_HEADERS = "".join(f"#include <{h}>\n" for h in (
    "cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h"))


def expand_elementwise(spec: dict, element_type: str, preamble: str = STAND_IN_PREAMBLE) -> str:
    """The whole CUDA kernel CuPy generates for ``spec`` with ``T`` = ``element_type`` ("float"/"double").

    As CuPy does for contiguous arrays (after it merges their dimensions into
    one): every array argument is a 1-D ``CArray``, a per-element argument
    ``x`` arrives as ``_raw_x`` and the body sees a reference to element i
    (const for inputs), ``raw`` arrays are passed as they are, scalars by
    value in their C type, and a ``CIndexer _ind`` closes the list.
    """
    params = elementwise_params(spec)
    declarations, bindings = [], []
    for p in params:
        c_type = element_type if p.c_type == "T" else _ELEMENTWISE_C_TYPES[p.c_type]
        const = "" if p.output else "const "
        if p.c_type != "T":  # a scalar
            declarations.append(f"{const}{c_type} {p.name}")
        elif p.raw:
            declarations.append(f"{const}CArray<{c_type}, 1, 1, 1> {p.name}")
        else:
            declarations.append(f"{const}CArray<{c_type}, 1, 1, 1> _raw_{p.name}")
            bindings.append(f"{const}T &{p.name} = _raw_{p.name}[_ind.get()];")
    declarations.append("CIndexer<1, 1> _ind")
    body = "\n        ".join(bindings)
    return f"""{preamble}
typedef {element_type} T;

extern "C" __global__ void {spec["name"]}({", ".join(declarations)}) {{
    #pragma unroll 1
    CUPY_FOR(i, _ind.size()) {{
        _ind.set(i);
        {body}
        {spec["operation"]};
    }}
}}
"""
