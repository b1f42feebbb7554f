"""Divergence: a NaN or infinite loss stops training, and ruined weights are never saved.

A learning rate far too high makes the loss NaN or infinite, and the weights
with it; training on is pointless, and saving them would replace the last
good checkpoint with garbage. The trainer feeds every training loss to a
:class:`LossWatch`, which raises :class:`TrainingDiverged` (naming the epoch,
batch, step and loss) at the first non-finite one, and checks the weights
with :func:`non_finite_arrays` before every save.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import backend

__all__ = ["TrainingDiverged", "LossWatch", "non_finite_arrays", "weights_diverged"]


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss (or weights): it stopped, and no
    checkpoint was written with the ruined weights.

    Attributes:
        epoch: the epoch it happened in, counted from 1 as in the logs.
        batch: the batch within that epoch, from 1.
        step: the global optimisation step, from 1.
        loss: the non-finite training loss of that step; ``None`` when every
            loss was finite but the last update left non-finite weights.
    """

    def __init__(self, message: str, *, epoch: int, batch: int, step: int, loss: float | None) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.step, self.loss = epoch, batch, step, loss


class LossWatch:
    """Training losses not yet checked for NaN/inf, read from the device in groups.

    Reading a loss is free on the CPU, so there every step is checked
    (``check_every=1``) and a diverged run stops at once. On a GPU a read waits
    for all queued work (a sync), so losses wait on the device and are read in
    one transfer every ``check_every`` steps.

    Args:
        check_every: how many losses to collect before reading them.
        advice: returns the sentence appended to the error (what is kept on disk, what to change).
    """

    def __init__(self, check_every: int, advice: Callable[[], str]) -> None:
        self.check_every = check_every
        self._advice = advice
        self._pending: list[tuple[int, int, int, Any]] = []  # (epoch, batch, step, 0-d loss array)

    def add(self, epoch: int, batch: int, step: int, loss: Any) -> None:
        """Queue the loss array of one step (epoch and batch counted from 1); check when enough are queued."""
        self._pending.append((epoch, batch, step, loss))
        if len(self._pending) >= self.check_every:
            self.check()

    def check(self) -> None:
        """Read the queued losses; raise :class:`TrainingDiverged` naming the first non-finite one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = [loss for *_, loss in pending]
        xp = backend.get_array_module(*losses)
        values = backend.to_device(xp.stack(losses), backend.cpu)  # shape (len(pending),)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            epoch, batch, step, _ = pending[bad[0]]
            loss = float(values[bad[0]])
            raise TrainingDiverged(
                f"training diverged: the training loss is {loss} at epoch {epoch}, batch {batch} (step {step}). "
                + self._advice(),
                epoch=epoch, batch=batch, step=step, loss=loss,
            )


def non_finite_arrays(model_state: dict, optimizer_state: dict) -> list[str]:
    """Names of the arrays in a model and an optimizer ``state_dict()`` that hold NaN or inf.

    Both state dicts are host copies, so this reads no device memory.
    """
    bad = [name for name, array in model_state.items()
           if array.dtype.kind == "f" and not np.isfinite(array).all()]
    for index, entries in optimizer_state["state"].items():
        for name, array in entries.items():
            if isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.isfinite(array).all():
                bad.append(f"the optimizer's {name} of parameter {index}")
    return bad


def weights_diverged(bad: list[str], *, epoch: int, batch: int, step: int, advice: str) -> TrainingDiverged:
    """The error for non-finite weights (``bad`` from :func:`non_finite_arrays`) after finite losses."""
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return TrainingDiverged(
        f"training diverged: after step {step} (epoch {epoch}, batch {batch}) NaN or inf "
        f"appeared in {shown}, although every training loss was finite. {advice}",
        epoch=epoch, batch=batch, step=step, loss=None,
    )
