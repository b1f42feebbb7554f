"""``minires compare`` and ``minires gradflow``: plain versus residual, side by side.

``compare`` is the paper's degradation experiment in miniature (figure 6): for
each depth D it trains ``plainD`` and ``resnetD`` with the same seed (so the
twins start from the SAME convolution weights: their layers are created in the
same order), the same data order and the same recipe, through the ordinary
:class:`minires.train.Trainer`, with a :class:`GradientMonitor` attached. It
writes into one directory::

    OUT/plain20/ resnet20/ ...     each a normal run directory (config.json,
                                   metrics.jsonl/.csv, checkpoint.npz) plus
                                   gradients.json (the monitor's history)
    OUT/summary.json, summary.txt  the side-by-side table printed at the end
    OUT/training_curves.png/.svg   loss, training error, test error per run
    OUT/gradient_depth.png/.svg    gradient norm vs depth, init and final
    OUT/gradient_heatmap_<model>.png/.svg

Short runs (``--steps N``) keep the trainer's epoch structure: the N steps
are split into ``--evals K`` equal "epochs" over the first ``ceil(N/K) * B``
training images, so the curves have K points and every model sees exactly the
same images in the same order. The final TRAINING error is measured once more
at the end, on those training images without augmentation and with BN in eval
mode, which is the number the degradation claim is about.

``gradflow`` is the same comparison at initialisation only: one forward and
backward pass of each model on one fixed batch (seconds), a per-layer table,
and optionally a depth sweep (:func:`minires.diagnostics.sweep.depth_sweep`).

Both register themselves on an ``argparse`` sub-parser set with
:func:`add_compare_parser` / :func:`add_gradflow_parser`. ``minires.train`` is
imported inside functions only: ``train`` imports ``diagnostics``, so a
module-level import here would be circular.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from .. import backend, models
from ..atomic import atomic_write_bytes
from ..nn import functional as F
from ..tensor import Tensor
from .monitor import GradientHistory, GradientMonitor, save_history
from .sweep import depth_sweep, fixed_batch, without_batch_norm

__all__ = [
    "run_compare", "format_compare_table", "synthetic_dataset", "gradflow", "format_gradflow_table",
    "add_compare_parser", "add_gradflow_parser", "cmd_compare", "cmd_gradflow",
]

SUMMARY_JSON = "summary.json"
SUMMARY_TXT = "summary.txt"
HISTORY_NAME = "gradients.json"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def synthetic_dataset(n_train: int = 1024, n_test: int = 256, seed: int = 0) -> SimpleNamespace:
    """A small learnable stand-in for CIFAR-10 (uint8 ``(N, 3, 32, 32)`` images, int64 labels).

    Each class has a fixed smooth pattern (a colour and a coarse 4x4 layout
    blown up to 32x32, so random crops and flips keep it recognisable); an
    image is its class pattern plus noise. Networks can learn it in a few
    hundred steps, which is all the quick tests and demos need.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(10, 3, 4, 4))
    patterns = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)  # (10, 3, 32, 32)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        noise = rng.normal(0.0, 40.0, size=(n, 3, 32, 32))
        images = np.clip(0.6 * patterns[labels] + 0.4 * 128 + noise, 0, 255).astype(np.uint8)
        return images, labels

    train_images, train_labels = make(int(n_train))
    test_images, test_labels = make(int(n_test))
    return SimpleNamespace(train_images=train_images, train_labels=train_labels, test_images=test_images,
                           test_labels=test_labels, source="synthetic")


def _load_cifar(data_dir: str | None, download: bool, say) -> Any:
    from ..data import load_cifar10, resolve_data_dir

    root = resolve_data_dir(data_dir)
    data = load_cifar10(root, download=download, examples_per_batch="meta")
    say(f"data: {data.train_images.shape[0]} training / {data.test_images.shape[0]} test images from {root}")
    return data


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------


def _first_last_conv(history: GradientHistory, index: int) -> tuple[float, float]:
    cols = [i for i, t in enumerate(history.layer_types) if t == "Conv2d"]
    grads = history.layer_grad[index]
    return float(grads[cols[0]]), float(grads[cols[-1]])


