"""Data-parallel training on the CPU: images per second of a ResNet-20 step, minires vs PyTorch.

One step = forward, cross-entropy, backward, SGD (momentum 0.9, weight decay
1e-4) on a GLOBAL batch of 128 synthetic float32 CIFAR images, split evenly
over the processes. Each configuration runs in fresh processes: a few
warm-up steps, then ``--steps`` timed ones; the table shows the median step
(after a barrier, so all ranks start together) as images per second.

* minires, 1 process: its default threads (the kernel pool on every core,
  BLAS on one thread inside the step, as ``Trainer`` does).
* minires, 1 process x 1 thread: what each rank below would do alone.
* minires, N processes x T threads: ``mpiexec -n N``, DistributedDataParallel,
  per-rank BatchNorm; then the same with SyncBatchNorm.
* PyTorch (``benchmarks/torch_resnet.py``), 1 process with
  ``torch.set_num_threads(cores)``, and N processes x T threads with its gloo
  DistributedDataParallel over localhost TCP (reported as failed if gloo
  cannot start here).

Each process gets ``OPENBLAS_NUM_THREADS`` etc. = T in its environment
BEFORE it imports NumPy or torch: BLAS and OpenMP size their thread pools at
import, and idle pool threads spinning on the cores that the other process
needs make two processes several times slower than one.

    python benchmarks/bench_data_parallel.py --steps 3      # a quick look
    python benchmarks/bench_data_parallel.py --steps 20 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GLOBAL_BATCH = 128
NUM_CLASSES = 10
DEPTH = 20


# ---------------------------------------------------------------------------
# In the child processes (NumPy and torch are imported only here)
# ---------------------------------------------------------------------------


# minires.distributed.launch.THREAD_VARIABLES, spelled out: importing minires would import NumPy.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "MINIRES_NUM_THREADS")


def _set_threads_before_numpy(threads: int | None) -> None:
    """In a child, before any import of NumPy or torch (the parent's environment says the same)."""
    if threads:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)


def synthetic_batch(batch: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, NUM_CLASSES, batch)


