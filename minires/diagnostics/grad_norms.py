"""Per-layer gradient norms: is the signal reaching the early layers?

After ``loss.backward()`` every weight ``W`` holds ``dL/dW``. Its size,
layer by layer, shows the story of the ResNet paper directly: in a deep
*plain* network the chain rule multiplies many per-layer Jacobians, and the
gradient reaching the first layers can shrink by orders of magnitude; in the
residual twin the identity shortcuts give every layer a direct path to the
loss and the norms stay comparable from the first layer to the last.

For each layer this module reports these numbers:

* ``||grad W||``: the Frobenius (L2) norm of ``dL/dW``;
* ``||W||``: the norm of the weight itself;
* their ratio. Plain SGD changes ``W`` by ``lr * grad W``, so
  ``lr * ratio`` is roughly the *relative* size of one update;
* when the weights before the optimiser's step are known
  (:func:`with_updates`), the update-to-weight ratio ``||dW|| / ||W||`` of
  the step actually taken, momentum and weight decay included: about 1e-3
  is healthy, 1e-6 means the layer is effectively frozen, 1e-1 means it is
  being thrown around.

"One row per layer" means one row per weight tensor with two or more
dimensions (convolution and linear weights); batch-norm scales and biases are
left out by default because they are per-channel vectors whose norms say
little about depth. Pass ``weights_only=False`` to see every parameter.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, TextIO

from ..backend import get_array_module

__all__ = [
    "GradNormRow", "grad_norm_rows", "weights_before_update", "with_updates", "format_table", "print_table",
    "rows_to_records", "read_jsonl",
]


@dataclass(frozen=True)
class GradNormRow:
    """Norms of one parameter.

    Attributes:
        name: the parameter's name in ``model.named_parameters()``
            (``"layer1.0.conv1.weight"``).
        shape: the parameter's shape.
        grad_norm: ``||dL/dW||_2`` over all elements; ``nan`` when the
            parameter has no gradient (it did not take part in the loss).
        weight_norm: ``||W||_2``.
        update_norm: ``||W_after - W_before||_2`` of the optimiser step that
            followed (:func:`with_updates`); ``nan`` when not measured.
    """

    name: str
    shape: tuple[int, ...]
    grad_norm: float
    weight_norm: float
    update_norm: float = math.nan

    @property
    def update_ratio(self) -> float:
        """``||W_after - W_before|| / ||W_before||`` of one optimiser step (``nan`` when not measured).

        ``weight_norm`` is the norm before the step (the rows are measured then).
        """
        if math.isnan(self.update_norm) or self.weight_norm == 0.0:
            return math.nan
        return self.update_norm / self.weight_norm

    @property
    def ratio(self) -> float:
        """``grad_norm / weight_norm`` (``inf`` for an all-zero weight, ``nan`` without a gradient)."""
        if math.isnan(self.grad_norm):
            return math.nan
        if self.weight_norm == 0.0:
            return math.inf if self.grad_norm > 0 else 0.0
        return self.grad_norm / self.weight_norm


def _l2(array: Any) -> float:
    xp = get_array_module(array)
    # BLAS nrm2 scales as it goes, so huge or tiny values neither overflow nor
    # underflow in float32, and nothing is copied to float64.
    return float(xp.linalg.norm(array.ravel()))


def grad_norm_rows(model_or_named_parameters: Any, weights_only: bool = True) -> list[GradNormRow]:
    """Measure every layer's gradient and weight norm, in parameter order.

    Args:
        model_or_named_parameters: a Module (anything with
            ``named_parameters()``) or an iterable of ``(name, Tensor)`` pairs.
        weights_only: keep only parameters with ``ndim >= 2`` (conv and linear
            weights: one row per layer).

    Returns:
        One :class:`GradNormRow` per kept parameter, first layer first.
        Call after ``backward()`` and before ``optimizer.zero_grad()``.
    """
    rows = []
    for name, param in _named(model_or_named_parameters):
        if weights_only and param.ndim < 2:
            continue
        grad = param.grad
        grad_norm = math.nan if grad is None else _l2(grad)
        rows.append(GradNormRow(name, tuple(param.shape), grad_norm, _l2(param.data)))
    return rows


def weights_before_update(model_or_named_parameters: Any, weights_only: bool = True) -> dict[str, Any]:
    """Copies of the weights, by name, to pass to :func:`with_updates` after ``optimizer.step()``."""
    return {name: param.data.copy() for name, param in _named(model_or_named_parameters)
            if not weights_only or param.ndim >= 2}


def with_updates(rows: list[GradNormRow], model_or_named_parameters: Any, before: dict[str, Any]) -> list[GradNormRow]:
    """``rows`` with ``update_norm = ||W_now - before[name]||`` (the step just taken); others unchanged."""
    now = dict(_named(model_or_named_parameters))
    return [replace(r, update_norm=_l2(now[r.name].data - before[r.name])) if r.name in before else r
            for r in rows]


def _named(model_or_named_parameters: Any) -> Iterable:
    if hasattr(model_or_named_parameters, "named_parameters"):
        return model_or_named_parameters.named_parameters()
    return model_or_named_parameters


def format_table(rows: list[GradNormRow], title: str | None = None) -> str:
    """Render rows as a compact fixed-width table (one line per layer).

    Example::

        step 100
        layer                     ||grad W||        ||W||    ratio
        conv1.weight               2.113e-01   3.401e+00  6.2e-02
        ...
    """
    width = max([len("layer")] + [len(r.name) for r in rows])
    updates = any(not math.isnan(r.update_norm) for r in rows)  # the last column only when measured
    lines = [] if title is None else [title]
    lines.append(f"{'layer':<{width}}  {'||grad W||':>10}  {'||W||':>10}  {'ratio':>8}"
                 + (f"  {'update/W':>8}" if updates else ""))
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.grad_norm:>10.3e}  {r.weight_norm:>10.3e}  {r.ratio:>8.1e}"
                     + (f"  {r.update_ratio:>8.1e}" if updates else ""))
    return "\n".join(lines)


def print_table(
    rows: list[GradNormRow],
    title: str | None = None,
    file: TextIO | None = None,
    write: Callable[[str], None] | None = None,
) -> None:
    """Print :func:`format_table` to ``file`` (standard output by default).

    ``write``: a function that prints a block of text instead, e.g. one that
    uses ``tqdm.write`` so the table does not tear a progress bar (what
    ``minires train --grad-norms N`` passes).
    """
    text = format_table(rows, title)
    if write is not None:
        write(text)
    else:
        print(text, file=file if file is not None else sys.stdout, flush=True)


def rows_to_records(rows: list[GradNormRow]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: ``{"name", "shape", "grad_norm", "weight_norm", "ratio", "update_ratio"}``.

    ``nan``/``inf`` become ``None`` so that the output is strict JSON.
    """

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return [
        {
            "name": r.name,
            "shape": list(r.shape),
            "grad_norm": finite(r.grad_norm),
            "weight_norm": finite(r.weight_norm),
            "ratio": finite(r.ratio),
            "update_ratio": finite(r.update_ratio),
        }
        for r in rows
    ]


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``grad_norms.jsonl`` file: one ``{"step", "epoch", "layers": [...]}`` dict per line.

    A last line cut short by a crash is skipped (it can only be the last: every
    line is flushed whole before the next one starts).
    """
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON: {line[:80]!r}") from None
    return records
