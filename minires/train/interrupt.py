"""Ctrl-C during training: finish the current step, save a checkpoint, then stop.

The first Ctrl-C (SIGINT) only sets a flag that the trainer checks between
steps, so an update is never cut in half; the trainer then saves a
checkpoint (with the position inside the epoch) and raises
``KeyboardInterrupt``. A second Ctrl-C stops at once: a half-done step
cannot be saved consistently, so the checkpoint already on disk is kept.

On several processes the stop is agreed: every rank stops after the same
step, saves, and raises :class:`StoppedTogether`, so each may simply exit;
no rank is left waiting for another.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

__all__ = ["StopRequest", "StoppedTogether"]


class StoppedTogether(KeyboardInterrupt):
    """Training stopped (Ctrl-C) after the same step on every rank, and the checkpoint is saved."""


class StopRequest:
    """While entered, turn the first SIGINT into ``requested = True``; the second raises ``KeyboardInterrupt``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.requested = False
        self._say = say
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._say("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)")

    def __enter__(self) -> "StopRequest":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
