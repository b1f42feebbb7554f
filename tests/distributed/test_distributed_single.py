"""minires.distributed in ONE process (no mpiexec): a world of one, which must behave as the plain model.

Also: gradient buckets, unused parameters, ``no_sync``, the launcher's
environment, and the errors that tell what to install or fix.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minires as mr
import minires.distributed as dist
import minires.nn.functional as F
from minires import models, nn, optim
from minires.distributed import DistributedDataParallel, SyncBatchNorm
from minires.distributed import launch as launch_module
from minires.distributed.bucket import assign_buckets
from minires.distributed.launch import launch
from minires.tensor import Tensor


@pytest.fixture(autouse=True)
def fresh_world(monkeypatch):
    """Each test starts without a process group and outside any launcher."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    dist.destroy_process_group()
    yield
    dist.destroy_process_group()


def tiny_resnet(seed: int = 0) -> nn.Module:
    return models.resnet_cifar(8, width=4, seed=seed).double()


def batch(rng, n: int = 8) -> tuple:
    return Tensor(rng.standard_normal((n, 3, 8, 8))), Tensor(rng.integers(0, 10, n))


def train_steps(model: nn.Module, data: list) -> list:
    """SGD steps on ``data``; returns every step's gradients (copies)."""
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    history = []
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        history.append([p.grad.copy() for p in model.parameters()])
        opt.step()
    return history


# -- (g) a world of one is the plain model --------------------------------------


def test_world_of_one_needs_no_mpi():
    code = ("import sys, minires.distributed as d\n"
            "d.init_process_group()\n"
            "assert (d.get_rank(), d.get_world_size(), d.is_initialized()) == (0, 1, True)\n"
            "assert 'mpi4py.MPI' not in sys.modules, 'MPI was started'\n"
            "print(d.mpi_status())\n"
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi_status started MPI'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overlap", [True, False])
def test_ddp_in_a_world_of_one_is_the_plain_model(rng, overlap):
    data = [batch(rng) for _ in range(3)]
    plain = tiny_resnet()
    wrapped = DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0.002, overlap=overlap)
    assert len(wrapped.buckets) > 2
    for step, (a, b) in enumerate(zip(train_steps(plain, data), train_steps(wrapped, data))):
        for i, (ga, gb) in enumerate(zip(a, b)):
            assert np.array_equal(ga, gb), f"step {step}, gradient {i}"
    for (key, a), (key_b, b) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
        assert key == key_b and np.array_equal(a, b), key
    x = data[0][0]
    plain.eval()
    wrapped.eval()
    assert np.array_equal(plain(x).data, wrapped(x).data)


def test_ddp_state_dict_has_no_prefix_and_loads_both_ways():
    net = tiny_resnet()
    wrapped = DistributedDataParallel(net)
    assert list(wrapped.state_dict()) == list(tiny_resnet().state_dict())
    other = tiny_resnet(seed=1)
    wrapped.load_state_dict(other.state_dict())
    assert np.array_equal(net.conv1.weight.data, other.conv1.weight.data)
    assert wrapped.module is net and len(list(wrapped.parameters())) == len(list(net.parameters()))


def test_overlap_starts_buckets_before_backward_ends(rng):
    wrapped = DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0.002)
    x, y = batch(rng)
    F.cross_entropy(wrapped(x), y).backward()
    assert 0 < wrapped.buckets_started_in_backward < len(wrapped.buckets)
    reference = DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0.002, overlap=False)
    F.cross_entropy(reference(x), y).backward()
    assert reference.buckets_started_in_backward == 0


def test_sync_batch_norm_in_a_world_of_one_is_batch_norm2d(rng):
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    upstream = rng.standard_normal(x.shape)
    layers = [nn.BatchNorm2d(3, momentum=None), SyncBatchNorm(3, momentum=None)]
    results = []
    for layer in layers:
        outputs = []
        for _ in range(2):  # two steps: the cumulative running average sees both
            xt = Tensor(x, dtype=np.float32, requires_grad=True)
            y = layer(xt)
            y.backward(upstream.astype(np.float32))
            outputs += [y.data, xt.grad, layer.weight.grad]
        layer.eval()
        outputs.append(layer(Tensor(x, dtype=np.float32)).data)
        results.append(outputs + [b.copy() for b in layer.state_dict().values()])
    assert list(layers[0].state_dict()) == list(layers[1].state_dict())
    for i, (a, b) in enumerate(zip(*results)):
        assert np.array_equal(a, b), f"entry {i}"


