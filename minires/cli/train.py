"""``minires train``: train a model on CIFAR-10 into a run directory; ``--resume`` continues it.

Every usage error (unknown model, impossible batch size, unusable ``--out``,
a checkpoint of another run) is reported before the data is loaded.
Data-parallel (``mpiexec -n N minires train ...`` or ``--nproc N``): see :mod:`.data_parallel`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import backend
from ..data import CIFARError
from ..distributed import launched_world_size, per_rank_batch_size
from ..train import (
    RUN_DEFINING,
    CheckpointError,
    ConfigError,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    build_model,
    prepare_out_dir,
    read_training_state,
)
from ..train.distributed import DataParallel
from ..train.interrupt import StoppedTogether
from ..train.recipes import names as recipe_names
from .common import at_least, fail, integer, load_cifar, print_banner
from .data_parallel import INTERRUPTED, launch_nproc, nproc_mismatch, run_rank

__all__ = ["add_parser", "run"]

# Arguments that define a run (RUN_DEFINING) default to None so that, with
# --resume, "not given" (take the checkpoint's) differs from "given".
_FRESH_DEFAULTS = {"model": "resnet20", "recipe": "paper", "seed": 0, "val_split": 0, "augment": True,
                   "sync_bn": False}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model on CIFAR-10",
        description="Train a model on CIFAR-10. Writes config.json, checkpoint.npz, metrics.jsonl, metrics.csv "
                    "(and grad_norms.jsonl) into --out.",
    )
    p.add_argument("--model", help="model name (default resnet20; see minires.models.names())")
    p.add_argument("--recipe", choices=recipe_names(), help="training recipe (default paper)")
    p.add_argument("--epochs", type=integer, help="epochs (default: the recipe's, 164 for paper)")
    p.add_argument("--batch-size", type=integer, help="batch size (default: the recipe's, 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 0.1)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py (default: $MINIRES_DATA or "
                                      "~/.cache/minires)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/resnet20")
    p.add_argument("--seed", type=integer, help="random seed (default 0)")
    p.add_argument("--grad-norms", type=integer, metavar="N",
                   help="every N steps print per-layer gradient norms and log them to grad_norms.jsonl")
    p.add_argument("--limit-train", type=integer, metavar="K", help="train on the first K images")
    p.add_argument("--limit-test", type=integer, metavar="K", help="evaluate on the first K test images")
    p.add_argument("--val-split", type=integer, nargs="?", const=5000, metavar="N",
                   help="hold out N training images for validation (N defaults to 5000, the paper's 45k/5k)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="no random crops/flips")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--nproc", type=at_least(1), metavar="N",
                   help="data-parallel: start N processes under mpiexec, each on batch-size / N of every batch "
                        "(needs pip install mpi4py mpich); the same as mpiexec -n N minires train ...")
    p.add_argument("--sync-bn", dest="sync_bn", action="store_const", const=True,
                   help="data-parallel: batch norm over the whole batch of all processes (SyncBatchNorm)")
    p.set_defaults(func=run, augment=None, sync_bn=None)


def _resumed_config(out: Path, given: dict) -> TrainConfig:
    """The checkpoint's configuration: it is the run's, and flags may only repeat it."""
    config = read_training_state(out / "checkpoint.npz").config
    clashes = [
        f"--{k.replace('_', '-')} {v!r} (the run uses {getattr(config, k)!r})"
        for k, v in given.items() if v is not None and k in RUN_DEFINING and v != getattr(config, k)
    ]
    if clashes:
        raise ConfigError(
            f"cannot --resume {out} with different settings: " + "; ".join(clashes)
            + ". Drop these flags, or train into a new --out."
        )
    return config


def _config_from_args(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The run's configuration from the flags (and, with ``--resume``, the checkpoint), checked."""
    given = {
        "model": args.model, "recipe": args.recipe, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "limit_train": args.limit_train, "limit_test": args.limit_test,
        "val_split": args.val_split, "augment": None if args.augment is None else bool(args.augment),
        "sync_bn": args.sync_bn,
    }
    if args.resume:
        config = _resumed_config(out, given)
    else:
        config = TrainConfig(**{k: (_FRESH_DEFAULTS.get(k) if v is None else v) for k, v in given.items()})
    # Settings that do not change the trained parameters may differ between sessions.
    for key, value in {"device": args.device, "data_dir": args.data_dir, "grad_norms": args.grad_norms}.items():
        if value is not None:
            setattr(config, key, value)
    config.validate()
    config.check_sizes()
    return config


