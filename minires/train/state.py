"""What a checkpoint holds, typed: the run's position and every piece of state needed to continue it.

Exact resumption: a run stopped after any completed step and resumed ends
with bit-for-bit the same parameters as a run that never stopped (CPU
backend), because every piece of state is saved or a pure function of saved
integers:

* parameters, batch-norm running statistics: ``model.state_dict()``;
* momentum buffers: ``optimizer.state_dict()``;
* the learning rate: a closed-form function of the step count (``scheduler.state_dict()``);
* the data order and the augmentation: functions of ``(seed, epoch, batch)``
  in :class:`~minires.data.DataLoader`, so the loader state is three integers;
* the initialisation generator (``minires.nn.init``), saved for completeness.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..tensor import Tensor
from . import recipes
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig

__all__ = ["CHECKPOINT_KIND", "EpochProgress", "TrainingState"]

CHECKPOINT_KIND = "minires-training-run"

# What a training checkpoint must hold, checked before resuming from it.
_REQUIRED = {
    "config": dict, "steps_per_epoch": int, "model": dict, "optimizer": dict, "scheduler": dict,
    "rng": dict, "epoch": int, "global_step": int, "finished": bool, "metrics": list,
}
_PROGRESS_KEYS = {"batch", "loss_sum", "correct", "seen", "train_seconds"}


@dataclass
class EpochProgress:
    """How far the current epoch has got: batches done, running sums of loss and correct predictions.

    During the epoch the sums are 0-d arrays on the device: reading them
    (``float``) forces a GPU sync, so that happens only for the progress bar,
    at the end of the epoch, and when a checkpoint is written.
    """

    batch: int = 0  # batches done in this epoch
    loss_sum: Any = 0.0  # sum over the examples seen of their loss
    correct: Any = 0
    seen: int = 0  # examples seen
    train_seconds: float = 0.0  # training time so far (evaluation excluded)

    def add_batch(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Count one training batch: its mean ``loss``, ``logits`` ``(B, classes)`` and ``labels`` ``(B,)``."""
        n = labels.shape[0]
        # float64 for a sum over hundreds of batches; one scalar per step.
        self.loss_sum = self.loss_sum + loss.data.astype(np.float64) * n
        self.correct = self.correct + (logits.data.argmax(axis=1) == labels.data).sum()
        self.seen += n
        self.batch += 1

    def averages(self) -> tuple[float, float]:
        """``(mean loss, accuracy)`` over the batches so far; ``nan`` before the first."""
        if self.seen == 0:
            return math.nan, math.nan
        return float(self.loss_sum) / self.seen, int(self.correct) / self.seen

    def to_dict(self) -> dict[str, Any]:
        return {"batch": int(self.batch), "loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "seen": int(self.seen), "train_seconds": float(self.train_seconds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EpochProgress":
        return cls(batch=int(data["batch"]), loss_sum=data["loss_sum"], correct=data["correct"], seen=data["seen"],
                   train_seconds=float(data["train_seconds"]))


@dataclass
class TrainingState:
    """Everything a training checkpoint holds (:meth:`to_dict` is the file's layout)."""

    config: TrainConfig  # resolved: the recipe's defaults filled in
    epoch: int  # completed epochs
    global_step: int  # completed optimisation steps
    total_steps: int
    steps_per_epoch: int
    finished: bool
    partial_epoch: EpochProgress | None  # where the run stopped inside an epoch; None between epochs
    model: dict  # model.state_dict(): parameters and batch-norm running statistics, host arrays
    optimizer: dict  # optimizer.state_dict(): momentum buffers, param groups
    scheduler: dict  # the lr schedule's position
    loader_rng: dict  # the training DataLoader's (seed, epoch, batch)
    init_rng: dict  # the state of minires.nn.init's generator
    metrics: list[dict]  # one metrics row per completed epoch

    def to_dict(self) -> dict[str, Any]:
        """The nested dict written by :func:`~minires.train.checkpoint.save_checkpoint`."""
        return {
            "kind": CHECKPOINT_KIND,
            "minires_version": __version__,
            "config": self.config.to_dict(),
            "recipe": recipes.get_recipe(self.config.recipe).to_dict(),  # for readers of the file
            "epoch": self.epoch,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": self.finished,
            "partial_epoch": None if self.partial_epoch is None else self.partial_epoch.to_dict(),
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "rng": {"loader": self.loader_rng, "init": self.init_rng},
            "metrics": list(self.metrics),
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], path: str | os.PathLike) -> "TrainingState":
        """The state in a loaded checkpoint; :class:`CheckpointError` naming ``path`` and every bad entry."""
        if saved.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} is not a training checkpoint (kind {saved.get('kind')!r})")
        # The SHA-256 proves the file is what was saved, not that it was saved
        # by this code: a hand-made or foreign file gets a clear error here
        # instead of a KeyError half-way through resuming.
        wrong = _malformed_entries(saved)
        if wrong:
            raise CheckpointError(f"checkpoint {path} lacks or has malformed entries: {', '.join(wrong)}")
        try:
            config = TrainConfig.from_dict(saved["config"])
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} holds an unusable configuration: {exc}") from exc
        part = saved["partial_epoch"]
        return cls(
            config=config, epoch=int(saved["epoch"]), global_step=int(saved["global_step"]),
            total_steps=int(saved.get("total_steps", 0)), steps_per_epoch=saved["steps_per_epoch"],
            finished=bool(saved["finished"]), partial_epoch=None if part is None else EpochProgress.from_dict(part),
            model=saved["model"], optimizer=saved["optimizer"], scheduler=saved["scheduler"],
            loader_rng=saved["rng"]["loader"], init_rng=saved["rng"]["init"], metrics=list(saved["metrics"]),
        )


def _malformed_entries(saved: dict[str, Any]) -> list[str]:
    """Descriptions of the entries of ``saved`` that are missing or of the wrong type."""
    wrong = [f"{key!r} (expected {kind.__name__})" for key, kind in _REQUIRED.items()
             if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool) and kind is int]
    wrong += [f"'rng'[{key!r}] (expected dict)" for key in ("init", "loader")
              if isinstance(saved.get("rng"), dict) and not isinstance(saved["rng"].get(key), dict)]
    part = saved.get("partial_epoch")
    if part is not None and not (isinstance(part, dict) and _PROGRESS_KEYS <= set(part)):
        wrong.append(f"'partial_epoch' (expected None or a dict with {sorted(_PROGRESS_KEYS)})")
    return wrong