@pytest.mark.filterwarnings("ignore:.*running statistics were never updated")  # layer1 is in eval mode
def test_convert_sync_batchnorm_keeps_parameters_buffers_and_results(rng):
    net = tiny_resnet()
    net.bn1.running_mean[...] = 0.5
    before = net.state_dict()
    params = list(net.parameters())
    net.layer1.eval()
    converted = SyncBatchNorm.convert_sync_batchnorm(net)
    assert converted is net
    kinds = [type(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert kinds and all(k is SyncBatchNorm for k in kinds)
    assert all(a is b for a, b in zip(params, net.parameters()))  # the same Parameter objects
    assert not net.layer1[0].bn1.training and net.layer2[0].bn1.training
    after = net.state_dict()
    assert list(before) == list(after) and all(np.array_equal(before[k], after[k]) for k in before)
    x, y = batch(rng)
    plain = tiny_resnet()
    plain.bn1.running_mean[...] = 0.5
    plain.layer1.eval()
    with mr.use_kernels("reference"):  # the fast set fuses stock BatchNorm2d with its ReLU; same math
        assert np.array_equal(F.cross_entropy(plain(x), y).data, F.cross_entropy(net(x), y).data)
    assert isinstance(SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm2d(2)), SyncBatchNorm)


def test_sync_batch_norm_function_matches_batch_norm(rng):
    """The distributed Function itself (SyncBatchNorm only uses it with 2+ ranks), in a world of one."""
    from minires.distributed.sync_batch_norm import SyncBatchNormTrain

    x = Tensor(rng.standard_normal((3, 2, 4, 4)) * 3 - 1, requires_grad=True)
    upstream = rng.standard_normal(x.shape)
    ref = nn.BatchNorm2d(2).double()
    ref.weight.data[...] = [2.0, -0.5]
    y_ref = ref(x)
    y_ref.backward(upstream)
    expected = [y_ref.data, x.grad.copy(), ref.weight.grad, ref.bias.grad, ref.running_mean, ref.running_var]
    x.grad = None
    layer = nn.BatchNorm2d(2).double()
    layer.weight.data[...] = [2.0, -0.5]
    y = SyncBatchNormTrain.apply(x, layer.weight, layer.bias, has_weight=True, has_bias=True, eps=1e-5,
                                 momentum=0.1, running_mean=layer.running_mean, running_var=layer.running_var,
                                 group=dist.default_group())
    y.backward(upstream)
    actual = [y.data, x.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var]
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12, err_msg=f"entry {i}")


