"""Diagnostics: look inside a network while it trains.

* :mod:`~minires.diagnostics.grad_norms`: per-layer gradient and weight norms,
  the quickest way to *see* gradients vanish in a deep plain network and
  survive in its residual twin (``minires train --grad-norms N``).
* :mod:`~minires.diagnostics.monitor`: :class:`GradientMonitor` records, step by
  step, the gradient norm of every layer's weights and the gradient arriving at
  every block's input and output.
* :mod:`~minires.diagnostics.sweep`: :func:`depth_sweep`, first/last layer
  gradient ratio of plain and residual nets across depths, at initialisation.
* :mod:`~minires.diagnostics.plots`: the figures (imports matplotlib when used).
* :mod:`~minires.diagnostics.compare`: plain versus residual side by side
  (what ``minires compare`` and ``minires gradflow`` report).

Nothing here trains a model: the training code imports diagnostics, never
the other way round.
"""

from .grad_norms import (
    GradNormRow,
    format_table,
    grad_norm_rows,
    print_table,
    read_jsonl,
    rows_to_records,
    weights_before_update,
    with_updates,
)
from .monitor import GradientHistory, GradientMonitor, MonitorCallback, load_history, save_history
from .sweep import SweepResult, SweepRow, depth_sweep, without_batch_norm

__all__ = [
    "GradNormRow", "grad_norm_rows", "weights_before_update", "with_updates", "format_table", "print_table",
    "rows_to_records", "read_jsonl",
    "GradientMonitor", "GradientHistory", "MonitorCallback", "save_history", "load_history",
    "depth_sweep", "SweepResult", "SweepRow", "without_batch_norm",
]
