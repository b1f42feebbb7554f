"""The array backend: device parsing, MINIRES_DEVICE, the CuPy probe, array helpers.

The real CuPy probe result depends on the machine. Tests that need a
particular answer *simulate* it by patching the cached probe state
(``backend._cupy_state``) with ``monkeypatch``, so they run the same on a
laptop and on a GPU box; the few tests about this machine's real answer say
which case they cover and skip (with a reason) on the other.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from minires import backend
from minires.backend import Device, DeviceError, cpu, default_device, device, device_of, get_array_module, to_device


def _simulate_no_cupy(monkeypatch, reason="simulated: CuPy is not installed"):
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", None)
    monkeypatch.setitem(backend._cupy_state, "reason", reason)


def _simulate_gpus(monkeypatch, count):
    """Pretend CuPy works with ``count`` devices (only the device-count query is faked)."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: count)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime), __version__="0.0-fake")
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", fake)
    monkeypatch.setitem(backend._cupy_state, "reason", None)


# ---------------------------------------------------------------------------
# Parsing device specs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", cpu, Device("cpu"), Device("cpu", 0)])
def test_cpu_specs(spec):
    assert device(spec) == cpu
    assert device(spec).type == "cpu"


@pytest.mark.parametrize("spec, index", [("cuda", 0), ("cuda:0", 0), ("CUDA:1", 1), (Device("cuda", 1), 1)])
def test_cuda_specs_parse_when_gpus_exist(monkeypatch, spec, index):
    _simulate_gpus(monkeypatch, 2)
    dev = device(spec)
    assert dev == Device("cuda", index) and str(dev) == f"cuda:{index}"


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "tpu", "", "cpu:0:1", "cuda:1.5"])
def test_bad_device_strings_name_the_value(spec):
    with pytest.raises(ValueError, match=f"unknown device {spec!r}"):
        device(spec)


@pytest.mark.parametrize("spec", [0, 1.5, ["cpu"]])
def test_device_of_wrong_type(spec):
    with pytest.raises(TypeError, match="string or Device"):
        device(spec)


def test_device_constructor_validation():
    with pytest.raises(ValueError, match="'tpu'"):
        Device("tpu")
    with pytest.raises(ValueError, match="no index"):
        Device("cpu", 1)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        Device("cuda", -1)


def test_device_str_repr_and_equality():
    assert str(cpu) == "cpu" and repr(cpu) == "device('cpu')"
    assert str(Device("cuda")) == "cuda:0" and repr(Device("cuda", 2)) == "device('cuda:2')"
    assert Device("cuda", 1) == Device("cuda", 1) != Device("cuda", 0)
    # One spelling per device: equality and hashing do not depend on how it was written.
    assert Device("cuda") == Device("cuda", 0) and hash(Device("cuda")) == hash(Device("cuda", 0))
    assert Device("cpu", 0) == cpu and hash(Device("cpu", 0)) == hash(cpu)


# ---------------------------------------------------------------------------
# CUDA requested without a usable GPU
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", Device("cuda", 0)])
def test_cuda_without_gpu_raises_device_error_with_reason(monkeypatch, spec):
    _simulate_no_cupy(monkeypatch, reason="simulated: libcuda.so not found")
    with pytest.raises(DeviceError, match="CUDA is not usable: simulated: libcuda.so not found"):
        device(spec)


def test_cuda_index_beyond_device_count(monkeypatch):
    _simulate_gpus(monkeypatch, 1)
    assert device("cuda:0") == Device("cuda", 0)
    with pytest.raises(DeviceError, match=r"cuda:2 was requested but this machine has 1 CUDA device"):
        device("cuda:2")


def test_device_enabled_and_xp(monkeypatch):
    _simulate_no_cupy(monkeypatch)
    assert cpu.enabled() and cpu.xp is np
    assert not Device("cuda", 0).enabled()
    with pytest.raises(DeviceError, match="simulated"):
        Device("cuda", 0).xp
    _simulate_gpus(monkeypatch, 2)
    assert Device("cuda", 1).enabled() and not Device("cuda", 2).enabled()


def test_device_error_is_a_runtime_error():
    assert issubclass(DeviceError, RuntimeError)


# ---------------------------------------------------------------------------
# MINIRES_DEVICE
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_env_cpu(monkeypatch, value):
    monkeypatch.setenv("MINIRES_DEVICE", value)
    assert default_device() == cpu


@pytest.mark.parametrize("value", [None, "auto", "AUTO", ""])
def test_env_auto_without_gpu_is_cpu(monkeypatch, value):
    _simulate_no_cupy(monkeypatch)
    if value is None:
        monkeypatch.delenv("MINIRES_DEVICE", raising=False)
    else:
        monkeypatch.setenv("MINIRES_DEVICE", value)
    assert default_device() == cpu
    assert device("auto") == cpu and device(None) == cpu


