"""Diagnostics: look inside a network while it trains.

* :mod:`~minires.diagnostics.grad_norms`: per-layer gradient and weight norms,
  the quickest way to *see* gradients vanish in a deep plain network and
  survive in its residual twin (``minires train --grad-norms N``).
"""

from .grad_norms import GradNormRow, format_table, grad_norm_rows, print_table, read_jsonl, rows_to_records

__all__ = ["GradNormRow", "grad_norm_rows", "format_table", "print_table", "rows_to_records", "read_jsonl"]
