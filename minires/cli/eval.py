"""``minires eval``: test accuracy and loss of a checkpoint written by ``minires train``."""

from __future__ import annotations

import argparse

from .. import backend
from ..data import CIFARError, DataLoader, subset
from ..train import CheckpointError, ConfigError, build_model, evaluate, read_training_state
from .common import fail, integer, load_cifar, print_banner

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="test accuracy and loss of a checkpoint",
                              description="Evaluate a checkpoint written by `minires train` on the CIFAR-10 test set.")
    p.add_argument("--checkpoint", required=True, help="path to checkpoint.npz")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py (default: the run's)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--limit-test", type=integer, metavar="K", help="evaluate on the first K test images")
    p.add_argument("--batch-size", type=integer, help="evaluation batch size (memory only)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _load_model(args: argparse.Namespace):
    """``(state, model on the device, device)`` from the checkpoint; raises on any usage error."""
    state = read_training_state(args.checkpoint)
    config = state.config
    dev = backend.device(args.device)
    model = build_model(config)
    try:
        model.load_state_dict(state.model)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{args.checkpoint}: the saved weights do not fit model {config.model!r}: {exc}"
        ) from exc
    model.to(dev)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.limit_test is not None and args.limit_test < 1:
        raise ConfigError(f"--limit-test must be a positive integer, got {args.limit_test}")
    return state, model, dev


def run(args: argparse.Namespace) -> int:
    """Print the test accuracy and loss of the checkpoint's model; returns the exit code."""
    try:
        state, model, dev = _load_model(args)
    except (ConfigError, CheckpointError, ValueError, backend.DeviceError) as exc:
        return fail("eval", str(exc))
    config = state.config
    print_banner(dev, model)
    print(f"checkpoint: {args.checkpoint} (model {config.model}, epoch {state.epoch}/{config.epochs}, "
          f"step {state.global_step})")
    try:
        data = load_cifar(args.data_dir if args.data_dir is not None else config.data_dir, not args.no_download)
    except CIFARError as exc:
        return fail("eval", str(exc), code=1)
    n_test = data.test_images.shape[0]
    if args.limit_test is not None and args.limit_test > n_test:
        return fail("eval", f"--limit-test {args.limit_test} is more than the {n_test} test images")
    images, labels = subset(data.test_images, data.test_labels, args.limit_test)
    loader = DataLoader(images, labels, batch_size=args.batch_size or config.eval_batch_size, shuffle=False,
                        device=dev)
    loss, acc = evaluate(model, loader)
    print(f"test accuracy: {100 * acc:.2f}% | test loss: {loss:.4f} | {images.shape[0]} images")
    return 0