def test_env_auto_with_gpu_is_cuda0(monkeypatch):
    _simulate_gpus(monkeypatch, 1)
    monkeypatch.setenv("MINIRES_DEVICE", "auto")
    assert default_device() == Device("cuda", 0)


def test_env_cuda_without_gpu_raises_with_reason(monkeypatch):
    _simulate_no_cupy(monkeypatch, reason="simulated: no NVIDIA driver")
    monkeypatch.setenv("MINIRES_DEVICE", "cuda")
    with pytest.raises(DeviceError, match="simulated: no NVIDIA driver"):
        default_device()


def test_env_cuda_index_with_gpus(monkeypatch):
    _simulate_gpus(monkeypatch, 2)
    monkeypatch.setenv("MINIRES_DEVICE", "cuda:1")
    assert default_device() == Device("cuda", 1)


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "metal"])
def test_env_invalid_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("MINIRES_DEVICE", value)
    with pytest.raises(ValueError, match=f"MINIRES_DEVICE={value!r} is invalid"):
        default_device()


# ---------------------------------------------------------------------------
# This machine's real probe
# ---------------------------------------------------------------------------


def test_probe_is_consistent():
    """Available exactly when there is no reason; the answer is cached (stable)."""
    available = backend.cupy_available()
    reason = backend.cupy_unavailable_reason()
    assert available == (reason is None)
    assert backend.cupy_available() == available and backend.cupy_unavailable_reason() == reason


def test_this_machine_without_gpu_explains_why(monkeypatch):
    if backend.cupy_available():
        pytest.skip("this machine has a usable CuPy/CUDA device: the no-GPU explanation does not apply")
    reason = backend.cupy_unavailable_reason()
    assert isinstance(reason, str) and len(reason) > 20
    assert "CuPy" in reason
    monkeypatch.setenv("MINIRES_DEVICE", "cuda")
    with pytest.raises(DeviceError) as info:
        default_device()
    assert reason in str(info.value)
    monkeypatch.setenv("MINIRES_DEVICE", "auto")
    assert default_device() == cpu


def test_this_machine_with_gpu_defaults_to_cuda(monkeypatch):
    if not backend.cupy_available():
        pytest.skip(f"no usable GPU here ({backend.cupy_unavailable_reason()})")
    monkeypatch.setenv("MINIRES_DEVICE", "auto")
    assert default_device() == Device("cuda", 0)
    x = to_device(np.arange(3.0), "cuda")
    assert device_of(x) == Device("cuda", 0)
    assert get_array_module(x) is not np
    back = to_device(x, "cpu")
    assert isinstance(back, np.ndarray) and back.tolist() == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------------------
# The probe's four answers, each simulated by a fake ``cupy`` in sys.modules
# ---------------------------------------------------------------------------


def _fresh_probe(monkeypatch, cupy_module):
    """Install ``cupy_module`` as ``import cupy`` (None: not installed) and forget the last probe."""
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)
    monkeypatch.setattr(backend, "_cupy_state", {"checked": False, "module": None, "reason": None, "state": None,
                                                 "message": None})


def _fake_cupy(devices=1, device_error=None, compile_error=None, cuda=12080, result=1.0):
    """A module that answers the probe like CuPy would on a machine of the given kind.

    ``device_error`` is raised by the device count (no driver), ``compile_error``
    by the first call of an ElementwiseKernel (no NVRTC); ``result`` is what the
    probe kernel "computes" for each element.
    """
    module = types.ModuleType("cupy")
    module.__version__ = "14.2.0"

    def get_device_count():
        if device_error is not None:
            raise device_error
        return devices

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, operation, name):
            self.operation = operation

        def __call__(self, x):
            if compile_error is not None:
                raise compile_error
            return types.SimpleNamespace(get=lambda: np.full(x.shape, result, dtype=x.dtype))

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count, runtimeGetVersion=lambda: cuda)
    module.cuda = types.SimpleNamespace(runtime=runtime)
    module.zeros = np.zeros
    module.ElementwiseKernel = ElementwiseKernel
    return module


def test_status_missing_when_cupy_does_not_import(monkeypatch):
    _fresh_probe(monkeypatch, None)  # None in sys.modules makes `import cupy` raise ImportError
    state, message = backend.cuda_status()
    assert state == "missing"
    assert "not installed" in message and "gpu-cuda12" in message and "gpu-cuda13" in message
    assert not backend.cupy_available() and backend.cupy_unavailable_reason() == message


