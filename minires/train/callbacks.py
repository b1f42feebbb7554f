"""Callback: hooks into the training loop (after every step, after every epoch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Hooks into :meth:`Trainer.fit`; override the methods you need.

    A ``KeyboardInterrupt`` raised from ``on_step_end`` stops training like
    Ctrl-C: a checkpoint is saved first, so the run can be resumed exactly.
    """

    def on_step_end(self, trainer: "Trainer") -> None:
        """After every optimisation step (``trainer.global_step`` already counts it)."""

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None:
        """After the epoch's metrics row is written and its checkpoint saved."""
