"""minires.debug: the host<->device transfer counter, and a training step that makes none.

The counter counts real cross-device moves in ``backend.to_device`` and every
``Tensor.numpy()`` / ``Tensor.item()`` call on any device (each is a
device-to-host copy on a GPU). That makes the CPU test below meaningful: a
training step on CPU tensors that counted zero calls no ``numpy()``/``item()``
and moves nothing between devices, so it makes no such round trip on a GPU
either. (tests/gpu/test_cuda_model.py repeats it on a real GPU.)

The last tests check that benchmarks/bench_gpu.py fails gracefully (exit 2,
the reason on standard error) where no GPU is usable.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import minires
import minires.debug
from minires import backend, models
from minires.nn import functional as F
from minires.optim import SGD
from minires.tensor import Tensor
from minires.train import TrainConfig, Trainer

# ---------------------------------------------------------------------------
# What is counted
# ---------------------------------------------------------------------------


def test_numpy_item_tolist_and_repr_are_counted_on_the_cpu(rng):
    t = Tensor(rng.standard_normal((2, 3)).astype(np.float32))
    s = Tensor(np.float32(1.5))
    with minires.debug.count_transfers() as c:
        assert c.count == 0
        t.numpy()
        assert c.count == 1
        assert s.item() == 1.5
        assert c.count == 2
        t.tolist()  # goes through numpy()
        repr(t)  # prints through numpy()
        float(s)  # goes through item()
    assert c.count == 5


def test_to_device_onto_the_same_device_is_not_a_transfer(rng):
    a = rng.standard_normal(4)
    with minires.debug.count_transfers() as c:
        assert backend.to_device(a, "cpu") is a
        Tensor(a, device="cpu")
        Tensor(a).to("cpu")
    assert c.count == 0


class _FakeCudaArray:
    """Looks like a CuPy array to minires.backend (its class lives in a module named cupy...)."""

    __module__ = "cupy._fake"

    def __init__(self, host):
        self.host = host
        self.device = SimpleNamespace(id=0)

    def get(self):
        return self.host


def _fake_gpu(monkeypatch):
    class _DeviceScope:
        def __init__(self, index):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    runtime = SimpleNamespace(getDeviceCount=lambda: 1)
    fake = types.SimpleNamespace(
        cuda=SimpleNamespace(runtime=runtime, Device=_DeviceScope),
        asarray=_FakeCudaArray,
        __version__="0.0-fake",
    )
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", fake)
    monkeypatch.setitem(backend._cupy_state, "reason", None)


def test_moves_between_devices_are_counted_both_ways(monkeypatch, rng):
    _fake_gpu(monkeypatch)
    host = rng.standard_normal(3)
    with minires.debug.count_transfers() as c:
        on_gpu = backend.to_device(host, "cuda")
        assert isinstance(on_gpu, _FakeCudaArray) and c.count == 1
        back = backend.to_device(on_gpu, "cpu")
        assert back is host and c.count == 2
        assert backend.to_device(on_gpu, "cuda:0") is on_gpu  # already there: no copy
    assert c.count == 2


def test_count_is_frozen_after_the_region_and_regions_nest(rng):
    t = Tensor(rng.standard_normal(2))
    with minires.debug.count_transfers() as outer:
        t.numpy()
        with minires.debug.count_transfers() as inner:
            t.numpy()
            t.numpy()
        t.numpy()
    t.numpy()  # after both regions: counted by neither
    assert (inner.count, outer.count) == (2, 4)
    assert "finished" in repr(outer)
    assert minires.debug.total_transfers() >= 5


def test_no_transfers_raises_with_the_count_and_the_region_name(rng):
    t = Tensor(rng.standard_normal(1))
    with minires.debug.no_transfers("the quiet part"):
        (t * 2).sum()
    with pytest.raises(RuntimeError, match=r"the training step made 2 host<->device transfer\(s\)"):
        with minires.debug.no_transfers("the training step"):
            t.item()
            t.numpy()
    # An error inside the region propagates as itself, not as a transfer complaint.
    with pytest.raises(ZeroDivisionError):
        with minires.debug.no_transfers():
            t.item()
            1 / 0


# ---------------------------------------------------------------------------
# A training step makes no round trip
# ---------------------------------------------------------------------------


def test_a_resnet20_training_step_on_cpu_makes_no_transfer(rng):
    model = models.create("resnet20", seed=0)
    model.train()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    labels = Tensor(np.array([3, 7]))
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    with minires.debug.count_transfers() as c:
        for _ in range(2):  # the second step also uses the momentum buffers
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert c.count == 0
    # The region did a real step: every parameter moved.
    for name, p in model.named_parameters():
        assert not np.array_equal(p.data, before[name]), name


def test_the_trainer_step_makes_no_transfer_but_evaluation_does(tmp_path, rng):
    def images(n):
        return rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)

    data = SimpleNamespace(train_images=images(8), train_labels=np.arange(8) % 10,
                           test_images=images(4), test_labels=np.arange(4) % 10)
    config = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 4}, epochs=1,
                         batch_size=4, lr=0.05, device="cpu", prefetch=0)
    trainer = Trainer(config, data, tmp_path / "run", verbose=False, progress=False)
    batch_images, batch_labels = next(iter(trainer.train_loader))
    with minires.debug.count_transfers() as c:
        loss, logits = trainer._step(batch_images, batch_labels, epoch=0)
    assert c.count == 0
    assert trainer.global_step == 1 and np.isfinite(loss.data).all()
    # The counter is not blind to the trainer: evaluation reads one loss per batch to the host.
    from minires.train import evaluate

    with minires.debug.count_transfers() as c:
        evaluate(trainer.model, trainer.test_loader)
    assert c.count == len(trainer.test_loader)


# ---------------------------------------------------------------------------
# benchmarks/bench_gpu.py without a GPU (kept here: this is the CPU-side test
# file of the GPU work; tests/gpu/ skips entirely without a device)
# ---------------------------------------------------------------------------

BENCH_GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_under_test", BENCH_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_exits_2_with_the_reason_when_no_gpu_is_usable(monkeypatch, capsys):
    # Simulated even on a GPU machine, so that this never starts the real benchmark.
    monkeypatch.setitem(backend._cupy_state, "checked", True)
    monkeypatch.setitem(backend._cupy_state, "module", None)
    monkeypatch.setitem(backend._cupy_state, "reason", "simulated: libcuda.so.1 not found")
    assert _load_bench().main([]) == 2
    captured = capsys.readouterr()
    assert "no usable GPU, nothing was timed: simulated: libcuda.so.1 not found" in captured.err
    assert captured.out == ""


@pytest.mark.skipif(backend.cupy_available(), reason="a GPU is usable here: the script would run the benchmark")
def test_bench_gpu_script_fails_gracefully_on_this_machine():
    result = subprocess.run([sys.executable, str(BENCH_GPU)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no usable GPU, nothing was timed:" in result.stderr
    assert backend.cupy_unavailable_reason().split("(")[0] in result.stderr
    assert "Traceback" not in result.stderr
