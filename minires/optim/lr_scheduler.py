"""Learning-rate schedules: change each parameter group's ``lr`` as training goes on.

A scheduler counts its own steps (``last_epoch``, PyTorch's name, although
the unit is whatever you step it by) and, after each ``step()``, writes the
learning rate for the current count into ``optimizer.param_groups[i]["lr"]``.
Whether a step is an epoch or an iteration is up to the caller: the paper's
CIFAR recipe is stated in iterations (lr 0.1, divided by 10 at 32k and 48k
iterations), so the trainer steps per iteration::

    sched = MultiStepLR(opt, milestones=[32000, 48000], gamma=0.1)
    for x, y in batches:
        loss = ...; loss.backward(); opt.step(); opt.zero_grad()
        sched.step()                  # after opt.step(), as in PyTorch

ResNet-110's warm-up (lr 0.01 for about 400 iterations, then 0.1) is a
ConstantLR chained with the steps::

    sched = ChainedScheduler([ConstantLR(opt, factor=0.1, total_iters=400),
                              MultiStepLR(opt, milestones=[32000, 48000])])

Every schedule here is a CLOSED FORM ``lr = f(base_lr, t)`` (PyTorch's
``_get_closed_form_lr``), with ``base_lr`` the group's ``initial_lr``. Unlike
PyTorch's recursive updates (which multiply the current lr by a ratio and so
depend on the path), the lr after ``t`` steps depends only on ``t``: resuming
from a checkpoint cannot drift, and two schedules compose by feeding one's
output to the next as its base (ChainedScheduler) or by handing over at a
milestone (SequentialLR). The sequences equal PyTorch's. A consequence: a
manual change of ``group["lr"]`` is overwritten at the next ``step()``.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from typing import Any, Sequence

import numpy as np

from .sgd import Optimizer

__all__ = [
    "LRScheduler", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "CosineAnnealingLR",
    "SequentialLR", "ChainedScheduler",
]


def _non_negative_int(value: Any, name: str, positive: bool = False) -> int:
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}")
    return int(value)


class LRScheduler:
    """Base class: subclasses define :meth:`lr_at`, the closed form ``f(base_lr, t)``.

    Args:
        optimizer: the optimiser whose groups' ``lr`` this scheduler sets.
        last_epoch: ``-1`` to start fresh (the group's current ``lr`` becomes
            its ``initial_lr``); the constructor then takes the first step,
            so ``last_epoch`` is 0 and the lr is ``f(base_lr, 0)``.

    Attributes:
        base_lrs: one base lr per group (the groups' ``initial_lr``).
        last_epoch: how many times ``step()`` has been called since construction.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a minires Optimizer")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, (int, np.integer)) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                # setdefault: when several schedulers share an optimiser they
                # all see the ORIGINAL lr as their base, not each other's output.
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"param_groups[{i}] has no 'initial_lr' to resume from (last_epoch={last_epoch})")
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self.step()

    def lr_at(self, base_lr: float, t: int) -> float:
        """The learning rate after ``t`` steps for a group whose base lr is ``base_lr``."""
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """The learning rates for the current ``last_epoch``, one per group."""
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        """The learning rates this scheduler last wrote into the optimiser."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one step (an epoch or an iteration, as you choose) and set the groups' lr."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    # -- saving and loading ------------------------------------------------------------

    def _own_state(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimiser: the step count, base lrs and the hyperparameters."""
        return self._own_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` and set the optimiser's lr to match.

        The keys must be exactly this scheduler's (a MultiStepLR state cannot
        be loaded into a CosineAnnealingLR) and there must be one base lr per
        parameter group.
        """
        self._check_state(state_dict)
        self.__dict__.update(copy.deepcopy({k: v for k, v in state_dict.items() if k != "_schedulers"}))
        self._apply()

    def _check_state(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"a scheduler state_dict must be a dict, got {type(state_dict).__name__}")
        expected = set(self.state_dict())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise ValueError(
                f"cannot load this state into {type(self).__name__}: missing keys {missing}, unexpected keys "
                f"{unexpected} (was it saved from another kind of scheduler?)"
            )
        groups = len(self.optimizer.param_groups)
        if len(state_dict["base_lrs"]) != groups:
            raise ValueError(
                f"the state has {len(state_dict['base_lrs'])} base learning rates but the optimizer has {groups} groups"
            )


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps: ``base * gamma ** (t // step_size)``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = _non_negative_int(step_size, "step_size", positive=True)
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone: ``base * gamma ** (#milestones <= t)``.

    The paper's schedule: ``MultiStepLR(opt, milestones=[32000, 48000], gamma=0.1)``
    stepped per iteration (lr 0.1 -> 0.01 -> 0.001). A milestone listed twice
    counts twice, as in PyTorch.
    """

    def __init__(
        self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.milestones = sorted(_non_negative_int(m, "each milestone") for m in milestones)
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** bisect_right(self.milestones, t)


class ConstantLR(LRScheduler):
    """``base * factor`` for the first ``total_iters`` steps, then ``base``.

    With ``factor=0.1, total_iters=400`` and base lr 0.1 this is ResNet-110's
    warm-up: lr 0.01 for 400 iterations, then 0.1.
    """

    def __init__(
        self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1
    ) -> None:
        if not 0 <= factor <= 1:
            raise ValueError(f"factor must be in [0, 1], got {factor!r}")
        self.factor = float(factor)
        self.total_iters = _non_negative_int(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return base_lr * (self.factor if t < self.total_iters else 1.0)


class LinearLR(LRScheduler):
    """Linear warm-up (or decay) of the factor from ``start_factor`` to ``end_factor``.

    ``lr = base * (start + (end - start) * min(t, total_iters) / total_iters)``;
    after ``total_iters`` steps the factor stays at ``end_factor``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = _non_negative_int(total_iters, "total_iters", positive=True)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        progress = min(t, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from ``base`` down to ``eta_min`` over ``T_max`` steps.

    ``lr = eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2``. As in
    PyTorch the formula keeps going past ``T_max`` (the lr climbs back up);
    stop stepping, or hand over with :class:`SequentialLR`, at ``T_max``.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1  # noqa: N803 (torch's name)
    ) -> None:
        self.T_max = _non_negative_int(T_max, "T_max", positive=True)
        if not eta_min >= 0:
            raise ValueError(f"eta_min must be >= 0, got {eta_min!r}")
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, t: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


def _check_children(owner: str, optimizer: Optimizer, schedulers: Sequence[LRScheduler]) -> list[LRScheduler]:
    schedulers = list(schedulers)
    if not schedulers:
        raise ValueError(f"{owner} needs at least one scheduler")
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{owner}: item {i} is a {type(s).__name__}, not a scheduler")
        if s.optimizer is not optimizer:
            raise ValueError(f"{owner}: scheduler {i} ({type(s).__name__}) drives a different optimizer")
    return schedulers


class _Composite(LRScheduler):
    """Shared saving/loading of the schedulers that contain other schedulers."""

    _schedulers: list[LRScheduler]

    def state_dict(self) -> dict[str, Any]:
        state = self._own_state()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_state(state_dict)
        if len(state_dict["_schedulers"]) != len(self._schedulers):
            raise ValueError(
                f"the state holds {len(state_dict['_schedulers'])} schedulers, this one {len(self._schedulers)}"
            )
        for s, sub in zip(self._schedulers, state_dict["_schedulers"]):
            s.load_state_dict(sub)
        super().load_state_dict(state_dict)


class SequentialLR(_Composite):
    """Run ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]``, ...

    Each scheduler counts from 0 when it takes over (PyTorch's semantics), so
    ``SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=5), CosineAnnealingLR(opt, T_max=95)],
    milestones=[5])`` warms up for 5 steps and then anneals over the next 95.
    Step only this object, not the schedulers inside it.
    """

    def __init__(
        self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int], last_epoch: int = -1
    ) -> None:
        self._schedulers = _check_children("SequentialLR", optimizer, schedulers)
        milestones = [_non_negative_int(m, "each milestone") for m in milestones]
        if len(milestones) != len(self._schedulers) - 1:
            raise ValueError(
                f"SequentialLR needs one milestone fewer than schedulers, got {len(self._schedulers)} "
                f"schedulers and {len(milestones)} milestones"
            )
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self._milestones = milestones
        super().__init__(optimizer, last_epoch)

    def _active(self, t: int) -> tuple[LRScheduler, int]:
        """The scheduler in charge at step ``t`` and ``t`` on its own clock."""
        idx = bisect_right(self._milestones, t)
        start = self._milestones[idx - 1] if idx > 0 else 0
        return self._schedulers[idx], t - start

    def lr_at(self, base_lr: float, t: int) -> float:
        scheduler, local_t = self._active(t)
        return scheduler.lr_at(base_lr, local_t)

    def _apply(self) -> None:
        super()._apply()
        # Keep the active scheduler's own counters readable (informational only).
        scheduler, local_t = self._active(self.last_epoch)
        scheduler.last_epoch = local_t
        scheduler._last_lr = list(self._last_lr)

class ChainedScheduler(_Composite):
    """Apply several schedules at once, each one's output being the next one's base lr.

    For multiplicative schedules (StepLR, MultiStepLR, ConstantLR, LinearLR,
    CosineAnnealingLR with ``eta_min=0``) the lr is ``base * product of
    factors``, the same as PyTorch's ChainedScheduler. Step only this object.

    Args:
        schedulers: the schedules, applied in order; they must share one optimiser.
        optimizer: optional, must be theirs if given.
    """

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None) -> None:
        schedulers = list(schedulers)
        if optimizer is None and schedulers:
            optimizer = schedulers[0].optimizer
        self._schedulers = _check_children("ChainedScheduler", optimizer, schedulers)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, t: int) -> float:
        lr = base_lr
        for s in self._schedulers:
            lr = s.lr_at(lr, t)
        return lr

    def _apply(self) -> None:
        super()._apply()
        for s in self._schedulers:
            s.last_epoch = self.last_epoch
            s._last_lr = list(self._last_lr)