def _print_start(trainer: Trainer, out: Path, resume: bool) -> None:
    cfg = trainer.config
    start = f"resuming at epoch {trainer.epoch + 1}, step {trainer.global_step}" if resume else "starting"
    world = trainer.parallel.world_size
    batch = f"batch {cfg.batch_size}" + (f" ({cfg.batch_size // world} on each of {world} processes)"
                                         if world > 1 else "")
    print(f"run: {out} | recipe {cfg.recipe}: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps, "
          f"{batch}, lr {cfg.lr} | {start}")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run in ``--out``, here or, with ``--nproc N``, as N processes; returns the exit code."""
    mismatch = nproc_mismatch(args.nproc)
    if mismatch:
        return fail("train", mismatch)
    if args.nproc is not None and args.nproc > 1 and launched_world_size() == 1:
        return _start_processes(args)
    return run_rank(lambda: _train(args))


def _start_processes(args: argparse.Namespace) -> int:
    """``--nproc N``: check the arguments here, then run this same command line as N MPI processes."""
    try:
        out = prepare_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        config = _config_from_args(args, out)
        per_rank_batch_size(config.resolved().batch_size, args.nproc)
    except (ConfigError, CheckpointError, ValueError) as exc:
        return fail("train", str(exc))
    argv = getattr(args, "argv", None)
    return launch_nproc(list(sys.argv[1:] if argv is None else argv), args.nproc)


def _train(args: argparse.Namespace) -> int:
    """Train (or resume) in this process: one process alone, or one rank of a data-parallel run."""
    try:
        out = prepare_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        config = _config_from_args(args, out)
        per_rank_batch_size(config.resolved().batch_size, launched_world_size())
        try:
            dev = DataParallel().device(config.device)  # on N processes: one GPU per rank
        except (ValueError, backend.DeviceError) as exc:
            raise ConfigError(f"--device {config.device}: {exc}") from exc
        model = build_model(config).to(dev)
    except (ConfigError, CheckpointError, ValueError) as exc:
        return fail("train", str(exc))

    print_banner(dev, model)
    try:
        data = load_cifar(config.data_dir, not args.no_download)
    except CIFARError as exc:
        return fail("train", str(exc), code=1)
    quiet = bool(args.quiet)
    try:
        trainer = Trainer(config, data, out, resume=args.resume, overwrite=args.overwrite, model=model,
                          progress=(not quiet and sys.stdout.isatty()), verbose=not quiet)
    except (ConfigError, CheckpointError) as exc:
        return fail("train", str(exc))
    if trainer.finished:
        print(f"run: {out} is already complete ({trainer.config.epochs} epochs); nothing to do")
    elif not quiet:
        _print_start(trainer, out, args.resume)
    try:
        rows = trainer.fit()
    except StoppedTogether:
        print("interrupted", file=sys.stderr)
        raise  # run_rank: every rank stopped after this step, so each may exit on its own
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except TrainingDiverged as exc:
        return fail("train", str(exc), code=1)
    if rows:
        last = rows[-1]
        print(f"done: {len(rows)} epochs, test accuracy {100 * last['test_acc']:.2f}%, "
              f"test loss {last['test_loss']:.4f}; checkpoint {trainer.checkpoint_path}")
    return 0
