"""Every CUDA source in minires/cuda compiles, as CuPy would compile it, for sm_80 and sm_90: no GPU needed.

CuPy compiles a kernel the first time it is launched, so a typo in a CUDA
string would otherwise only show on a machine with a GPU, in the middle of a
training step. NVRTC (CUDA's run-time compiler, the one CuPy uses) needs no
GPU, so these tests call it directly (``nvrtc_ctypes.py``) with the options
CuPy passes:

* RawModule sources: the source as it is, every template instantiation of
  its name expressions (``nvrtcAddNameExpression``, as
  ``RawModule(name_expressions=...)``), ``-arch=sm_XX`` (CuPy asks for
  machine code of the device's architecture), ``-ftz=true``,
  ``--device-as-default-execution-space``, and the C++ standard CuPy adds
  by default: C++11 for CuPy 13, C++17 for CuPy 14. Both are compiled.
* ElementwiseKernel specs: CuPy writes the kernel around the loop body; the
  body is expanded the same way (``kernel_sources.expand_elementwise``) for
  T = float and T = double, once with a stand-in for CuPy's array header
  and, when CuPy is installed, once with CuPy's own headers.

sm_80 is the A100, sm_90 the H100/H200. The tests skip, saying what to
install, when no libnvrtc is found (``pip install nvidia-cuda-nvrtc-cu12``);
with ``MINIRES_REQUIRE_GPU=1`` that is a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import nvrtc_ctypes
import pytest
from kernel_sources import (
    CUPY_HEADERS,
    elementwise_specs,
    expand_elementwise,
    global_functions,
    raw_sources,
)

ARCHITECTURES = ("sm_80", "sm_90")
# The C++ standard CuPy adds when the caller names none (cupy/_core/core.pyx, assemble_cupy_compiler_options).
STANDARDS = {"cupy13": "--std=c++11", "cupy14": "--std=c++17"}
ELEMENT_TYPES = ("float", "double")


def cupy_options(arch: str, standard: str) -> list[str]:
    """What CuPy passes to NVRTC for a kernel without includes (cupy/cuda/compiler.py)."""
    return [standard, "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space"]


@pytest.fixture(scope="module")
def nvrtc():
    """libnvrtc, or a skip (a failure under MINIRES_REQUIRE_GPU=1) saying how to get one."""
    try:
        lib = nvrtc_ctypes.load()
        major_minor = nvrtc_ctypes.version(lib)
    except OSError as exc:
        message = f"cannot compile CUDA here: {exc}"
        if os.environ.get("MINIRES_REQUIRE_GPU", "").strip() not in ("", "0"):
            pytest.fail(f"MINIRES_REQUIRE_GPU=1: {message}")
        pytest.skip(message)
    return lib, major_minor


def _require_arch(nvrtc, arch: str) -> None:
    lib, (major, minor) = nvrtc
    if int(arch[3:]) not in nvrtc_ctypes.supported_architectures(lib):
        pytest.skip(f"NVRTC {major}.{minor} cannot compile for {arch}")


def _is_cubin(blob: bytes) -> bool:
    return blob[:4] == b"\x7fELF"  # a cubin is an ELF file of GPU machine code


# -- what is compiled: found in the modules, not listed by hand ----------------

RAW = raw_sources()
ELEMENTWISE = elementwise_specs()


def test_every_cuda_source_of_the_package_is_found():
    assert {(s.module, s.attribute) for s in RAW} >= {("minires.cuda.im2col", "IM2COL_SOURCE"),
                                                      ("minires.cuda.batch_norm", "BATCH_NORM_SOURCE")}
    names = {spec["name"] for _, spec in ELEMENTWISE}
    assert names >= {"minires_relu_forward", "minires_relu_backward", "minires_bn_normalize",
                     "minires_bn_backward_dx", "minires_bn_update_running"}
    # Every source file that builds a kernel contributed one to the lists above.
    package = Path(__file__).resolve().parents[2] / "minires" / "cuda"
    for path in package.glob("*.py"):
        text = path.read_text()
        module = f"minires.cuda.{path.stem}"
        if "kernel_function(" in text and path.stem != "__init__":
            assert any(s.module == module for s in RAW), f"{path}: launches a RawModule kernel not found"
        if "ElementwiseKernel(" in text and path.stem != "__init__":
            assert any(where.startswith(module + ".") for where, _ in ELEMENTWISE), f"{path}: spec not found"


@pytest.mark.parametrize("source", RAW, ids=lambda s: f"{s.module}.{s.attribute}")
def test_every_template_kernel_is_instantiated_for_float_and_double(source):
    for kernel, (template, _) in global_functions(source.code).items():
        if not template:
            continue
        instantiated = [e for e in source.name_expressions if e.startswith(kernel + "<")]
        for element_type in ELEMENT_TYPES:
            assert any(f"<{element_type}" in e for e in instantiated), f"{kernel}<{element_type}, ...> is missing"


# -- compiling -----------------------------------------------------------------


@pytest.mark.parametrize("standard", sorted(STANDARDS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("source", RAW, ids=lambda s: f"{s.module}.{s.attribute}")
def test_raw_module_compiles_with_every_instantiation(nvrtc, source, arch, standard):
    _require_arch(nvrtc, arch)
    compiled = nvrtc_ctypes.compile_source(source.code, cupy_options(arch, STANDARDS[standard]),
                                           list(source.name_expressions), filename=f"{source.attribute}.cu")
    assert _is_cubin(compiled.cubin)
    # Each instantiation has a symbol in the binary: what RawModule.get_function looks up.
    assert set(compiled.lowered_names) == set(source.name_expressions)
    for expression, symbol in compiled.lowered_names.items():
        assert symbol.encode() in compiled.cubin, expression
    assert "warning" not in compiled.log.lower(), compiled.log


@pytest.mark.parametrize("standard", sorted(STANDARDS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("element_type", ELEMENT_TYPES)
@pytest.mark.parametrize("where, spec", ELEMENTWISE, ids=[where for where, _ in ELEMENTWISE])
def test_elementwise_kernel_compiles(nvrtc, where, spec, element_type, arch, standard):
    _require_arch(nvrtc, arch)
    code = expand_elementwise(spec, element_type)
    compiled = nvrtc_ctypes.compile_source(code, cupy_options(arch, STANDARDS[standard]), filename=f"{spec['name']}.cu")
    assert _is_cubin(compiled.cubin) and spec["name"].encode() in compiled.cubin
    assert "warning" not in compiled.log.lower(), compiled.log


def _cuda_header_folders() -> list[Path]:
    """Folders that may hold the CUDA headers CuPy's own headers include (cuda_fp16.h, ...)."""
    folders = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory  # comes with CuPy 14

        found = find_nvidia_header_directory("cudart")
        folders += [Path(found)] if found else []
    except Exception:  # not installed, or it found nothing
        pass
    try:
        import nvidia

        for root in nvidia.__path__:  # nvidia-cuda-runtime-cu12 / nvidia-cuda-runtime (CUDA 13) wheels
            folders += [Path(root) / "cuda_runtime" / "include", Path(root) / "cu13" / "include"]
    except ImportError:
        pass
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            folders.append(Path(os.environ[variable]) / "include")
    return [f for f in folders if (f / "cuda_fp16.h").is_file()]


