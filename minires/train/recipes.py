"""Training recipes: the optimiser settings and learning-rate schedule of a run.

A recipe is the part of a training run that the paper (or a practitioner)
fixes before looking at any data: batch size, epochs, learning rate,
momentum, weight decay and the *shape* of the learning-rate schedule.

Schedules are stepped once per iteration and are written in fractions of the
total number of iterations ``T = epochs * batches_per_epoch``. The paper
states its CIFAR schedule in iterations (lr / 10 at 32k and 48k of 64k); as
fractions that is 50% and 75% of training. Keeping fractions means that a
short run (``--epochs 2 --limit-train 1000``) still has the same shape: a
high-lr phase, a drop, a lower drop, instead of never reaching a milestone.

``paper`` (He et al. 2016, section 4.2)
    SGD, momentum 0.9, weight decay 1e-4, batch 128, 164 epochs
    (64k iterations of 391 batches on the 50k training images),
    lr 0.1 divided by 10 at 50% and at 75% of the iterations.
    Networks of 110 layers or more start at lr 0.01: the paper found 0.1 too
    large to *start* converging ResNet-110, and warms up "until the training
    error is below 80% (about 400 iterations)". We use the fixed version,
    ``400 / 64000`` of the run (400 iterations for the full schedule), at
    ``0.1 * lr``, then the normal schedule.

``fast`` (a short schedule for quick experiments; not from the paper)
    SGD, Nesterov momentum 0.9, weight decay 5e-4, batch 128, 30 epochs,
    lr rising linearly from 0.1 * lr to lr over the first 5% of iterations,
    then a half cosine down to 0 over the rest. Why these choices:

    * cosine annealing has no milestones to tune and spends more time at
      mid-range learning rates than step decay, which suits short budgets;
    * the linear warm-up keeps the first few hundred updates at lr 0.1 from
      throwing the freshly initialised batch-norm statistics around;
    * a short schedule regularises less (fewer noisy high-lr epochs), so a
      stronger weight decay (5e-4, common for 30-epoch CIFAR schedules)
      makes up for it.

Both recipes take ``epochs``, ``batch_size`` and ``lr`` overrides; the
schedule stretches or shrinks to the new length.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..optim import SGD
from ..optim import lr_scheduler as sched

__all__ = ["Recipe", "RECIPES", "get_recipe", "names", "model_depth", "build_optimizer", "build_schedule"]


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of a training recipe (see the module docstring).

    Attributes:
        name: "paper" or "fast".
        epochs, batch_size, lr, momentum, weight_decay, nesterov: the defaults.
        description: one line for ``--help`` and logs.
    """

    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    description: str

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (stored in checkpoints)."""
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        "paper", epochs=164, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False,
        description="He et al. 2016: SGD 0.9, wd 1e-4, lr 0.1 /10 at 50% and 75% (warm-up at 0.01 for >= 110 layers)",
    ),
    "fast": Recipe(
        "fast", epochs=30, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True,
        description="30 epochs: Nesterov SGD 0.9, wd 5e-4, linear warm-up over 5% then cosine to 0",
    ),
}

# The paper's ResNet-110 warm-up: 400 of 64,000 iterations.
PAPER_WARMUP_FRACTION = 400 / 64000
PAPER_WARMUP_MAX_ITERS = 400
PAPER_WARMUP_MIN_DEPTH = 110
PAPER_MILESTONES = (0.5, 0.75)
FAST_WARMUP_FRACTION = 0.05


def names() -> list[str]:
    """The recipe names, for ``--recipe``."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The :class:`Recipe` called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes: {', '.join(names())}")
    return RECIPES[name]


def model_depth(model: Any) -> int:
    """The number of weighted layers of ``model`` (20 for ResNet-20).

    Read from the digits of ``model.arch`` ("resnet110" -> 110) when there is
    one, else counted: every parameter with two or more dimensions is one conv
    or linear layer (for the CIFAR nets, ``1 + 6n + 1 = 6n + 2``).
    """
    arch = getattr(model, "arch", None)
    if isinstance(arch, str):
        match = re.search(r"(\d+)$", arch)
        if match:
            return int(match.group(1))
    return sum(1 for p in model.parameters() if p.ndim >= 2)


def build_optimizer(model: Any, recipe: Recipe, lr: float) -> SGD:
    """SGD over all of ``model``'s parameters with the recipe's momentum and weight decay.

    Weight decay applies to every parameter, batch-norm scales and biases
    included, as in the paper's (Torch) implementation and PyTorch's default.
    """
    return SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
               nesterov=recipe.nesterov)


def build_schedule(optimizer: SGD, recipe: Recipe, total_steps: int, depth: int) -> sched.LRScheduler:
    """The recipe's per-iteration learning-rate schedule over ``total_steps`` iterations.

    Args:
        optimizer: its groups' ``lr`` is the peak learning rate.
        recipe: ``paper`` or ``fast``.
        total_steps: ``epochs * batches_per_epoch``, at least 1.
        depth: weighted layers of the model (:func:`model_depth`): the paper
            warms up networks of 110 layers or more.

    Returns:
        A scheduler to ``step()`` after every ``optimizer.step()``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if recipe.name == "paper":
        milestones = [int(round(f * total_steps)) for f in PAPER_MILESTONES]
        steps = sched.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        if depth < PAPER_WARMUP_MIN_DEPTH:
            return steps
        warmup = min(PAPER_WARMUP_MAX_ITERS, max(1, math.ceil(PAPER_WARMUP_FRACTION * total_steps)))
        # ConstantLR multiplies by 0.1 for `warmup` steps; chained with the
        # steps, the lr is 0.01 then 0.1, 0.01, 0.001 at the milestones.
        return sched.ChainedScheduler([sched.ConstantLR(optimizer, factor=0.1, total_iters=warmup), steps])
    if recipe.name == "fast":
        if total_steps < 2:
            return sched.CosineAnnealingLR(optimizer, T_max=1)
        warmup = min(total_steps - 1, max(1, math.ceil(FAST_WARMUP_FRACTION * total_steps)))
        return sched.SequentialLR(
            optimizer,
            [sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup),
             sched.CosineAnnealingLR(optimizer, T_max=total_steps - warmup)],
            milestones=[warmup],
        )
    raise ValueError(f"recipe {recipe.name!r} has no schedule")
