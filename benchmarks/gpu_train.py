"""A timed ResNet-20 training run on a CIFAR-10 sample: test accuracy and seconds per epoch.

Part of ``benchmarks/gpu_acceptance.sh``: on a machine lent for a few minutes
it answers "does minires train on this GPU, how well, how fast?". It reads the
arrays ``benchmarks/prepare_gpu_data.py`` wrote (``--data``, default
``gpu_data/``); without them it trains on random images and says so loudly
(the speed is still right, the accuracy is then meaningless).

How the time budget is kept. The learning-rate schedule depends on the number
of epochs, which must be fixed before training starts. So two one-epoch runs
come first: the first pays for compiling the CUDA kernels, the second
measures the wall-clock time of an epoch with its evaluation; the real run
gets as many epochs as fit in what is left of ``--budget``.

    python benchmarks/gpu_train.py --budget 270                 # on the GPU
    python benchmarks/gpu_train.py --device cpu --budget 20 --limit-train 256 --limit-test 128   # dry run

The last line printed is a JSON summary (``RESULT {...}``) for the report.
Only the public training API is used: ``TrainConfig`` and ``Trainer``.

``--data-parallel-step``, run under ``mpiexec -n 2`` on a machine with two
GPUs, instead makes one DistributedDataParallel training step with rank r
on ``cuda:r`` and checks that both ranks end with the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("train_images", "train_labels", "test_images", "test_labels")


def load_sample(folder: Path) -> tuple[SimpleNamespace, bool]:
    """(the arrays of ``folder``, True), or (random images of the same sizes, False) when absent."""
    if all((folder / f"{name}.npy").is_file() for name in NAMES):
        arrays = {name: np.load(folder / f"{name}.npy") for name in NAMES}
        for name in ("train_labels", "test_labels"):
            arrays[name] = arrays[name].astype(np.int64)
        return SimpleNamespace(**arrays), True
    warnings.warn(f"{folder} has no CIFAR-10 sample (run benchmarks/prepare_gpu_data.py): training on RANDOM "
                  "images, so the accuracy means nothing (about 10%); the timings are still valid", stacklevel=2)
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        train_images=rng.integers(0, 256, (10000, 3, 32, 32), dtype=np.uint8),
        train_labels=rng.integers(0, 10, 10000),
        test_images=rng.integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 2000),
    ), False


def train(data: SimpleNamespace, epochs: int, args: argparse.Namespace, out: Path) -> tuple[list[dict], float]:
    """Train a fresh ResNet-20 for ``epochs``; returns the metric rows and the wall-clock seconds of it all."""
    from minires.train import TrainConfig, Trainer

    config = TrainConfig(model="resnet20", recipe=args.recipe, epochs=epochs, batch_size=args.batch_size,
                         device=args.device, seed=0, limit_train=args.limit_train, limit_test=args.limit_test,
                         prefetch=1)
    start = time.perf_counter()
    rows = Trainer(config, data, out, overwrite=True, progress=False, verbose=True).fit()
    return rows, time.perf_counter() - start


def epochs_that_fit(seconds_left: float, seconds_per_epoch: float, most: int) -> int:
    """How many epochs of ``seconds_per_epoch`` fit in ``seconds_left`` (at least 1, at most ``most``)."""
    return max(1, min(most, math.floor(seconds_left / max(seconds_per_epoch, 1e-6))))


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else math.nan


def timed_run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    data, real = load_sample(args.data)
    with tempfile.TemporaryDirectory(prefix="minires-gpu-train-") as tmp:
        # Calibration: a first epoch pays for compiling the kernels; a second, separate
        # one-epoch run in the same process (kernels compiled) gives the time of an epoch.
        _, first = train(data, 1, args, Path(tmp) / "compile")
        _, per_epoch = train(data, 1, args, Path(tmp) / "calibrate")
        left = args.budget - (time.perf_counter() - start)
        epochs = epochs_that_fit(left, per_epoch, args.max_epochs)
        print(f"calibration: {per_epoch:.2f} s per epoch with its evaluation (the first, with kernel "
              f"compilation: {first:.2f} s); {left:.0f} s left: training {epochs} epoch(s)", flush=True)
        rows, wall = train(data, epochs, args, Path(tmp) / "run")
    return {
        "data": "CIFAR-10 sample" if real else "RANDOM images (no gpu_data/)",
        "device": args.device,
        "train_images": int(args.limit_train or data.train_images.shape[0]),
        "test_images": int(args.limit_test or data.test_images.shape[0]),
        "epochs": epochs,
        "test_acc": rows[-1].get("test_acc", math.nan),
        "best_test_acc": max(r.get("test_acc", math.nan) for r in rows),
        "train_seconds_per_epoch": _median(rows, "epoch_seconds"),
        "wall_seconds_per_epoch": wall / epochs,
        "first_epoch_seconds_with_compilation": first,
        "images_per_sec": _median(rows, "images_per_sec"),
        "total_seconds": time.perf_counter() - start,
    }


def data_parallel_step(args: argparse.Namespace) -> dict:
    """One DistributedDataParallel step, rank r on cuda:r; the ranks must end with equal weights."""
    from minires import backend, models
    from minires import distributed as dist
    from minires.distributed.nccl import nccl_module
    from minires.nn import functional as F
    from minires.optim import SGD
    from minires.tensor import Tensor

    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{rank}"
    model = dist.DistributedDataParallel(models.create("resnet20", seed=0).to(device=device))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(rank)  # each rank its own half of the batch
    images = Tensor(rng.standard_normal((64, 3, 32, 32)).astype(np.float32), device=device)
    labels = rng.integers(0, 10, 64)
    start = time.perf_counter()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    checksum = np.array([sum(float(backend.to_device(p.data, "cpu").astype(np.float64).sum())
                             for p in model.parameters())])
    spread = checksum.copy()
    dist.all_reduce(checksum, op="max")
    dist.all_reduce(spread, op="min")
    result = {"rank": rank, "world": world, "loss": float(loss.item()), "step_seconds": time.perf_counter() - start,
              "ranks_agree": bool(checksum[0] == spread[0]),
              # GPU to GPU through NCCL, or (a CuPy without NCCL) through host copies and MPI.
              "gradients_via": "nccl" if nccl_module() is not None else "mpi (host copies)"}
    dist.destroy_process_group()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "gpu_data", help="folder of prepare_gpu_data.py's .npy")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for calibration and training together")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (a dry run)")
    parser.add_argument("--recipe", default="fast", help="training recipe (default fast: warm-up then cosine)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--limit-train", type=int, default=None, help="train on the first K images only")
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate on the first K images only")
    parser.add_argument("--data-parallel-step", action="store_true", help="one 2-GPU DDP step (under mpiexec -n 2)")
    args = parser.parse_args(argv)
    result = data_parallel_step(args) if args.data_parallel_step else timed_run(args)
    print("RESULT " + json.dumps(result), flush=True)
    ok = result.get("ranks_agree", True) and np.isfinite(result.get("loss", result.get("test_acc", 0.0)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