def minires_child(kind: str, steps: int, warmup: int) -> list:
    """Step times (seconds) of one rank; under mpiexec the model is wrapped in DistributedDataParallel."""
    import minires as mr
    import minires.distributed as dist
    import minires.nn.functional as F
    from minires import models, optim

    try:
        from minires.fast.threads import single_threaded_blas
    except ImportError:
        from minires.kernels.conv import single_threaded_blas
    try:
        from minires.fast.allocator import keep_freed_memory
    except ImportError:
        from minires.allocator import keep_freed_memory
    keep_freed_memory()  # as Trainer does
    model = models.resnet_cifar(DEPTH, num_classes=NUM_CLASSES, seed=0)
    if dist.get_world_size() > 1:
        if kind == "minires-syncbn":
            model = dist.SyncBatchNorm.convert_sync_batchnorm(model)
        model = dist.DistributedDataParallel(model)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = synthetic_batch(dist.per_rank_batch_size(GLOBAL_BATCH), seed=dist.get_rank())
    x, y = mr.Tensor(images), mr.Tensor(labels)
    times = []
    for i in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        with single_threaded_blas():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def torch_child(steps: int, warmup: int, threads: int) -> list:
    """Step times of one torch process; with WORLD_SIZE > 1 in the environment, gloo DDP."""
    import torch

    sys.path.insert(0, str(HERE))
    from torch_resnet import cifar_resnet

    torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = cifar_resnet(DEPTH, NUM_CLASSES)
    barrier = lambda: None  # noqa: E731
    if world > 1:
        import torch.distributed as tdist

        tdist.init_process_group("gloo", init_method=os.environ["INIT_METHOD"], rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
        barrier = tdist.barrier
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = synthetic_batch(GLOBAL_BATCH // world, seed=rank)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    times = []
    for _ in range(warmup + steps):
        barrier()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def child_main(args: argparse.Namespace) -> int:
    if args.child == "torch":
        times = torch_child(args.steps, args.warmup, args.threads or 1)
        rank = int(os.environ.get("RANK", "0"))
    else:
        times = minires_child(args.child, args.steps, args.warmup)
        import minires.distributed as dist

        rank = dist.get_rank()
    if rank == 0:
        print(json.dumps({"median_s": statistics.median(times), "min_s": min(times)}), flush=True)
    return 0


# ---------------------------------------------------------------------------
# In the parent: one fresh set of processes per configuration
# ---------------------------------------------------------------------------


def _thread_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def _child_command(kind: str, args: argparse.Namespace, threads: int | None) -> list:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    return command + (["--threads", str(threads)] if threads else [])


def _result(outputs: list) -> dict | str:
    """The JSON line of rank 0, or the reason there is none."""
    for out in outputs:
        if out.returncode != 0:
            return f"failed (exit {out.returncode}): {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    for line in reversed("".join(o.stdout for o in outputs).splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return "failed: no result printed"


def run_minires(kind: str, nproc: int, threads: int | None, args: argparse.Namespace) -> dict | str:
    command = _child_command(kind, args, threads)
    if nproc > 1:
        from minires.distributed.launch import find_mpiexec

        mpiexec = find_mpiexec()
        if mpiexec is None:
            return "skipped: no mpiexec (pip install mpi4py mpich)"
        command = [mpiexec, "-n", str(nproc), *command]
    out = subprocess.run(command, capture_output=True, text=True, env=_thread_env(threads), timeout=args.timeout)
    return _result([out])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(nproc: int, threads: int, args: argparse.Namespace) -> dict | str:
    command = _child_command("torch", args, threads)
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**_thread_env(threads), "RANK": str(r), "WORLD_SIZE": str(nproc),
                                   "INIT_METHOD": init})
             for r in range(nproc)]
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            return f"failed: no result in {args.timeout} s"
        outputs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return _result(outputs)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel rows")
    parser.add_argument("--no-torch", action="store_true", help="minires rows only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--child", choices=["minires", "minires-syncbn", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _set_threads_before_numpy(args.threads)
        return child_main(args)

    from minires.distributed.launch import usable_cores

    cores, n = usable_cores(), args.nproc
    per_rank = max(1, cores // n)
    rows = [
        ("minires", f"1 process, default threads ({cores} cores)", lambda: run_minires("minires", 1, None, args)),
        ("minires", "1 process x 1 thread", lambda: run_minires("minires", 1, 1, args)),
        ("minires", f"{n} processes x {per_rank} thread(s), DDP", lambda: run_minires("minires", n, per_rank, args)),
        ("minires", f"{n} processes x {per_rank} thread(s), DDP + SyncBN",
         lambda: run_minires("minires-syncbn", n, per_rank, args)),
    ]
    if not args.no_torch:
        rows += [
            ("pytorch", f"1 process, set_num_threads({cores})", lambda: run_torch(1, cores, args)),
            ("pytorch", f"{n} processes x {per_rank} thread(s), gloo DDP", lambda: run_torch(n, per_rank, args)),
        ]
    print(f"ResNet-{DEPTH} training step, global batch {GLOBAL_BATCH}, float32, synthetic data; "
          f"{args.warmup} warm-up + {args.steps} timed steps, median; {cores} usable cores")
    print(f"{'library':<8} {'configuration':<44} {'images/s':>9} {'median ms':>10} {'best ms':>9}")
    best: dict = {}
    for library, label, run in rows:
        result = run()
        if isinstance(result, str):
            print(f"{library:<8} {label:<44} {result}")
            continue
        speed = GLOBAL_BATCH / result["median_s"]
        best[library] = max(best.get(library, 0.0), speed)
        print(f"{library:<8} {label:<44} {speed:9.1f} {1e3 * result['median_s']:10.1f} {1e3 * result['min_s']:9.1f}",
              flush=True)
    if "minires" in best and "pytorch" in best:
        print(f"minires best / PyTorch best: {best['minires'] / best['pytorch']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
