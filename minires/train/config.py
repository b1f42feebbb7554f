"""TrainConfig: everything that defines a training run, checked before any work is done."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .. import models
from ..nn import init
from . import recipes

__all__ = ["ConfigError", "TrainConfig", "RUN_DEFINING", "CIFAR10_TRAIN_SIZE", "build_model"]

CIFAR10_TRAIN_SIZE = 50000

# Changing any of these changes the trained parameters, so a resumed run must keep them.
RUN_DEFINING = (
    "model", "model_kwargs", "recipe", "epochs", "batch_size", "lr", "seed",
    "limit_train", "limit_test", "val_split", "augment", "sync_bn",
)


class ConfigError(ValueError):
    """A training configuration that cannot work (unknown model, impossible
    batch size, unusable output directory, ...), detected before any work."""


def _check_count(name: str, value: Any, *, optional: bool = True, zero_ok: bool = False) -> None:
    """Refuse ``value`` unless it is an integer >= 1 (>= 0 with ``zero_ok``; ``None`` passes when ``optional``)."""
    if value is None and optional:
        return
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a non-negative" if zero_ok else "a positive"
        raise ConfigError(f"{name} must be {kind} integer, got {value!r}")


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    ``epochs``, ``batch_size`` and ``lr`` left as ``None`` take the recipe's
    values (:meth:`resolved`). Fields named in :data:`RUN_DEFINING` must be
    the same when a run is resumed; the others (device, data location,
    logging) may change between sessions.

    Attributes:
        model: a name from ``minires.models.names()`` ("resnet20").
        model_kwargs: extra constructor arguments (``{"depth": 8, "width": 8}``
            for ``resnet_cifar``).
        recipe: "paper" or "fast" (:mod:`minires.train.recipes`).
        epochs, batch_size, lr: overrides of the recipe.
        seed: fixes initialisation, data order, augmentation, validation split.
        device: "auto", "cpu", "cuda" or "cuda:N".
        data_dir: the directory holding ``cifar-10-batches-py`` (None: default).
        limit_train: train on the first K training images only.
        limit_test: evaluate on the first K test images only.
        val_split: hold out this many random training images for validation
            (the paper uses 5000); 0 for none.
        augment: random crop with 4-pixel padding and horizontal flips.
        sync_bn: on more than one process, batch norm uses the statistics of
            the whole global batch (:class:`minires.distributed.SyncBatchNorm`)
            instead of each rank's part; no effect on one process.
        grad_norms: every N steps, log per-layer gradient norms (0: never).
        eval_batch_size: batch size for evaluation (memory, not results).
        prefetch: batches prepared ahead on a background thread.
    """

    model: str = "resnet20"
    model_kwargs: dict = field(default_factory=dict)
    recipe: str = "paper"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    val_split: int = 0
    augment: bool = True
    sync_bn: bool = False
    grad_norms: int = 0
    eval_batch_size: int = 256
    prefetch: int = 1

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's epochs / batch size / lr filled in, after :meth:`validate`."""
        self.validate()
        recipe = recipes.get_recipe(self.recipe)
        return replace(
            self,
            model_kwargs=dict(self.model_kwargs),
            epochs=recipe.epochs if self.epochs is None else int(self.epochs),
            batch_size=recipe.batch_size if self.batch_size is None else int(self.batch_size),
            lr=recipe.lr if self.lr is None else float(self.lr),
        )

    def validate(self) -> None:
        """Check every field; :class:`ConfigError` names the first bad one and its value."""
        if not isinstance(self.model, str) or self.model not in models.names():
            raise ConfigError(f"unknown model {self.model!r}; valid models: {', '.join(models.names())}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")
        if self.recipe not in recipes.names():
            raise ConfigError(f"unknown recipe {self.recipe!r}; valid recipes: {', '.join(recipes.names())}")
        for name in ("epochs", "batch_size", "limit_train", "limit_test"):
            _check_count(name, getattr(self, name))
        for name in ("seed", "val_split", "grad_norms"):
            _check_count(name, getattr(self, name), optional=False, zero_ok=True)
        _check_count("eval_batch_size", self.eval_batch_size, optional=False)
        _check_count("prefetch", self.prefetch, optional=False, zero_ok=True)
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                               or not (lr > 0 and math.isfinite(lr))):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {self.device!r}")

    def expected_train_size(self, full_size: int = CIFAR10_TRAIN_SIZE) -> int:
        """Training examples this config will use when the full training set has ``full_size``."""
        available = full_size - self.val_split
        return available if self.limit_train is None else min(self.limit_train, available)

    def check_sizes(self, full_size: int = CIFAR10_TRAIN_SIZE) -> None:
        """Refuse splits, limits and batch sizes that cannot work with ``full_size`` training images.

        The training loader drops its last incomplete batch, so the batch size
        must not exceed the number of training examples (else an epoch is empty).
        """
        if self.val_split >= full_size:
            raise ConfigError(f"val_split={self.val_split} leaves no training images out of {full_size}")
        available = full_size - self.val_split
        if self.limit_train is not None and self.limit_train > available:
            raise ConfigError(
                f"limit_train={self.limit_train} is more than the {available} training images available"
                + (f" after holding out val_split={self.val_split}" if self.val_split else "")
            )
        n = self.expected_train_size(full_size)
        batch = self.batch_size if self.batch_size is not None else recipes.get_recipe(self.recipe).batch_size
        if batch > n:
            raise ConfigError(
                f"batch size {batch} is larger than the training set ({n} images); the last incomplete "
                "batch is dropped, so an epoch would have no steps. Use a smaller --batch-size or more data."
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what ``config.json`` and checkpoints hold)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**dict(data))


def build_model(config: TrainConfig):
    """Create ``config.model`` with its initialisation seeded by ``config.seed``.

    Returns the model on the CPU; :class:`ConfigError` if the constructor
    rejects the arguments.
    """
    init.manual_seed(int(config.seed))
    try:
        return models.create(config.model, **config.model_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {config.model!r} with {config.model_kwargs}: {exc}") from exc