def _schedule(steps: int | None, epochs: int | None, evals: int, batch_size: int, limit_train: int | None,
              n_train: int) -> tuple[int, int | None]:
    """``(epochs, limit_train)`` for the trainer (see the module docstring for ``--steps``)."""
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    if epochs is not None:
        return int(epochs), limit_train
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(evals, bool) or not isinstance(evals, (int, np.integer)) or evals < 1:
        raise ValueError(f"evals must be a positive integer, got {evals!r}")
    if limit_train is not None:
        raise ValueError("limit_train cannot be combined with steps: steps chooses the training subset "
                         "(ceil(steps / evals) * batch_size images)")
    evals = min(int(evals), int(steps))
    per_epoch = math.ceil(steps / evals)
    needed = per_epoch * batch_size
    if needed > n_train:
        raise ValueError(
            f"steps={steps} with evals={evals} needs {per_epoch} batches of {batch_size} = {needed} training images "
            f"per epoch, but there are only {n_train}; use more evals (more epochs over fewer images) or fewer steps"
        )
    return evals, needed


def run_compare(
    depths: Sequence[int],
    data: Any,
    out: str | os.PathLike,
    steps: int | None = None,
    epochs: int | None = None,
    evals: int = 4,
    batch_size: int = 128,
    lr: float | None = None,
    recipe: str = "paper",
    seed: int = 0,
    width: int = 16,
    limit_train: int | None = None,
    limit_test: int | None = None,
    monitor_every: int | None = None,
    train_eval: int | None = 5000,
    augment: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    plots: bool = True,
    verbose: bool = True,
    stream: TextIO | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``plainD`` and ``resnetD`` for every depth D; write runs, summary and plots into ``out``.

    Args:
        depths: CIFAR depths ``6n + 2`` (``[20, 56]``).
        data: an object with ``train_images (N, 3, 32, 32)`` uint8, ``train_labels (N,)``,
            ``test_images``, ``test_labels`` (:func:`minires.data.load_cifar10` or
            :func:`synthetic_dataset`).
        out: the comparison's directory (created).
        steps / epochs: the length of each run; exactly one (see the module docstring).
        evals: with ``steps``: how many epochs (evaluation points) to split them into.
        batch_size, lr, recipe, seed, limit_train, limit_test, augment, device:
            as for :class:`minires.train.TrainConfig`, the same for every model.
        width: filters of the first stage (16 in the paper; smaller for quick tests).
        monitor_every: record gradients at step 1 and every this many steps
            (default: about 20 records per run).
        train_eval: measure the final training error on at most this many of
            the training images used (``None``: all of them).
        overwrite: replace runs already in ``out``.
        plots: write the figures.
        verbose: print the trainer's epoch lines and the final table.
        stream: where to print (standard output by default).
        extra: notes added to ``summary.json`` (the command line, ...).

    Returns:
        The summary dict also written to ``out/summary.json``: ``{"runs": [per-model dict], ...}``.

    Raises:
        minires.train.ConfigError: a bad setting (unknown depth, too little data, ``out`` holds runs).
    """
    from ..data import DataLoader, subset
    from ..train import ConfigError, Trainer, TrainConfig, build_model, evaluate, prepare_out_dir

    stream = stream if stream is not None else sys.stdout

    def say(text: str) -> None:
        if verbose:
            print(text, file=stream, flush=True)

    if not depths:
        raise ConfigError("give at least one depth, e.g. --depth 20 56")
    names = []
    for d in depths:
        for kind in ("plain", "resnet"):
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 8 or (d - 2) % 6:
                raise ConfigError(f"CIFAR depths are 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {d!r}")
            names.append(f"{kind}{d}")
    n_train = int(data.train_images.shape[0])
    try:
        run_epochs, run_limit = _schedule(steps, epochs, evals, batch_size, limit_train, n_train)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    root = prepare_out_dir(out, overwrite=overwrite)
    # Refuse before training the first model if a LATER one would be refused.
    if not overwrite:
        for name in names:
            if (root / name / "checkpoint.npz").exists():
                raise ConfigError(f"{root / name} already holds a run; pass --overwrite to replace the comparison "
                                  f"in {root}, or choose another --out")

    runs: list[dict[str, Any]] = []
    histories: dict[str, GradientHistory] = {}
    started = time.perf_counter()
    for name in names:
        kind_prefix, depth_text = ("plain", name[5:]) if name.startswith("plain") else ("resnet", name[6:])
        # Named constructors (plain56) where the paper has them, the generic one otherwise (plain8).
        model_name, model_kwargs = name, {}
        if name not in models.names():
            model_name, model_kwargs = f"{kind_prefix}_cifar", {"depth": int(depth_text)}
        if width != 16:
            model_kwargs["width"] = int(width)
        config = TrainConfig(model=model_name, model_kwargs=model_kwargs, recipe=recipe, epochs=run_epochs, batch_size=batch_size, lr=lr, seed=seed,
                             device=device, limit_train=run_limit, limit_test=limit_test, augment=augment)
        resolved = config.resolved()
        resolved_lr = resolved.lr
        model = build_model(resolved)
        monitor = GradientMonitor(model)
        steps_per_epoch = (run_limit if run_limit is not None else n_train) // resolved.batch_size
        total = max(1, resolved.epochs * steps_per_epoch)
        every = monitor_every if monitor_every is not None else max(1, total // 20)
        callback = monitor.callback(every)
        say(f"== {name}: {resolved.epochs} epochs x {steps_per_epoch} steps, batch {resolved.batch_size}, "
            f"recipe {resolved.recipe}, lr {resolved.lr}, seed {seed}")
        t0 = time.perf_counter()
        trainer = Trainer(config, data, root / name, overwrite=overwrite, model=model, callbacks=[callback],
                          progress=False, verbose=verbose, stream=stream)
        try:
            rows = trainer.fit()
        finally:
            monitor.detach()
            history = monitor.history
            history.meta.update({"batch_size": resolved.batch_size, "seed": seed, "recipe": resolved.recipe,
                                 "record_every": every})
            if history.steps:
                save_history(history, root / name / HISTORY_NAME)
        train_seconds = time.perf_counter() - t0
        # The degradation claim is about TRAINING error: measure it on the
        # images the model was trained on, un-augmented, BN in eval mode.
        images, labels = subset(data.train_images, data.train_labels, run_limit)
        if train_eval is not None:
            images, labels = subset(images, labels, min(int(train_eval), int(images.shape[0])))
        loader = DataLoader(images, labels, batch_size=resolved.eval_batch_size, shuffle=False, drop_last=False,
                            seed=0, augment=None, device=trainer.device, prefetch=0)
        train_loss_eval, train_acc_eval = evaluate(trainer.model, loader)
        last = rows[-1]
        first_init, last_init = _first_last_conv(history, 0)
        first_end, last_end = _first_last_conv(history, -1)
        n_params = sum(int(p.size) for p in trainer.model.parameters())
        runs.append({
            "model": name, "kind": "plain" if kind_prefix == "plain" else "residual", "depth": int(depth_text), "params": n_params,
            "steps": trainer.global_step, "epochs": len(rows), "train_images": int(trainer.train_loader.num_examples),
            "seconds": train_seconds,
            "train_loss": last["train_loss"], "train_error_running": 1.0 - last["train_acc"],
            "train_error": 1.0 - train_acc_eval, "train_loss_eval": train_loss_eval,
            "train_eval_images": int(images.shape[0]),
            "test_error": 1.0 - last["test_acc"], "test_loss": last["test_loss"],
            "test_images": int(trainer.test_loader.num_examples),
            "grad_first_init": first_init, "grad_last_init": last_init,
            "grad_first_final": first_end, "grad_last_final": last_end,
            "grad_ratio_init": first_init / last_init if last_init > 0 else math.inf,
            "grad_ratio_final": first_end / last_end if last_end > 0 else math.inf,
            "grad_steps": [history.steps[0], history.steps[-1]],
        })
        histories[name] = history
    summary = {
        "depths": [int(d) for d in depths], "seed": seed, "width": width, "recipe": recipe, "batch_size": batch_size,
        "lr": resolved_lr,
        "epochs": run_epochs, "limit_train": run_limit, "limit_test": limit_test, "augment": augment,
        "device": str(backend.device(device)), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "wall_seconds": time.perf_counter() - started, "runs": runs, **(extra or {}),
    }
    text = format_compare_table(summary)
    atomic_write_bytes(root / SUMMARY_JSON, (json.dumps(_finite(summary), indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(root / SUMMARY_TXT, (text + "\n").encode("utf-8"))
    if plots:
        from . import plots as P

        P.plot_training_curves({r["model"]: root / r["model"] for r in runs}, root / "training_curves",
                               title=f"Plain vs residual, depths {', '.join(map(str, depths))}: training curves")
        P.plot_depth_profile(histories, root / "gradient_depth")
        for name, history in histories.items():
            P.plot_heatmap(history, root / f"gradient_heatmap_{name}")
    print(text, file=stream, flush=True)
    return summary


def _finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None`` recursively, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def format_compare_table(summary: dict[str, Any]) -> str:
    """The runs of a :func:`run_compare` summary as columns, one metric per row."""
    runs = summary["runs"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}"

    def sci(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2e}"

    metrics = [
        ("steps (epochs)", lambda r: f"{r['steps']} ({r['epochs']})"),
        ("final train error % (eval)", lambda r: pct(r["train_error"])),
        ("last-epoch train error % (running)", lambda r: pct(r["train_error_running"])),
        ("last-epoch train loss", lambda r: f"{r['train_loss']:.4f}"),
        ("test error %", lambda r: pct(r["test_error"])),
        ("||dW|| first conv, init", lambda r: sci(r["grad_first_init"])),
        ("||dW|| first conv, final", lambda r: sci(r["grad_first_final"])),
        ("first/last conv ||dW||, init", lambda r: sci(r["grad_ratio_init"])),
        ("first/last conv ||dW||, final", lambda r: sci(r["grad_ratio_final"])),
        ("wall time (s)", lambda r: f"{r['seconds']:.0f}"),
    ]
    label_w = max(len(m[0]) for m in metrics)
    cells = [[fn(r) for r in runs] for _, fn in metrics]
    col_w = [max(len(r["model"]), *(len(row[j]) for row in cells)) for j, r in enumerate(runs)]
    lines = [f"{'':<{label_w}}  " + "  ".join(f"{r['model']:>{w}}" for r, w in zip(runs, col_w))]
    for (label, _), row in zip(metrics, cells):
        lines.append(f"{label:<{label_w}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row, col_w)))
    lr = summary.get("lr")
    header = (f"plain vs residual: recipe {summary['recipe']}" + (f" (peak lr {lr})" if lr is not None else "")
              + f", batch {summary['batch_size']}, seed {summary['seed']}, "
              f"{summary['runs'][0]['train_images'] if runs else 0} training images "
              f"(train error evaluated on {runs[0]['train_eval_images'] if runs else 0}), "
              f"{runs[0]['test_images'] if runs else 0} test images")
    return header + "\n" + "\n".join(lines)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, refused while parsing, before any data is loaded."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"minires {command}: error: {message}", file=sys.stderr)
    return code


def cmd_compare(args: argparse.Namespace) -> int:
    """Run ``minires compare`` (see :func:`add_compare_parser`); returns the exit code."""
    from ..data import CIFARError
    from ..train import ConfigError, TrainingDiverged

    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    # The sub-command and its arguments as typed (the same under `minires` and `python -m`).
    argv = sys.argv[sys.argv.index("compare"):] if "compare" in sys.argv else ["compare"]
    if args.synthetic:
        n_needed = 1024
        if args.steps is not None:
            n_needed = max(n_needed, math.ceil(args.steps / max(1, min(args.evals, args.steps))) * args.batch_size)
        elif args.limit_train is not None:
            n_needed = max(n_needed, args.limit_train)
        data = synthetic_dataset(n_needed, args.limit_test or 256, seed=args.seed)
        say(f"data: synthetic, {n_needed} training / {data.test_images.shape[0]} test images")
    else:
        try:
            data = _load_cifar(args.data_dir, not args.no_download, say)
        except CIFARError as exc:
            return _fail("compare", str(exc), code=1)
    try:
        run_compare(
            args.depth, data, args.out, steps=args.steps, epochs=args.epochs, evals=args.evals,
            batch_size=args.batch_size, lr=args.lr, recipe=args.recipe, seed=args.seed, width=args.width,
            limit_train=args.limit_train, limit_test=args.limit_test, monitor_every=args.monitor_every,
            train_eval=args.train_eval, augment=args.augment, device=args.device, overwrite=args.overwrite,
            verbose=not args.quiet, extra={"command": "minires " + " ".join(shlex.quote(a) for a in argv),
                                           "data": "synthetic" if args.synthetic else "cifar10"},
        )
    except ConfigError as exc:
        return _fail("compare", str(exc))
    except TrainingDiverged as exc:
        return _fail("compare", str(exc), code=1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``compare`` on ``subparsers`` (from ``parser.add_subparsers()``); returns its parser."""
    from .. import recipes

    p = subparsers.add_parser(
        "compare", help="train plain and residual nets side by side (the degradation experiment)",
        description="Train plainD and resnetD for each --depth D with the same seed, data order and recipe; "
                    "write every run, a side-by-side summary and plots into --out.",
    )
    p.add_argument("--depth", type=_integer, nargs="+", default=[20, 56], metavar="D",
                   help="CIFAR depths 6n+2 (default: 20 56)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_at_least(1), metavar="N",
                        help="N optimisation steps per model, split into --evals epochs over the first "
                             "ceil(N/evals)*batch training images (quick runs)")
    length.add_argument("--epochs", type=_at_least(1), metavar="E", help="E full epochs per model")
    p.add_argument("--evals", type=_at_least(1), default=4, metavar="K",
                   help="with --steps: evaluation points, i.e. epochs (default 4)")
    p.add_argument("--batch-size", type=_at_least(1), default=128, help="batch size (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 0.1)")
    p.add_argument("--recipe", choices=recipes.names(), default="paper",
                   help="training recipe, the same for every model (default paper: lr /10 at 50%% and 75%%)")
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of initialisation and data order (default 0)")
    p.add_argument("--width", type=_at_least(1), default=16,
                   help="filters of the first stage (default 16, the paper's; smaller is faster)")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--synthetic", action="store_true", help="use a small learnable synthetic data set (tests, demos)")
    p.add_argument("--limit-train", type=_at_least(1), metavar="K", help="with --epochs: train on the first K images")
    p.add_argument("--limit-test", type=_at_least(1), metavar="K", help="evaluate on the first K test images")
    p.add_argument("--train-eval", type=_at_least(1), default=5000, metavar="K",
                   help="measure the final training error on K of the training images used (default 5000)")
    p.add_argument("--monitor-every", type=_at_least(1), metavar="M",
                   help="record gradient norms at step 1 and every M steps (default: ~20 records per run)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crops/flips")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.set_defaults(func=cmd_compare)
    return p


# ---------------------------------------------------------------------------
# gradflow
# ---------------------------------------------------------------------------


def gradflow(
    model_names: Sequence[str],
    batch_size: int = 128,
    seed: int = 0,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    batch_norm: bool = True,
) -> dict[str, GradientHistory]:
    """One forward/backward of each model at initialisation on one fixed batch; one record per model.

    Args:
        model_names: names from :func:`minires.models.names` (``["plain56", "resnet56"]``).
        batch_size: size of the Gaussian batch (:func:`~minires.diagnostics.sweep.fixed_batch`)
            when ``images`` is not given.
        seed: initialisation seed of every model and seed of the batch.
        images, labels: a real batch ``(B, 3, H, W)`` float32, ``(B,)`` int64.
        batch_norm: False removes every BN first (:func:`without_batch_norm`).

    Returns:
        ``{name: history}``, each history holding one record (step 0) with the loss.
    """
    if not model_names:
        raise ValueError("give at least one model name, e.g. plain56 resnet56")
    for name in model_names:
        if name not in models.names():
            raise ValueError(f"unknown model {name!r}; valid models: {', '.join(models.names())}")
    if images is None:
        images, labels = fixed_batch(batch_size, 32, seed)
    out = {}
    for name in model_names:
        model = models.create(name, seed=seed)
        if not batch_norm:
            without_batch_norm(model)
        model.train()
        with GradientMonitor(model) as monitor:
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            monitor.record(0, loss=float(loss.item()))
        history = monitor.history
        history.meta.update({"batch_size": int(images.shape[0]), "seed": seed, "batch_norm": batch_norm})
        label = name if batch_norm else f"{name}-nobn"
        out[label] = history
    return out


def format_gradflow_table(histories: dict[str, GradientHistory]) -> str:
    """Per-layer ``||dL/dW||`` of each model side by side (row = layer index), then a summary per model."""
    labels = list(histories)
    same_layers = len({tuple(h.layers) for h in histories.values()}) == 1
    n = max(len(h.layers) for h in histories.values())
    name_w = max(len("layer"), *(len(x) for h in histories.values() for x in h.layers)) if same_layers else 0
    col_w = [max(10, len(label)) for label in labels]
    head = f"{'#':>3}  " + (f"{'layer':<{name_w}}  " if same_layers else "")
    lines = ["weight-gradient norms ||dL/dW|| at initialisation (one batch)",
             head + "  ".join(f"{label:>{w}}" for label, w in zip(labels, col_w))]
    first = next(iter(histories.values()))
    for i in range(n):
        cells = []
        for h, w in zip(histories.values(), col_w):
            cells.append(f"{h.layer_grad[0][i]:>{w}.3e}" if i < len(h.layers) else " " * w)
        name = f"{first.layers[i]:<{name_w}}  " if same_layers else ""
        lines.append(f"{i + 1:>3}  {name}" + "  ".join(cells))
    lines.append("")
    lines.append(f"{'model':<14}  {'loss':>7}  {'first conv':>10}  {'last conv':>10}  {'first/last':>10}  {'max/min':>9}")
    for label, h in histories.items():
        cols = [i for i, t in enumerate(h.layer_types) if t == "Conv2d"]
        g = np.array(h.layer_grad[0], dtype=np.float64)[cols]
        loss = h.losses[0] if h.losses[0] is not None else math.nan
        lines.append(f"{label:<14}  {loss:>7.3f}  {g[0]:>10.3e}  {g[-1]:>10.3e}  {g[0] / g[-1]:>10.2e}  "
                     f"{g.max() / g.min():>9.2e}")
    return "\n".join(lines)


def cmd_gradflow(args: argparse.Namespace) -> int:
    """Run ``minires gradflow`` (see :func:`add_gradflow_parser`); returns the exit code."""
    from ..data import CIFARError, DataLoader

    if args.batch_size < 2:
        return _fail("gradflow", f"--batch-size must be at least 2 (batch norm needs 2 examples), got {args.batch_size}")
    images = labels = None
    source = f"a fixed batch of {args.batch_size} standard-normal 32x32 images (seed {args.seed})"
    if args.data_dir is not None:
        try:
            data = _load_cifar(args.data_dir, not args.no_download, print)
        except CIFARError as exc:
            return _fail("gradflow", str(exc), code=1)
        if args.batch_size > data.train_images.shape[0]:
            return _fail("gradflow", f"--batch-size {args.batch_size} is more than the "
                                     f"{data.train_images.shape[0]} training images")
        loader = DataLoader(data.train_images[: args.batch_size], data.train_labels[: args.batch_size],
                            batch_size=args.batch_size, shuffle=False)
        images, labels = next(iter(loader))
        source = f"the first {args.batch_size} CIFAR-10 training images"
    try:
        histories = gradflow(args.models, batch_size=args.batch_size, seed=args.seed, images=images, labels=labels,
                             batch_norm=not args.no_batch_norm)
    except ValueError as exc:
        return _fail("gradflow", str(exc))
    text = f"gradient flow at initialisation on {source}\n" + format_gradflow_table(histories)
    sweeps = []
    if args.sweep:
        for bn in (True, False):
            try:
                result = depth_sweep(args.sweep, batch_norm=bn, batch_size=args.sweep_batch_size, seed=args.seed)
            except ValueError as exc:
                return _fail("gradflow", str(exc))
            sweeps.append(result)
            text += "\n\n" + result.format_table()
    print(text)
    if args.out:
        from . import plots as P

        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
        for label, h in histories.items():
            save_history(h, root / f"gradflow_{label}.json")
        atomic_write_bytes(root / "gradflow.txt", (text + "\n").encode("utf-8"))
        written = P.plot_depth_profile(histories, root / "gradflow",
                                       title="Weight-gradient norm versus depth at initialisation")
        if sweeps:
            atomic_write_bytes(root / "depth_sweep.json",
                               (json.dumps([_finite(s.to_dict()) for s in sweeps], indent=2) + "\n").encode("utf-8"))
            written += P.plot_depth_sweep(sweeps, root / "depth_sweep")
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_gradflow_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gradflow`` on ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "gradflow", help="per-layer gradient norms of models at initialisation (seconds)",
        description="One forward/backward pass of each model at initialisation on one fixed batch: per-layer "
                    "gradient norms side by side, optionally a depth sweep of the first/last ratio.",
    )
    p.add_argument("--models", nargs="+", default=["plain56", "resnet56"], metavar="NAME",
                   help="model names (default: plain56 resnet56)")
    p.add_argument("--batch-size", type=_integer, default=128, help="batch size (default 128)")
    p.add_argument("--seed", type=_integer, default=0, help="seed of the models and the batch (default 0)")
    p.add_argument("--data-dir", help="use the first --batch-size CIFAR-10 training images from here "
                                      "(default: a Gaussian batch, no data needed)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--no-batch-norm", action="store_true", help="remove every batch-norm layer first")
    p.add_argument("--sweep", type=_integer, nargs="+", metavar="D",
                   help="also sweep these CIFAR depths (plain and residual, with and without BN)")
    p.add_argument("--sweep-batch-size", type=_integer, default=32, help="batch size of the sweep (default 32)")
    p.add_argument("--out", help="write tables, histories (JSON) and plots here")
    p.set_defaults(func=cmd_gradflow)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m minires.diagnostics.compare {compare,gradflow} ...`` (the same as ``minires compare|gradflow``)."""
    parser = argparse.ArgumentParser(prog="python -m minires.diagnostics.compare")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_compare_parser(sub)
    add_gradflow_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