def _cupy_include_options(nvrtc) -> tuple[str, list[str]]:
    """(CuPy's version, its include options as CuPy passes them), or a skip without CuPy."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install
        pytest.skip(f"CuPy is not importable ({type(exc).__name__}: {exc}): only the stand-in header is checked")
    include = Path(cupy.__file__).parent / "_core" / "include"
    options = [f"-I{include}/cupy/_cccl/{part}" for part in ("cub", "thrust", "libcudacxx")] + [f"-I{include}"]
    headers = _cuda_header_folders()
    if headers:
        options.append(f"-I{headers[0]}")
    elif cupy.__version__.startswith("13."):
        _, (major, _) = nvrtc
        pytest.skip(f"CuPy 13's headers include the CUDA headers (cuda_fp16.h), not found: install them with "
                    f"`pip install nvidia-cuda-runtime-cu{major}` or set CUDA_PATH")
    return cupy.__version__, options


@pytest.mark.parametrize("element_type", ELEMENT_TYPES)
@pytest.mark.parametrize("where, spec", ELEMENTWISE, ids=[where for where, _ in ELEMENTWISE])
def test_elementwise_kernel_compiles_with_cupys_own_headers(nvrtc, where, spec, element_type):
    cupy_version, includes = _cupy_include_options(nvrtc)
    standard = STANDARDS["cupy13"] if cupy_version.startswith("13.") else STANDARDS["cupy14"]
    code = expand_elementwise(spec, element_type, preamble=CUPY_HEADERS)
    for arch in ARCHITECTURES:
        _require_arch(nvrtc, arch)
        compiled = nvrtc_ctypes.compile_source(code, includes + cupy_options(arch, standard),
                                               filename=f"{spec['name']}.cu")
        assert _is_cubin(compiled.cubin)


# -- the harness itself catches mistakes ------------------------------------------


def test_a_broken_elementwise_body_does_not_compile(nvrtc):
    spec = {"in_params": "T x", "out_params": "T y", "operation": "y = x + undeclared_name", "name": "broken"}
    with pytest.raises(nvrtc_ctypes.NVRTCError, match="undeclared_name"):
        nvrtc_ctypes.compile_source(expand_elementwise(spec, "float"), cupy_options("sm_80", "--std=c++17"))


def test_writing_to_an_input_of_an_elementwise_kernel_does_not_compile(nvrtc):
    # CuPy binds inputs as const references: the expansion must too, or such a bug would pass here.
    spec = {"in_params": "T x", "out_params": "T y", "operation": "x = y", "name": "writes_input"}
    with pytest.raises(nvrtc_ctypes.NVRTCError):
        nvrtc_ctypes.compile_source(expand_elementwise(spec, "float"), cupy_options("sm_80", "--std=c++17"))


def test_a_name_expression_without_a_kernel_is_an_error(nvrtc):
    source = RAW[0]
    with pytest.raises(nvrtc_ctypes.NVRTCError):
        nvrtc_ctypes.compile_source(source.code, cupy_options("sm_80", "--std=c++17"), ["no_such_kernel<float>"])