@pytest.mark.parametrize("fake", [
    _fake_cupy(device_error=RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")),
    _fake_cupy(devices=0),
], ids=["old-driver", "zero-devices"])
def test_status_no_device(monkeypatch, fake):
    _fresh_probe(monkeypatch, fake)
    state, message = backend.cuda_status()
    assert state == "no-device"
    assert "CuPy 14.2.0 is installed but no CUDA device is usable" in message
    assert not backend.cupy_available()


@pytest.mark.parametrize("cuda, package", [(12080, "nvidia-cuda-nvrtc-cu12"), (13000, "nvidia-cuda-nvrtc==13.*")])
def test_status_compile_failed_names_what_to_install(monkeypatch, cuda, package):
    error = OSError("libnvrtc.so.12: cannot open shared object file: No such file or directory")
    _fresh_probe(monkeypatch, _fake_cupy(compile_error=error, cuda=cuda))
    state, message = backend.cuda_status()
    assert state == "compile-failed"
    assert "OSError: libnvrtc.so.12: cannot open shared object file" in message  # the exception's text
    assert package in message and "NVRTC" in message
    assert not backend.cupy_available()
    with pytest.raises(DeviceError, match="cannot compile"):
        device("cuda")


def test_status_compile_failed_when_the_kernel_computes_garbage(monkeypatch):
    _fresh_probe(monkeypatch, _fake_cupy(result=0.0))
    state, message = backend.cuda_status()
    assert state == "compile-failed" and "x + 1" in message


def test_a_long_compiler_log_is_cut_to_its_first_lines(monkeypatch):
    log = "\n".join(f"kern.cu({i}): error: something" for i in range(50))
    _fresh_probe(monkeypatch, _fake_cupy(compile_error=RuntimeError(log)))
    _, message = backend.cuda_status()
    assert "kern.cu(0)" in message and "kern.cu(2)" in message and "kern.cu(3)" not in message


def test_status_ok(monkeypatch):
    fake = _fake_cupy(devices=2)
    _fresh_probe(monkeypatch, fake)
    state, message = backend.cuda_status()
    assert state == "ok" and message == "CuPy 14.2.0, CUDA 12, 2 device(s): kernels compile and run"
    assert backend.cupy_available() and backend.cupy_unavailable_reason() is None
    assert device("cuda:1") == Device("cuda", 1)


def test_status_ok_warns_about_an_untested_cupy_major(monkeypatch):
    fake = _fake_cupy()
    fake.__version__ = "15.0.0"
    _fresh_probe(monkeypatch, fake)
    assert "untested CuPy version" in backend.cuda_status()[1]


def test_status_is_probed_once(monkeypatch):
    calls = []
    fake = _fake_cupy()
    count = fake.cuda.runtime.getDeviceCount
    fake.cuda.runtime.getDeviceCount = lambda: calls.append(1) or count()
    _fresh_probe(monkeypatch, fake)
    backend.cuda_status()
    first = len(calls)
    backend.cuda_status()
    backend.cupy_available()
    assert len(calls) == first


def test_status_of_a_simulated_machine_without_cupy(monkeypatch):
    # The older simulation (patching only module and reason) still reads as "missing".
    _simulate_no_cupy(monkeypatch)
    monkeypatch.setitem(backend._cupy_state, "state", "ok")
    assert backend.cuda_status() == ("missing", "simulated: CuPy is not installed")


# ---------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------


def test_get_array_module_on_numpy():
    a = np.ones(3)
    assert get_array_module(a) is np
    assert get_array_module(a, np.zeros((2, 2), dtype=np.int32)) is np
    assert get_array_module(a, None, 3.0) is np
    assert get_array_module() is np
    assert get_array_module(np.float32(1.0)) is np


def test_device_of_numpy_is_cpu():
    assert device_of(np.ones(2)) == cpu
    assert device_of(np.float64(1.0)) == cpu


@pytest.mark.parametrize("target", ["cpu", cpu, "CPU"])
def test_to_device_cpu_to_cpu_is_identity(target):
    a = np.arange(6.0).reshape(2, 3)
    assert to_device(a, target) is a


def test_to_device_cuda_without_gpu(monkeypatch):
    _simulate_no_cupy(monkeypatch, reason="simulated: no GPU")
    with pytest.raises(DeviceError, match="simulated: no GPU"):
        to_device(np.ones(2), "cuda")


def test_minires_never_imports_torch():
    """House rule: torch is for tests and benchmarks only, never imported by the package."""
    import pathlib
    import re

    import minires

    pattern = re.compile(r"^\s*(import torch|from torch\b)", re.MULTILINE)
    root = pathlib.Path(minires.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
