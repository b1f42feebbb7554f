"""``minires gradflow``: per-layer gradient norms of models at initialisation, side by side.

One forward and backward pass of each model on one fixed batch
(:func:`minires.diagnostics.compare.gradflow`), optionally a depth sweep
(:func:`minires.diagnostics.sweep.depth_sweep`), printed and, with ``--out``,
written as JSON, text and plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..data import CIFARError, DataLoader
from ..diagnostics.compare import finite, format_gradflow_table, gradflow
from ..diagnostics.monitor import GradientHistory, save_history
from ..diagnostics.sweep import SweepResult, depth_sweep
from .common import fail, integer, load_cifar

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "gradflow", help="per-layer gradient norms of models at initialisation (one batch, no training)",
        description="One forward/backward pass of each model at initialisation on one fixed batch: per-layer "
                    "gradient norms side by side, optionally a depth sweep of the first/last ratio.",
    )
    p.add_argument("--models", nargs="+", default=["plain56", "resnet56"], metavar="NAME",
                   help="model names (default: plain56 resnet56)")
    p.add_argument("--batch-size", type=integer, default=128, help="batch size (default 128)")
    p.add_argument("--seed", type=integer, default=0, help="seed of the models and the batch (default 0)")
    p.add_argument("--data-dir", help="use the first --batch-size CIFAR-10 training images from here "
                                      "(default: a Gaussian batch, no data needed)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--no-batch-norm", action="store_true", help="remove every batch-norm layer first")
    p.add_argument("--sweep", type=integer, nargs="+", metavar="D",
                   help="also sweep these CIFAR depths (plain and residual, with and without BN)")
    p.add_argument("--sweep-batch-size", type=integer, default=32, help="batch size of the sweep (default 32)")
    p.add_argument("--out", help="write tables, histories (JSON) and plots here")
    p.set_defaults(func=run)


def _first_cifar_batch(args: argparse.Namespace) -> tuple[Any, Any]:
    """The first ``--batch-size`` CIFAR-10 training images and labels, as a batch; ``ValueError`` if too few."""
    data = load_cifar(args.data_dir, not args.no_download)
    if args.batch_size > data.train_images.shape[0]:
        raise ValueError(f"--batch-size {args.batch_size} is more than the {data.train_images.shape[0]} "
                         "training images")
    loader = DataLoader(data.train_images[: args.batch_size], data.train_labels[: args.batch_size],
                        batch_size=args.batch_size, shuffle=False)
    return next(iter(loader))


def _write_outputs(out: str, text: str, histories: dict[str, GradientHistory], sweeps: list[SweepResult]) -> None:
    from ..diagnostics import plots  # matplotlib, only when writing

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for label, h in histories.items():
        save_history(h, root / f"gradflow_{label}.json")
    atomic_write_bytes(root / "gradflow.txt", (text + "\n").encode("utf-8"))
    written = plots.plot_depth_profile(histories, root / "gradflow",
                                       title="Weight-gradient norm versus depth at initialisation")
    if sweeps:
        atomic_write_bytes(root / "depth_sweep.json",
                           (json.dumps([finite(s.to_dict()) for s in sweeps], indent=2) + "\n").encode("utf-8"))
        written += plots.plot_depth_sweep(sweeps, root / "depth_sweep")
    print("wrote " + ", ".join(str(p) for p in written))


def run(args: argparse.Namespace) -> int:
    """Run ``minires gradflow``; returns the exit code."""
    if args.batch_size < 2:
        return fail("gradflow", f"--batch-size must be at least 2 (batch norm needs 2 examples), got {args.batch_size}")
    images = labels = None
    source = f"a fixed batch of {args.batch_size} standard-normal 32x32 images (seed {args.seed})"
    if args.data_dir is not None:
        try:
            images, labels = _first_cifar_batch(args)
        except CIFARError as exc:
            return fail("gradflow", str(exc), code=1)
        except ValueError as exc:
            return fail("gradflow", str(exc))
        source = f"the first {args.batch_size} CIFAR-10 training images"
    try:
        histories = gradflow(args.models, batch_size=args.batch_size, seed=args.seed, images=images, labels=labels,
                             batch_norm=not args.no_batch_norm)
        sweeps = [depth_sweep(args.sweep, batch_norm=bn, batch_size=args.sweep_batch_size, seed=args.seed)
                  for bn in (True, False)] if args.sweep else []
    except ValueError as exc:
        return fail("gradflow", str(exc))
    text = f"gradient flow at initialisation on {source}\n" + format_gradflow_table(histories)
    for result in sweeps:
        text += "\n\n" + result.format_table()
    print(text)
    if args.out:
        _write_outputs(args.out, text, histories, sweeps)
    return 0
