"""Plain versus residual, side by side: the comparisons behind ``minires compare`` and ``minires gradflow``.

:func:`run_compare` is the paper's degradation experiment in miniature
(figure 6): for each depth D, ``plainD`` and ``resnetD`` are trained with the
same seed (so the twins start from the SAME convolution weights: their layers
are created in the same order), the same data order and the same recipe,
each by the training function it is given, which also records the gradients.
Into one directory::

    OUT/plain20/ resnet20/ ...     each a normal run directory (config.json,
                                   metrics.jsonl/.csv, checkpoint.npz) plus
                                   gradients.json (the gradient history)
    OUT/summary.json, summary.txt  the side-by-side table printed at the end
    OUT/training_curves.png/.svg   loss, training error, test error per run
    OUT/gradient_depth.png/.svg    gradient norm vs depth, init and final
    OUT/gradient_heatmap_<model>.png/.svg

The final TRAINING error is measured once more at the end, on the training
images without augmentation and with BN in eval mode: the number the
degradation claim is about.

:func:`gradflow` is the same comparison at initialisation only: one forward
and backward pass of each model on one fixed batch, and a per-layer table.

Nothing here trains a model or parses arguments: the command
``minires compare`` passes a training function built on the Trainer.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from .. import models
from ..atomic import atomic_write_bytes
from ..nn import functional as F
from ..tensor import Tensor
from .monitor import GradientHistory, GradientMonitor
from .sweep import fixed_batch, without_batch_norm

__all__ = [
    "Twin", "TwinResult", "TrainTwin", "twins_for", "run_length", "run_compare", "run_summary", "format_compare_table",
    "synthetic_dataset", "gradflow", "format_gradflow_table", "finite", "HISTORY_NAME",
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


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Twin:
    """One model of a comparison."""

    name: str  # "plain20": also the name of its run directory
    kind: str  # "plain" or "residual"
    depth: int
    model: str  # the registry name to build: "plain20", or "plain_cifar" for depths without a named model
    model_kwargs: dict = field(default_factory=dict)


@dataclass
class TwinResult:
    """What training one twin gave; the training function passed to :func:`run_compare` returns it."""

    metrics: list[dict]  # the trainer's rows, one per epoch (train_loss, train_acc, test_loss, test_acc, ...)
    history: GradientHistory  # gradient norms at step 1 and every few steps after
    lr: float  # the peak learning rate used
    steps: int  # optimisation steps taken
    train_images: int  # training images used per epoch
    test_images: int
    params: int  # parameters of the model
    seconds: float  # wall time of the run
    train_loss_eval: float  # the final training loss and accuracy, measured un-augmented with BN in eval mode
    train_acc_eval: float
    train_eval_images: int  # how many training images that measurement used


TrainTwin = Callable[[Twin, Path], TwinResult]


def twins_for(depths: Sequence[int], width: int = 16) -> list[Twin]:
    """``plainD`` and ``resnetD`` for every CIFAR depth ``D = 6n + 2``; ``ValueError`` for any other depth."""
    if not depths:
        raise ValueError("give at least one depth, e.g. --depth 20 56")
    out = []
    for depth in depths:
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR depths are 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}")
        for prefix, kind in (("plain", "plain"), ("resnet", "residual")):
            name = f"{prefix}{depth}"
            # Named constructors (plain56) where the paper has them, the generic one otherwise (plain8).
            model, kwargs = (name, {}) if name in models.names() else (f"{prefix}_cifar", {"depth": int(depth)})
            if width != 16:
                kwargs["width"] = int(width)
            out.append(Twin(name=name, kind=kind, depth=int(depth), model=model, model_kwargs=kwargs))
    return out


def run_length(steps: int | None, epochs: int | None, evals: int, batch_size: int, limit_train: int | None,
              n_train: int) -> tuple[int, int | None]:
    """``(epochs, limit_train)`` of each run: ``epochs`` as given, or ``steps`` split into ``evals`` epochs.

    With ``steps``, every epoch is ``ceil(steps / evals)`` batches over the first
    that many batches of training images, so the curves have ``evals`` points and
    every model sees exactly the same images in the same order.
    """
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
    twins: Sequence[Twin],
    out: str | os.PathLike,
    train_twin: TrainTwin,
    *,
    settings: dict[str, Any] | None = None,
    plots: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Train every twin with ``train_twin(twin, out / twin.name)``; write the summary and the plots into ``out``.

    Args:
        twins: the models, from :func:`twins_for`.
        out: the comparison's directory (it must exist, or be creatable).
        train_twin: trains one model into the run directory it is given, with
            its gradients recorded, and returns a :class:`TwinResult`.
        settings: what the runs share (seed, width, recipe, batch_size,
            epochs, ...), recorded in ``summary.json``.
        plots: write the figures.
        stream: where the final table is printed (standard output by default).

    Returns:
        The summary also written to ``out/summary.json``: ``{"runs": [per-model dict], ...}``.
    """
    root = Path(out)
    runs: list[dict[str, Any]] = []
    histories: dict[str, GradientHistory] = {}
    lr = None
    started = time.perf_counter()
    for twin in twins:
        result = train_twin(twin, root / twin.name)
        runs.append(run_summary(twin, result))
        histories[twin.name] = result.history
        lr = result.lr
    depths = [t.depth for t in twins if t.kind == "plain"]
    summary = {
        "depths": depths, **(settings or {}), "lr": lr, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "wall_seconds": time.perf_counter() - started, "runs": runs,
    }
    text = format_compare_table(summary)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / SUMMARY_JSON, (json.dumps(finite(summary), indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(root / SUMMARY_TXT, (text + "\n").encode("utf-8"))
    if plots:
        _plot_comparison(root, histories, depths)
    print(text, file=stream if stream is not None else sys.stdout, flush=True)
    return summary


def run_summary(twin: Twin, result: TwinResult) -> dict[str, Any]:
    """One model's entry in ``summary.json``: errors, losses, gradient norms of the first and last conv."""
    last = result.metrics[-1]
    history = result.history
    first_init, last_init = _first_last_conv(history, 0)
    first_end, last_end = _first_last_conv(history, -1)
    return {
        "model": twin.name, "kind": twin.kind, "depth": twin.depth, "params": result.params,
        "steps": result.steps, "epochs": len(result.metrics), "train_images": result.train_images,
        "seconds": result.seconds,
        "train_loss": last["train_loss"], "train_error_running": 1.0 - last["train_acc"],
        "train_error": 1.0 - result.train_acc_eval, "train_loss_eval": result.train_loss_eval,
        "train_eval_images": result.train_eval_images,
        "test_error": 1.0 - last["test_acc"], "test_loss": last["test_loss"], "test_images": result.test_images,
        "grad_first_init": first_init, "grad_last_init": last_init,
        "grad_first_final": first_end, "grad_last_final": last_end,
        "grad_ratio_init": first_init / last_init if last_init > 0 else math.inf,
        "grad_ratio_final": first_end / last_end if last_end > 0 else math.inf,
        "grad_steps": [history.steps[0], history.steps[-1]],
    }


def _plot_comparison(root: Path, histories: dict[str, GradientHistory], depths: Sequence[int]) -> None:
    from . import plots as P  # matplotlib, only when plotting

    P.plot_training_curves({name: root / name for name in histories}, root / "training_curves",
                           title=f"Plain vs residual, depths {', '.join(map(str, depths))}: training curves")
    P.plot_depth_profile(histories, root / "gradient_depth")
    for name, history in histories.items():
        P.plot_heatmap(history, root / f"gradient_heatmap_{name}")


def _first_last_conv(history: GradientHistory, index: int) -> tuple[float, float]:
    cols = [i for i, t in enumerate(history.layer_types) if t == "Conv2d"]
    grads = history.layer_grad[index]
    return float(grads[cols[0]]), float(grads[cols[-1]])


def finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None`` recursively, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
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
    lines.append(f"{'model':<14}  {'loss':>7}  {'first conv':>10}  {'last conv':>10}  {'first/last':>10}  "
                 f"{'max/min':>9}")
    for label, h in histories.items():
        cols = [i for i, t in enumerate(h.layer_types) if t == "Conv2d"]
        g = np.array(h.layer_grad[0], dtype=np.float64)[cols]
        loss = h.losses[0] if h.losses[0] is not None else math.nan
        lines.append(f"{label:<14}  {loss:>7.3f}  {g[0]:>10.3e}  {g[-1]:>10.3e}  {g[0] / g[-1]:>10.2e}  "
                     f"{g.max() / g.min():>9.2e}")
    return "\n".join(lines)
