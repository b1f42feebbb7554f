"""``minires compare``: train plain and residual twins side by side (the degradation experiment).

The comparison itself (summary, table, plots) is
:func:`minires.diagnostics.compare.run_compare`; this module parses the
arguments and gives it :class:`TrainTwin`, which trains one model with the
:class:`~minires.train.Trainer` and a :class:`GradientMonitor` attached.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import backend
from ..data import CIFARError, DataLoader, subset
from ..diagnostics.compare import HISTORY_NAME, Twin, TwinResult, run_compare, run_length, synthetic_dataset, twins_for
from ..diagnostics.monitor import GradientMonitor, save_history
from ..train import ConfigError, TrainConfig, Trainer, TrainingDiverged, evaluate, prepare_out_dir
from ..train.recipes import names as recipe_names
from .common import at_least, fail, integer, load_cifar

__all__ = ["add_parser", "run", "TrainTwin"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="train plain and residual nets side by side (the degradation experiment)",
        description="Train plainD and resnetD for each --depth D with the same seed, data order and recipe; "
                    "write every run, a side-by-side summary and plots into --out.",
    )
    p.add_argument("--depth", type=integer, nargs="+", default=[20, 56], metavar="D",
                   help="CIFAR depths 6n+2 (default: 20 56)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=at_least(1), metavar="N",
                        help="N optimisation steps per model, split into --evals epochs over the first "
                             "ceil(N/evals)*batch training images (quick runs)")
    length.add_argument("--epochs", type=at_least(1), metavar="E", help="E full epochs per model")
    p.add_argument("--evals", type=at_least(1), default=4, metavar="K",
                   help="with --steps: evaluation points, i.e. epochs (default 4)")
    p.add_argument("--batch-size", type=at_least(1), default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 0.1)")
    p.add_argument("--recipe", choices=recipe_names(), default="paper",
                   help="training recipe, the same for every model (default paper: lr /10 at 50%% and 75%%)")
    p.add_argument("--seed", type=at_least(0), default=0, help="seed of initialisation and data order (default 0)")
    p.add_argument("--width", type=at_least(1), default=16,
                   help="filters of the first stage (default 16, the paper's; smaller is faster)")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--synthetic", action="store_true", help="use a small learnable synthetic data set (tests, demos)")
    p.add_argument("--limit-train", type=at_least(1), metavar="K", help="with --epochs: train on the first K images")
    p.add_argument("--limit-test", type=at_least(1), metavar="K", help="evaluate on the first K test images")
    p.add_argument("--train-eval", type=at_least(1), default=5000, metavar="K",
                   help="measure the final training error on K of the training images used (default 5000)")
    p.add_argument("--monitor-every", type=at_least(1), metavar="M",
                   help="record gradient norms at step 1 and every M steps (default: ~20 records per run)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crops/flips")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=run)


@dataclass
class TrainTwin:
    """Trains one twin of a comparison (the training function :func:`run_compare` calls).

    Every twin gets the same settings, so plain and residual models of a depth
    see the same images in the same order, from the same initial convolutions.
    """

    data: Any
    epochs: int
    limit_train: int | None
    batch_size: int
    lr: float | None
    recipe: str
    seed: int
    limit_test: int | None
    augment: bool
    device: str
    monitor_every: int | None  # None: about 20 records per run
    train_eval: int | None  # measure the final training error on at most this many images (None: all)
    overwrite: bool
    verbose: bool

    def __call__(self, twin: Twin, out_dir: Path) -> TwinResult:
        config = TrainConfig(model=twin.model, model_kwargs=twin.model_kwargs, recipe=self.recipe,
                             epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                             device=self.device, limit_train=self.limit_train, limit_test=self.limit_test,
                             augment=self.augment)
        started = time.perf_counter()
        trainer = Trainer(config, self.data, out_dir, overwrite=self.overwrite, progress=False, verbose=self.verbose)
        cfg = trainer.config
        every = self.monitor_every if self.monitor_every is not None else max(1, trainer.total_steps // 20)
        monitor = GradientMonitor(trainer.model)
        trainer.callbacks.append(monitor.callback(every))
        if self.verbose:
            print(f"== {twin.name}: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps, batch {cfg.batch_size}, "
                  f"recipe {cfg.recipe}, lr {cfg.lr}, seed {cfg.seed}", flush=True)
        try:
            rows = trainer.fit()
        finally:
            monitor.detach()
            history = monitor.history
            history.meta.update({"batch_size": cfg.batch_size, "seed": cfg.seed, "recipe": cfg.recipe,
                                 "record_every": every})
            if history.steps:
                save_history(history, out_dir / HISTORY_NAME)
        seconds = time.perf_counter() - started
        train_loss, train_acc, n_images = self._training_error(trainer)
        return TwinResult(
            metrics=rows, history=history, lr=cfg.lr, steps=trainer.global_step,
            train_images=int(trainer.train_loader.num_examples), test_images=int(trainer.test_loader.num_examples),
            params=sum(int(p.size) for p in trainer.model.parameters()), seconds=seconds,
            train_loss_eval=train_loss, train_acc_eval=train_acc, train_eval_images=n_images,
        )

    def _training_error(self, trainer: Trainer) -> tuple[float, float, int]:
        """Loss and accuracy on the images trained on, un-augmented, BN in eval mode: what degradation is about."""
        images, labels = subset(self.data.train_images, self.data.train_labels, self.limit_train)
        if self.train_eval is not None:
            images, labels = subset(images, labels, min(int(self.train_eval), int(images.shape[0])))
        loader = DataLoader(images, labels, batch_size=trainer.config.eval_batch_size, shuffle=False,
                            drop_last=False, seed=0, augment=None, device=trainer.device, prefetch=0)
        loss, acc = evaluate(trainer.model, loader)
        return loss, acc, int(images.shape[0])


def _load_data(args: argparse.Namespace, say) -> Any:
    """The synthetic data set (sized for the run) or CIFAR-10."""
    if not args.synthetic:
        return load_cifar(args.data_dir, not args.no_download, say)
    n_needed = 1024
    if args.steps is not None:
        n_needed = max(n_needed, math.ceil(args.steps / max(1, min(args.evals, args.steps))) * args.batch_size)
    elif args.limit_train is not None:
        n_needed = max(n_needed, args.limit_train)
    data = synthetic_dataset(n_needed, args.limit_test or 256, seed=args.seed)
    say(f"data: synthetic, {n_needed} training / {data.test_images.shape[0]} test images")
    return data


def _check_out_dir(out: str, twins: list[Twin], overwrite: bool) -> Path:
    """Refuse before training the first model if a LATER one would be refused."""
    root = prepare_out_dir(out, overwrite=overwrite)
    if not overwrite:
        for twin in twins:
            if (root / twin.name / "checkpoint.npz").exists():
                raise ConfigError(f"{root / twin.name} already holds a run; pass --overwrite to replace the "
                                  f"comparison in {root}, or choose another --out")
    return root


def run(args: argparse.Namespace) -> int:
    """Run ``minires compare``; returns the exit code."""
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    try:
        data = _load_data(args, say)
    except CIFARError as exc:
        return fail("compare", str(exc), code=1)
    try:
        twins = twins_for(args.depth, args.width)
        epochs, limit_train = run_length(args.steps, args.epochs, args.evals, args.batch_size, args.limit_train,
                                         int(data.train_images.shape[0]))
        root = _check_out_dir(args.out, twins, args.overwrite)
        device = str(backend.device(args.device))
    except (ValueError, backend.DeviceError) as exc:  # ConfigError is a ValueError
        return fail("compare", str(exc))
    train_twin = TrainTwin(
        data=data, epochs=epochs, limit_train=limit_train, batch_size=args.batch_size, lr=args.lr,
        recipe=args.recipe, seed=args.seed, limit_test=args.limit_test, augment=args.augment, device=args.device,
        monitor_every=args.monitor_every, train_eval=args.train_eval, overwrite=args.overwrite,
        verbose=not args.quiet,
    )
    # The sub-command and its arguments as typed (the same under `minires` and `python -m minires`).
    argv = sys.argv[sys.argv.index("compare"):] if "compare" in sys.argv else ["compare"]
    settings = {"seed": args.seed, "width": args.width, "recipe": args.recipe, "batch_size": args.batch_size,
                "epochs": epochs, "limit_train": limit_train, "limit_test": args.limit_test, "augment": args.augment,
                "device": device, "command": "minires " + " ".join(shlex.quote(a) for a in argv),
                "data": "synthetic" if args.synthetic else "cifar10"}
    try:
        run_compare(twins, root, train_twin, settings=settings)
    except ConfigError as exc:
        return fail("compare", str(exc))
    except TrainingDiverged as exc:
        return fail("compare", str(exc), code=1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
