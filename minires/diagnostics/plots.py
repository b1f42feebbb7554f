"""Plots of gradient flow and training curves (matplotlib, no display needed).

Four figures, each saved as PNG (for READMEs) and SVG (for zooming):

* :func:`plot_depth_profile` -- gradient norm versus depth, plain and residual
  overlaid, at initialisation and after k steps;
* :func:`plot_heatmap` -- layer x step heatmap of the gradient norms of one run;
* :func:`plot_training_curves` -- loss, training error and test error of
  several runs overlaid (read from each run's ``metrics.jsonl``);
* :func:`plot_depth_sweep` -- first/last gradient ratio versus depth.

Figures are built with :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``: nothing is opened on screen, no global backend is switched
(the Agg renderer draws the PNG), and nothing leaks between calls. Files are
written atomically. Gradient norms span decades, so their axes are
logarithmic.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_bytes
from .monitor import GradientHistory

__all__ = ["save_figure", "plot_depth_profile", "plot_heatmap", "plot_training_curves", "plot_depth_sweep",
           "read_metrics"]

GRAD_LABEL = r"$\|\partial L / \partial W\|_2$ (log scale)"


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is an install requirement; say so clearly anyway
        raise ImportError("minires.diagnostics.plots needs matplotlib: pip install matplotlib") from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig: Any, stem: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (each atomically); returns both paths."""
    stem = Path(stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        # metadata without a date: the same figure gives the same SVG bytes.
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(buffer, format=fmt, metadata=metadata)
        path = stem.with_suffix("." + fmt)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Line styles: plain nets dashed, residual nets solid (the paper's thin vs bold); one colour per depth,
    so a plain net and its residual twin share a colour."""
    import re

    def depth_of(label: str) -> str:
        match = re.search(r"(\d+)", label)
        return match.group(1) if match else label

    depths: list[str] = []
    for label in labels:
        if depth_of(label) not in depths:
            depths.append(depth_of(label))
    return {label: {"linestyle": "--" if label.lower().startswith("plain") else "-",
                    "color": f"C{depths.index(depth_of(label)) % 10}"} for label in labels}


def _scale_for(values: Sequence[float]) -> str:
    """"log" when the finite positive values span more than a decade, else "linear"."""
    v = np.array([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=np.float64)
    return "log" if v.size and v.max() / v.min() > 10 else "linear"


def _positive(values: np.ndarray) -> np.ndarray:
    """Non-positive or missing values cannot go on a log axis: mask them."""
    out = np.array(values, dtype=np.float64)
    out[~(out > 0)] = np.nan
    return out


def plot_depth_profile(
    histories: Mapping[str, GradientHistory] | Sequence[GradientHistory],
    path: str | os.PathLike,
    after_step: int | None = None,
    kinds: Sequence[str] = ("Conv2d", "Linear"),
    title: str | None = None,
) -> list[Path]:
    """Weight-gradient norm of each layer against its depth, one line per model.

    Args:
        histories: ``{label: history}`` or a list (labelled by ``history.model``).
        path: output stem (``.png`` and ``.svg`` are written).
        after_step: the step of the second panel; ``None``: each history's last
            record. The first panel is each history's FIRST record (the
            gradient at the initial weights). With a single record, one panel.
        kinds: layer types to include (default conv and fc).
        title: the figure title.

    Returns:
        The two written paths.
    """
    if not isinstance(histories, Mapping):
        histories = {h.model: h for h in histories}
    if not histories:
        raise ValueError("plot_depth_profile needs at least one history")
    for label, h in histories.items():
        if not h.steps:
            raise ValueError(f"history {label!r} has no records")
    two = any(len(h.steps) > 1 for h in histories.values())
    fig = _figure(11 if two else 6.5, 4.2)
    axes = fig.subplots(1, 2 if two else 1, sharey=True, squeeze=False)[0]
    panels = [("first", axes[0])] + ([("later", axes[1])] if two else [])
    styles = _styles(list(histories))
    for which, ax in panels:
        steps_shown = set()
        for label, h in histories.items():
            if which == "first":
                index = 0
            else:
                index = len(h.steps) - 1 if after_step is None else h.index_of(after_step)
            steps_shown.add(h.steps[index])
            cols = [i for i, t in enumerate(h.layer_types) if t in kinds]
            grads = _positive(np.array(h.layer_grad[index], dtype=np.float64)[cols])
            depth = np.arange(1, len(cols) + 1)
            ax.plot(depth, grads, marker=".", markersize=3, label=label, **styles[label])
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = first conv, input side; last = fc)")
        shown = ", ".join(str(s) for s in sorted(steps_shown))
        if which == "first":
            # Step 0 is a probe at the initial weights (gradflow); step 1's gradient is too (compare).
            ax.set_title("at initialisation" if shown == "0" else f"at initialisation (gradient of step {shown})")
        else:
            ax.set_title(f"after training (step {shown})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel(GRAD_LABEL)
    fig.suptitle(title or "Weight-gradient norm versus depth: plain (dashed) vs residual (solid)")
    return save_figure(fig, path)


def plot_heatmap(history: GradientHistory, path: str | os.PathLike, kind: str = "layer",
                 title: str | None = None) -> list[Path]:
    """Layer-by-step heatmap of ``log10`` gradient norms of one run.

    Args:
        history: a recorded :class:`GradientHistory`.
        path: output stem.
        kind: "layer" (``||dL/dW||`` per layer) or "block_in" (``||dL/dx||`` per block).
        title: the figure title (default names the model).
    """
    if not history.steps:
        raise ValueError(f"history of {history.model} has no records")
    from matplotlib.colors import LogNorm

    values = _positive(history.grad_array(kind)).T  # (depth, records)
    names = history.layers if kind == "layer" else history.blocks
    if values.size == 0 or np.all(np.isnan(values)):
        raise ValueError(f"history of {history.model} has no finite positive {kind} gradients to plot")
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    steps = np.array(history.steps, dtype=np.float64)
    depth = np.arange(1, len(names) + 1)
    vmin, vmax = np.nanmin(values), np.nanmax(values)
    mesh = ax.pcolormesh(steps, depth, np.ma.masked_invalid(values), shading="nearest", cmap="viridis",
                         norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 1.0001)))
    what = r"$\|\partial L/\partial W\|_2$" if kind == "layer" else r"$\|\partial L/\partial x\|_2$ at block input"
    fig.colorbar(mesh, ax=ax, label=f"{what} (log colour scale)")
    ax.set_xlabel("training step (iterations)")
    ax.set_ylabel("layer index (1 = input side)" if kind == "layer" else "block index (1 = input side)")
    ax.set_title(title or f"{history.model}: gradient norm per {'layer' if kind == 'layer' else 'block'} and step")
    return save_figure(fig, path)


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (``run`` is the run directory or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (a run directory written by minires train/compare)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return rows


def plot_training_curves(runs: Mapping[str, str | os.PathLike | Sequence[dict]], path: str | os.PathLike,
                         title: str | None = None) -> list[Path]:
    """Training loss, training error and test error of several runs, overlaid.

    Args:
        runs: ``{label: run directory | metrics.jsonl path | list of metric rows}``.
        path: output stem.

    The x axis is the iteration count at the end of each epoch (the trainer's
    ``step`` column), so runs with different epoch lengths line up. Training
    error is the running average over each epoch's (augmented) batches, as the
    paper plots it; test error is measured after the epoch.
    """
    if not runs:
        raise ValueError("plot_training_curves needs at least one run")
    fig = _figure(13, 4.2)
    axes = fig.subplots(1, 3)
    panels = [("train_loss", "training loss (cross-entropy, nats)"), ("train_acc", "training error (%)"),
              ("test_acc", "test error (%)")]
    styles = _styles(list(runs))
    plotted: list[list[float]] = [[], [], []]
    for label, source in runs.items():
        rows = list(source) if isinstance(source, (list, tuple)) else read_metrics(source)
        if not rows:
            raise ValueError(f"run {label!r} has no metric rows yet")
        steps = [r["step"] for r in rows]
        for k, (ax, (key, ylabel)) in enumerate(zip(axes, panels)):
            if key.endswith("_acc"):
                values = [100.0 * (1.0 - r[key]) if r.get(key) is not None else math.nan for r in rows]
            else:
                values = [r[key] if r.get(key) is not None else math.nan for r in rows]
            plotted[k] += values
            ax.plot(steps, values, marker="o", markersize=3, label=label, **styles[label])
            ax.set_ylabel(ylabel)
    # The loss can fall by decades over a long run (log axis); a short run stays within one (linear).
    axes[0].set_yscale(_scale_for(plotted[0]))
    for ax in axes:
        ax.set_xlabel("iteration (end of epoch)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_title("training loss")
    axes[1].set_title("training error")
    axes[2].set_title("test error")
    fig.suptitle(title or "Training curves: plain (dashed) vs residual (solid)")
    return save_figure(fig, path)


def plot_depth_sweep(results: Any, path: str | os.PathLike, title: str | None = None) -> list[Path]:
    """First/last conv gradient ratio (and max/min spread) versus depth, one line per kind and BN setting.

    Args:
        results: a :class:`~minires.diagnostics.sweep.SweepResult` or a list of them
            (e.g. with and without batch norm).
        path: output stem.
    """
    if not isinstance(results, (list, tuple)):
        results = [results]
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for res in results:
        kinds = []
        for r in res.rows:
            if r.kind not in kinds:
                kinds.append(r.kind)
        for kind in kinds:
            rows = sorted((r for r in res.rows if r.kind == kind), key=lambda r: r.depth)
            label = f"{kind}, {'BN' if res.batch_norm else 'no BN'}"
            style = {"linestyle": "--" if kind == "plain" else "-", "marker": "o" if res.batch_norm else "s"}
            depths = [r.depth for r in rows]
            axes[0].plot(depths, _positive([r.ratio for r in rows]), label=label, **style)
            axes[1].plot(depths, _positive([r.spread for r in rows]), label=label, **style)
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel(r"$\|\partial L/\partial W_{first}\| \,/\, \|\partial L/\partial W_{last}\|$ (log scale)")
    axes[0].set_title("first conv / last conv gradient norm")
    axes[1].set_ylabel("max / min conv gradient norm (log scale)")
    axes[1].set_title("spread across all convs")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("depth (weighted layers)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or "Gradient spread across depth at initialisation (one fixed batch)")
    return save_figure(fig, path)
