"""Whole models on the GPU: ResNet-20 equals the CPU in float64, and a training step stays on the device.

* A full ResNet-20 forward and backward (training mode, so batch norm
  updates its running statistics on the device) on the GPU equals the same
  computation on the CPU in float64: logits, loss, every parameter gradient
  and every running statistic. An evaluation-mode forward afterwards checks
  the running statistics in use. Under each kernel set (:mod:`minires.dispatch`):
  ``fast`` runs the CUDA kernels of :mod:`minires.cuda` on the GPU (and
  :mod:`minires.fast` on the CPU), ``reference`` the array code of
  :mod:`minires.kernels` on both.
* A training step (forward, loss, backward, SGD with momentum) on CUDA
  tensors makes zero host<->device transfers once the batch is on the device,
  counted by :mod:`minires.debug` (tests/test_debug_transfers.py checks the
  same on the CPU), under the fast set (the CUDA kernels).
* The trainer runs an epoch end to end on ``device="cuda"``.

The whole module skips, with the reason, where no CUDA device is usable.
"""

from __future__ import annotations

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

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not backend.cupy_available(),
        reason=f"no usable CUDA device for the GPU model tests: {backend.cupy_unavailable_reason()}",
    ),
]


def _resnet20_pair(dtype):
    """Two ResNet-20s with identical parameters, one on the CPU, one on the GPU."""
    cpu_model = models.create("resnet20", seed=0).to(dtype=dtype)
    gpu_model = models.create("resnet20", seed=0).to(device="cuda", dtype=dtype)
    for (name, p), (_, q) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
        assert np.array_equal(p.data, backend.to_device(q.data, "cpu")), name
    return cpu_model, gpu_model


@pytest.fixture
def fast_kernels():
    """The fast kernel set (the CUDA kernels on the GPU) for the test, whatever MINIRES_KERNELS says."""
    with minires.use_kernels("fast"):
        yield


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_resnet20_forward_backward_on_gpu_equals_cpu_in_float64(rng, kernels):
    with minires.use_kernels(kernels):
        _check_resnet20_gpu_equals_cpu(rng)


def _check_resnet20_gpu_equals_cpu(rng):
    cpu_model, gpu_model = _resnet20_pair(np.float64)
    images = rng.standard_normal((8, 3, 32, 32))
    labels = rng.integers(0, 10, size=8)
    results = {}
    for name, model, device in (("cpu", cpu_model, "cpu"), ("gpu", gpu_model, "cuda")):
        model.train()
        logits = model(Tensor(images, device=device))
        loss = F.cross_entropy(logits, Tensor(labels, device=device))
        loss.backward()
        results[name] = (backend.to_device(logits.data, "cpu"), float(loss.item()))

    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], rtol=1e-9, atol=1e-10)
    assert results["gpu"][1] == pytest.approx(results["cpu"][1], rel=1e-10)
    cpu_grads = dict(cpu_model.named_parameters())
    for name, q in gpu_model.named_parameters():
        p = cpu_grads[name]
        scale = max(1e-12, float(np.abs(p.grad).max()))
        np.testing.assert_allclose(backend.to_device(q.grad, "cpu"), p.grad, rtol=0, atol=1e-8 * scale,
                                   err_msg=f"gradient of {name}")
    cpu_state, gpu_state = cpu_model.state_dict(), gpu_model.state_dict()
    for key in cpu_state:
        if "running" in key or "num_batches" in key:
            np.testing.assert_allclose(gpu_state[key], cpu_state[key], rtol=1e-10, atol=1e-12, err_msg=key)

    # Evaluation mode normalises with those running statistics.
    cpu_model.eval()
    gpu_model.eval()
    eval_cpu = cpu_model(Tensor(images)).data
    eval_gpu = backend.to_device(gpu_model(Tensor(images, device="cuda")).data, "cpu")
    np.testing.assert_allclose(eval_gpu, eval_cpu, rtol=1e-9, atol=1e-10)


def test_a_training_step_on_cuda_makes_no_transfer_after_the_batch_is_on_the_device(rng, fast_kernels):
    model = models.create("resnet20", seed=0).to(device="cuda")
    model.train()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = Tensor(rng.standard_normal((16, 3, 32, 32)).astype(np.float32), device="cuda")
    labels = Tensor(rng.integers(0, 10, size=16), device="cuda")
    before = {name: backend.to_device(p.data, "cpu") for name, p in model.named_parameters()}
    with minires.debug.count_transfers() as c:
        for _ in range(2):  # the second step also updates the momentum buffers
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert c.count == 0, f"{c.count} host<->device transfers in two training steps"
    for name, p in model.named_parameters():
        assert p.device.type == "cuda", name
        assert not np.array_equal(backend.to_device(p.data, "cpu"), before[name]), f"{name} did not change"
    assert np.isfinite(loss.item())


def test_the_trainer_runs_an_epoch_on_cuda(tmp_path, rng, fast_kernels):
    def images(n):
        return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)

    data = SimpleNamespace(train_images=images(64), train_labels=np.arange(64) % 10,
                           test_images=images(32), test_labels=np.arange(32) % 10)
    config = TrainConfig(model="resnet20", epochs=1, batch_size=16, lr=0.05, device="cuda")
    trainer = Trainer(config, data, tmp_path / "run", verbose=False, progress=False)
    rows = trainer.fit()
    assert len(rows) == 1 and rows[0]["step"] == 4
    assert np.isfinite(rows[0]["train_loss"]) and 0.0 <= rows[0]["test_acc"] <= 1.0
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    assert trainer.checkpoint_path.is_file()
