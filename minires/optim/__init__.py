"""Optimisers and learning-rate schedules.

``SGD`` (PyTorch's exact update rule, the paper's optimiser) and the
schedules in :mod:`minires.optim.lr_scheduler` (``MultiStepLR`` for the
paper's /10 steps, ``CosineAnnealingLR``, warm-ups, and ways to chain them).
"""

from . import lr_scheduler
from .sgd import SGD, Optimizer

__all__ = ["Optimizer", "SGD", "lr_scheduler"]
