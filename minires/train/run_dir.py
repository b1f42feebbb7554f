"""The run directory: its files, and the checks made before a run writes into it.

What ``--out runs/NAME`` holds::

    config.json        the resolved configuration (recipe defaults filled in)
    checkpoint.npz     the latest checkpoint (state.py, checkpoint.py)
    metrics.jsonl      one JSON object per epoch (metrics.py)
    metrics.csv        the same rows as CSV, for spreadsheets and pandas
    grad_norms.jsonl   with grad_norms=N: per-layer norms every N steps
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..atomic import atomic_write_bytes
from .config import ConfigError, TrainConfig

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "METRICS_JSONL", "METRICS_CSV", "GRAD_NORMS_NAME", "RUN_FILES",
           "prepare_out_dir", "start_run_dir", "write_config"]

CHECKPOINT_NAME = "checkpoint.npz"
CONFIG_NAME = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
GRAD_NORMS_NAME = "grad_norms.jsonl"
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_JSONL, METRICS_CSV, GRAD_NORMS_NAME)


def _check_writable(out: Path) -> None:
    """Refuse ``out`` unless it is a writable directory, or can be created below one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} exists and is not a directory")
    if out.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc})") from exc
        return
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"output directory {out} is not writable: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {out} is not writable: cannot create it in {parent}")


def prepare_out_dir(out_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can hold this run, before any work is done; change nothing on disk.

    * it must be a directory, or not exist yet below a writable directory
      (it is created only when the run starts, see :func:`start_run_dir`);
    * refuses to start a fresh run where a checkpoint already exists, unless
      ``overwrite`` or ``resume``;
    * with ``resume``, insists that there is a checkpoint to resume.

    Nothing is deleted here: with ``overwrite`` the previous run's files go
    only when the new run has passed every check and is about to write its
    own (a mistyped flag must not cost a finished run).

    Returns the absolute path; raises :class:`ConfigError` naming the directory and the fix.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    _check_writable(out)
    ckpt = out / CHECKPOINT_NAME
    if resume:
        if not ckpt.is_file():
            raise ConfigError(f"--resume: there is no checkpoint to resume in {out} (expected {ckpt.name})")
    elif ckpt.exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({ckpt.name}); pass --resume to continue it or --overwrite to "
            "start again from scratch (its files will be replaced)"
        )
    return out


def start_run_dir(out: Path, overwrite: bool) -> None:
    """Create the run directory ``out`` for a fresh run; with ``overwrite``, delete the previous run's files.

    The trainer calls this after every check has passed (configuration,
    data, model), just before the new run writes its first file.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out} ({exc.strerror or exc})") from exc
    if overwrite:
        for name in RUN_FILES:
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass


def write_config(out: Path, config: TrainConfig) -> None:
    """Write ``config.json`` (atomically)."""
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(config.to_dict(), indent=2) + "\n").encode())
