"""Checks that need two real processes: ``mpiexec -n 2 python tests/distributed/mpi_checks.py NAME...``.

``test_distributed_mpi.py`` runs one launch per check. Every check asserts;
the first failure prints its traceback and aborts ALL ranks with exit status
1 (a rank left waiting in a collective would otherwise hang until the
timeout). Each rank prints ``rank R/W NAME ok`` for every check it passes.

Models are tiny float64 ResNet-8s (width 4, 8x8 images) so that rounding
stays near 1e-16 and the comparisons can be tight.
"""

import os

# Before NumPy is imported: one BLAS/OpenMP thread per process (two processes on the cores).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MINIRES_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

import minires.distributed as dist  # noqa: E402
import minires.nn.functional as F  # noqa: E402
from minires import models, nn, no_grad, optim  # noqa: E402
from minires.distributed import DistributedDataParallel, SyncBatchNorm  # noqa: E402
from minires.gradcheck import numerical_gradient  # noqa: E402
from minires.tensor import Tensor  # noqa: E402

CHECKS = {}
GLOBAL_BATCH = 16


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def tiny_resnet(seed: int = 0) -> nn.Module:
    return models.resnet_cifar(8, width=4, seed=seed).double()


def global_batch(seed: int) -> tuple:
    """The same global batch on every rank (seeded), float64 images and int64 labels."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((GLOBAL_BATCH, 3, 8, 8)), rng.integers(0, 10, GLOBAL_BATCH)


def my_part(array: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of a global-batch array."""
    n = len(array) // dist.get_world_size()
    return array[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def loss_of(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> Tensor:
    return F.cross_entropy(model(Tensor(images)), Tensor(labels))


def grads(model: nn.Module) -> list:
    return [p.grad.copy() for p in model.parameters()]


def sgd(model: nn.Module) -> optim.SGD:
    return optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def assert_close(actual, expected, tol: float, what: str) -> None:
    for i, (a, e) in enumerate(zip(actual, expected)):
        diff = float(np.max(np.abs(np.asarray(a) - np.asarray(e)))) if np.size(a) else 0.0
        assert diff <= tol, f"{what} {i}: max |difference| {diff:.3g} > {tol:g}"


def per_rank_values(value: float) -> np.ndarray:
    """Every rank's ``value``, gathered with one all-reduce of a one-hot vector."""
    values = np.zeros(dist.get_world_size())
    values[dist.get_rank()] = value
    dist.all_reduce(values)
    return values


@check
def collectives():
    rank, world = dist.get_rank(), dist.get_world_size()
    a = np.array([rank + 1.0, 10.0 * rank])
    dist.all_reduce(a)
    assert np.array_equal(a, [world * (world + 1) / 2, 10.0 * world * (world - 1) / 2]), a
    b = Tensor(np.full(3, float(rank)))
    dist.all_reduce(b, op=dist.ReduceOp.AVG)
    assert np.allclose(b.data, (world - 1) / 2), b
    c = np.array(rank, dtype=np.int64)  # 0-d, like num_batches_tracked
    dist.all_reduce(c, op=dist.ReduceOp.MAX)
    assert int(c) == world - 1
    d = np.arange(5.0) * (rank + 1)
    work = dist.all_reduce(d, async_op=True)
    work.wait()
    assert work.is_completed() and np.array_equal(d, np.arange(5.0) * world * (world + 1) / 2), d
    e = np.full(4, float(rank))
    dist.broadcast(e, src=world - 1)
    assert np.array_equal(e, np.full(4, world - 1.0))
    dist.barrier()


@check
def sync_bn_step_matches_one_process():
    """(a) SyncBatchNorm + DDP on 2 x 8 images == one process on all 16: gradients, parameters, buffers."""
    ref = tiny_resnet()
    ref_opt = sgd(ref)
    model = DistributedDataParallel(SyncBatchNorm.convert_sync_batchnorm(tiny_resnet()), bucket_cap_mb=0.002)
    opt = sgd(model)
    assert len(model.buckets) > 2
    for step in range(3):  # later steps start from the momentum and running statistics of the earlier ones
        images, labels = global_batch(seed=step)
        ref_loss = loss_of(ref, images, labels)
        ref_opt.zero_grad()
        ref_loss.backward()
        loss = loss_of(model, my_part(images), my_part(labels))
        opt.zero_grad()
        loss.backward()
        assert abs(per_rank_values(loss.item()).mean() - ref_loss.item()) <= 1e-12
        assert_close(grads(model), grads(ref), 1e-10, f"step {step} gradient")
        ref_opt.step()
        opt.step()
        assert_close(model.state_dict().values(), ref.state_dict().values(), 1e-10, f"step {step} state entry")


@check
def ddp_gradient_is_mean_of_halves():
    """(b) Per-rank BatchNorm: the DDP gradient is the average of the per-part gradients of one process."""
    images, labels = global_batch(seed=5)
    ref = tiny_resnet()
    n = GLOBAL_BATCH // dist.get_world_size()
    parts = []
    for r in range(dist.get_world_size()):
        ref.zero_grad()
        loss_of(ref, images[r * n:(r + 1) * n], labels[r * n:(r + 1) * n]).backward()
        parts.append(grads(ref))
    expected = [np.mean(list(g), axis=0) for g in zip(*parts)]
    mine = parts[dist.get_rank()]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(mine, expected)) > 1e-6, "parts too alike to test"
    model = DistributedDataParallel(tiny_resnet(), bucket_cap_mb=0.002)
    loss_of(model, my_part(images), my_part(labels)).backward()
    assert_close(grads(model), expected, 1e-12, "gradient")


@check
def overlap_equals_after_backward():
    """(c) overlap=True and overlap=False give bit-identical gradients, step after step (SyncBN included)."""
    runs = {}
    for overlap in (True, False):
        net = SyncBatchNorm.convert_sync_batchnorm(tiny_resnet())
        runs[overlap] = (DistributedDataParallel(net, bucket_cap_mb=0.002, overlap=overlap), sgd(net))
    for step in range(2):
        images, labels = global_batch(seed=10 + step)
        for model, opt in runs.values():
            opt.zero_grad()
            loss_of(model, my_part(images), my_part(labels)).backward()
        (fast, fast_opt), (ref, ref_opt) = runs[True], runs[False]
        for i, (a, b) in enumerate(zip(grads(fast), grads(ref))):
            assert np.array_equal(a, b), f"step {step} gradient {i} differs by {np.max(np.abs(a - b)):.3g}"
        assert fast.buckets_started_in_backward > 0, "overlap=True started no bucket before backward ended"
        assert ref.buckets_started_in_backward == 0
        fast_opt.step()
        ref_opt.step()


@check
def parameters_identical_after_steps():
    """(d) Different initial weights (broadcast fixes them) and different data: still identical after SGD.

    Parameters stay identical by themselves; buffers after ``sync_buffers()``.
    """
    model = DistributedDataParallel(tiny_resnet(seed=dist.get_rank()), bucket_cap_mb=0.002)
    assert_close(model.state_dict().values(), tiny_resnet(seed=0).state_dict().values(), 0.0, "broadcast entry")
    opt = sgd(model)
    rng = np.random.default_rng(100 + dist.get_rank())  # each rank its own data
    losses = []
    for _ in range(4):
        images, labels = rng.standard_normal((8, 3, 8, 8)), rng.integers(0, 10, 8)
        loss = loss_of(model, images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(set(per_rank_values(losses[0]))) == dist.get_world_size(), "ranks saw the same data"
    model.sync_buffers()  # the last forward updated each rank's running statistics from its own data
    for key, value in model.state_dict().items():
        rank0 = value.copy()
        dist.broadcast(rank0, src=0)
        assert np.array_equal(value, rank0), f"{key} differs from rank 0's"


@check
def sync_bn_matches_whole_batch():
    """The SyncBatchNorm layer on the parts == BatchNorm2d on the whole batch: output, gradients, statistics."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 3, 4, 4)) * 3 + 1
    upstream = rng.standard_normal(x.shape)
    ref, sync = nn.BatchNorm2d(3).double(), SyncBatchNorm(3).double()
    for layer in (ref, sync):
        layer.weight.data[...] = [0.5, -1.0, 2.0]
        layer.bias.data[...] = [0.1, 0.2, -0.3]
    x_ref = Tensor(x, requires_grad=True)
    y_ref = ref(x_ref)
    y_ref.backward(upstream)
    x_mine = Tensor(my_part(x).copy(), requires_grad=True)
    y = sync(x_mine)
    y.backward(my_part(upstream))
    dweight, dbias = sync.weight.grad.copy(), sync.bias.grad.copy()
    dist.all_reduce(dweight)  # this rank's share of a shared parameter's gradient; DDP would combine them
    dist.all_reduce(dbias)
    assert_close([y.data], [my_part(y_ref.data)], 1e-12, "output")
    assert_close([x_mine.grad, dweight, dbias], [my_part(x_ref.grad), ref.weight.grad, ref.bias.grad], 1e-12, "grad")
    assert_close([sync.running_mean, sync.running_var], [ref.running_mean, ref.running_var], 1e-12, "running stat")


@check
def sync_bn_gradcheck():
    """(f) Central differences of the GLOBAL loss sum_r <y_r, u_r>, every element of x (on each rank), gamma, beta."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(20 + rank)  # each rank its own x and upstream gradient
    x = Tensor(rng.standard_normal((2, 3, 2, 2)) * 2 + 0.5, requires_grad=True)
    upstream = rng.standard_normal(x.shape)
    bn = SyncBatchNorm(3).double()
    bn.weight.data[...] = np.random.default_rng(1).standard_normal(3)  # parameters: the same on every rank
    bn.bias.data[...] = np.random.default_rng(2).standard_normal(3)
    bn(x).backward(upstream)
    analytic = [x.grad.copy(), bn.weight.grad.copy(), bn.bias.grad.copy()]
    for g in analytic[1:]:
        dist.all_reduce(g)  # a shared parameter's gradient: the sum of every rank's share

    def global_loss(*inputs):  # bn reads x and its own parameters, which the differences perturb in place
        total = np.array([float((bn(x).data * upstream).sum())])
        dist.all_reduce(total)
        return Tensor(total)

    inputs = [x, bn.weight, bn.bias]
    numeric = [None, numerical_gradient(global_loss, inputs, 1, 1.0), numerical_gradient(global_loss, inputs, 2, 1.0)]
    for owner in range(world):  # x is perturbed on one rank at a time; the others take part in the collectives
        if rank == owner:
            numeric[0] = numerical_gradient(global_loss, inputs, 0, 1.0)
        else:
            for _ in range(2 * x.size):
                with no_grad():
                    global_loss()
    for name, a, n in zip(("x", "weight", "bias"), analytic, numeric):
        error, allowed = np.abs(a - n), 1e-7 + 1e-5 * np.abs(n)
        assert np.all(error <= allowed), f"{name}: {np.sum(error > allowed)} elements differ, worst {error.max():.3g}"


def main(names: list) -> int:
    rank, world = dist.get_rank(), dist.get_world_size()
    from mpi4py import MPI

    try:
        assert world == int(os.environ.get("EXPECTED_WORLD_SIZE", "2")), f"world size {world}: not under mpiexec -n 2?"
        for name in names:
            CHECKS[name]()
            print(f"rank {rank}/{world} {name} ok", flush=True)
    except BaseException:
        sys.stdout.flush()
        print(f"rank {rank}/{world} FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let mpiexec forward the message: the abort tears down its pipes
        MPI.COMM_WORLD.Abort(1)  # ends every rank, also one waiting in a collective
    return 0


if __name__ == "__main__":
    unknown = [n for n in sys.argv[1:] if n not in CHECKS]
    if unknown or len(sys.argv) < 2:
        sys.exit(f"usage: mpiexec -n 2 python {sys.argv[0]} CHECK...; checks: {', '.join(CHECKS)} (unknown: {unknown})")
    sys.exit(main(sys.argv[1:]))
