"""The metrics files: one row per epoch in metrics.jsonl and metrics.csv, gradient norms in grad_norms.jsonl."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write_bytes
from ..diagnostics import GradNormRow, read_jsonl, rows_to_records
from .run_dir import METRICS_CSV, METRICS_JSONL

__all__ = ["metric_columns", "write_metrics", "append_jsonl", "log_grad_norms", "trim_grad_norm_log"]


def metric_columns(with_validation: bool) -> list[str]:
    """The columns of ``metrics.csv`` (and keys of each ``metrics.jsonl`` row), in order.

    ``epoch`` counts from 1; ``step`` is the global iteration count at the end
    of the epoch; ``lr`` is the learning rate of the epoch's last step;
    ``train_loss``/``train_acc`` average over the epoch's (augmented) batches
    as the weights changed; accuracies are fractions in [0, 1];
    ``images_per_sec`` is training throughput (evaluation excluded);
    ``epoch_seconds`` is the training time of the epoch.
    """
    cols = ["epoch", "step", "lr", "train_loss", "train_acc"]
    if with_validation:
        cols += ["val_loss", "val_acc"]
    return cols + ["test_loss", "test_acc", "images_per_sec", "epoch_seconds"]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_metrics(out_dir: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from ``rows``, each file atomically.

    Rewriting everything (a few hundred rows at most) instead of appending
    means a crash can never leave a half-written line, and a resumed run
    that repeats an epoch cannot duplicate its row.
    """
    jsonl = "".join(json.dumps({c: row.get(c) for c in columns}) + "\n" for row in rows)
    atomic_write_bytes(out_dir / METRICS_JSONL, jsonl.encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    atomic_write_bytes(out_dir / METRICS_CSV, buffer.getvalue().encode("utf-8"))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsync-ed: a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def log_grad_norms(path: Path, rows: list[GradNormRow], *, step: int, epoch: int, lr: float, loss: float) -> None:
    """Append one step's layer rows (:func:`~minires.diagnostics.grad_norm_rows`) to ``grad_norms.jsonl``."""
    append_jsonl(path, {"step": step, "epoch": epoch, "lr": lr, "loss": loss, "layers": rows_to_records(rows)})


def trim_grad_norm_log(path: Path, last_step: int) -> None:
    """Drop the records after ``last_step``: on resume, those steps run again and log again."""
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