def test_sync_batch_norm_statistics_survive_a_large_mean(rng):
    """float32 values 1000 +- 0.01: the two-pass variance keeps its digits (one pass with sum x^2 would not)."""
    from minires.distributed.sync_batch_norm import global_statistics

    x = (1000 + 0.01 * rng.standard_normal((4, 2, 8, 8))).astype(np.float32)
    mean, var, count, _ = global_statistics(x, dist.default_group())
    exact = x.astype(np.float64)
    assert count == 256
    np.testing.assert_allclose(mean, exact.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(var, exact.var(axis=(0, 2, 3)), rtol=1e-3)


# -- buckets, unused parameters, no_sync ------------------------------------------------------


def test_buckets_reverse_order_cap_and_dtype():
    params = [nn.Parameter(np.zeros(n, dtype=np.float32)) for n in (10, 20, 30, 300)]
    params.insert(2, nn.Parameter(np.zeros(5, dtype=np.float64)))
    buckets = assign_buckets(reversed(params), cap_bytes=100)
    layout = [[p.size for p in b.params] for b in buckets]
    assert layout == [[300], [30], [5], [20, 10]]  # the float64 one alone: a flat array has one dtype
    wrapped = DistributedDataParallel(tiny_resnet(), bucket_cap_mb=1.0)
    assert len(wrapped.buckets) == 1 and wrapped.buckets[0].params[0] is list(wrapped.parameters())[-1]


class TwoHeads(nn.Module):
    """A model with a head the forward never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)

    def forward(self, x):
        return self.used(x)


def test_unused_parameters(rng):
    x, y = Tensor(rng.standard_normal((5, 4)).astype(np.float32)), Tensor(rng.integers(0, 3, 5))
    stuck = DistributedDataParallel(TwoHeads(), bucket_cap_mb=1e-5)
    F.cross_entropy(stuck(x), y).backward()
    with pytest.raises(RuntimeError, match="find_unused_parameters=True"):
        stuck(x)
    stuck.finish_gradient_sync()  # the explicit way out
    stuck(x)
    finder = DistributedDataParallel(TwoHeads(), bucket_cap_mb=1e-5, find_unused_parameters=True)
    plain = TwoHeads()
    plain.load_state_dict(finder.state_dict())
    for model in (finder, plain):
        F.cross_entropy(model(x), y).backward()
    assert np.array_equal(finder.module.used.weight.grad, plain.used.weight.grad)
    assert not finder.module.unused.weight.grad.any()  # averaged zeros for the unused head
    finder(x)  # nothing left pending


def test_no_sync_accumulates_and_the_next_backward_averages_the_sum(rng):
    data = [batch(rng) for _ in range(2)]
    plain, wrapped = tiny_resnet(), DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0.002)
    with wrapped.no_sync():
        F.cross_entropy(wrapped(data[0][0]), data[0][1]).backward()
    F.cross_entropy(wrapped(data[1][0]), data[1][1]).backward()
    for x, y in data:
        F.cross_entropy(plain(x), y).backward()
    for a, b in zip(plain.parameters(), wrapped.parameters()):
        assert np.array_equal(a.grad, b.grad)


def test_bare_module_backward_is_not_synchronised(rng):
    wrapped = DistributedDataParallel(tiny_resnet())
    x, y = batch(rng)
    F.cross_entropy(wrapped.module(x), y).backward()  # not through the wrapper: hooks stay idle
    assert wrapped.buckets_started_in_backward == 0 and wrapped(x) is not None


# -- collectives in a world of one, launcher, errors (h) ------------------------------------------


def test_collectives_in_a_world_of_one():
    a = np.array([1.0, 2.0])
    dist.all_reduce(a)
    dist.all_reduce(a, op="avg")
    dist.broadcast(a)
    dist.barrier()
    work = dist.all_reduce(Tensor(a), async_op=True)
    work.wait()
    assert work.is_completed() and np.array_equal(a, [1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        dist.all_reduce(np.array([1, 2]), op=dist.ReduceOp.AVG)
    with pytest.raises(ValueError, match="op must be"):
        dist.all_reduce(a, op="mean")
    with pytest.raises(ValueError, match="C-contiguous"):
        dist.all_reduce(np.zeros((3, 3))[:, 0])
    with pytest.raises(ValueError, match="src"):
        dist.broadcast(a, src=1)


def test_more_than_one_process_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if it were not installed
    with pytest.raises(dist.DistributedError, match=r"pip install mpi4py mpich") as info:
        dist.init_process_group()
    assert "\n" not in str(info.value)


def test_launch_without_mpiexec_says_what_to_install(monkeypatch):
    monkeypatch.setattr(launch_module, "find_mpiexec", lambda: None)
    with pytest.raises(dist.DistributedError, match=r"--nproc 2 needs MPI.*pip install mpi4py mpich"):
        launch(["python", "-c", "pass"], nproc=2)


def test_launch_refuses_inside_mpiexec(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(dist.DistributedError, match="inside an mpiexec run"):
        launch(["python", "-c", "pass"], nproc=2)


def test_launch_one_process_runs_the_command_with_thread_limits(tmp_path):
    code = "import os, sys; sys.exit(0 if os.environ['OMP_NUM_THREADS'] == os.environ['MINIRES_NUM_THREADS'] else 5)"
    assert launch([sys.executable, "-c", code], nproc=1, env={"PATH": "/usr/bin:/bin"}) == 0
    assert launch([sys.executable, "-c", "import sys; sys.exit(3)"], nproc=1) == 3


def test_limit_threads_env():
    env = dist.limit_threads_env(2, cores=8)
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MINIRES_NUM_THREADS"] == "4"
    assert dist.limit_threads_env(4, cores=2)["MKL_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="nproc"):
        dist.limit_threads_env(0)


def test_mpi_status(monkeypatch):
    assert "mpi4py" in dist.mpi_status()
    monkeypatch.setattr(dist.comm, "is_available", lambda: False)
    assert "pip install mpi4py mpich" in dist.mpi_status()


def test_bad_wrapper_arguments():
    with pytest.raises(TypeError, match="wraps a Module"):
        DistributedDataParallel(lambda x: x)
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0)
    with pytest.raises(ValueError, match="backend='mpi'"):
        dist.init_process_group("nccl")
