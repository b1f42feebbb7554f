"""Resuming a run: read its checkpoint, check it belongs to THIS run, load it into the live objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..nn import init
from .checkpoint import CheckpointError, load_checkpoint
from .config import RUN_DEFINING, TrainConfig
from .state import TrainingState

__all__ = ["read_training_state", "check_same_run", "load_into"]


def read_training_state(path: str | os.PathLike) -> TrainingState:
    """The :class:`TrainingState` saved in ``path``; :class:`CheckpointError` if damaged or not a training run."""
    return TrainingState.from_dict(load_checkpoint(path), path)


def check_same_run(state: TrainingState, config: TrainConfig, steps_per_epoch: int, path: Path) -> None:
    """Refuse a checkpoint made with other run-defining settings or another training-set size."""
    theirs, ours = state.config, config
    diffs = [f"{k}: checkpoint {getattr(theirs, k)!r}, now {getattr(ours, k)!r}"
             for k in RUN_DEFINING if getattr(theirs, k) != getattr(ours, k)]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run; resuming would not continue it:\n  " + "\n  ".join(diffs)
        )
    if state.steps_per_epoch != steps_per_epoch:
        raise CheckpointError(
            f"checkpoint {path} was made with {state.steps_per_epoch} steps per epoch, this data gives "
            f"{steps_per_epoch}: the training set differs"
        )


def load_into(state: TrainingState, *, model: Any, optimizer: Any, scheduler: Any, train_loader: Any,
              path: Path) -> None:
    """Copy the saved state into the model, optimizer, schedule, data loader and the init generator."""
    try:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        train_loader.load_state_dict(state.loader_rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {exc}") from exc
    init.default_generator().bit_generator.state = state.init_rng
