"""The training loop: epochs of SGD steps, evaluation, metrics, checkpoints, resume.

One epoch, as :class:`Trainer` runs it::

    for images, labels in train_loader:                  # shuffled, augmented
        loss = cross_entropy(model(images), labels)
        optimizer.zero_grad(); loss.backward()
        (every N steps: per-layer gradient norms -> grad_norms.jsonl)
        optimizer.step(); schedule.step()                # the lr moves every ITERATION
    evaluate on the test set (and the validation split, if any)
    save checkpoint.npz                                  # everything needed to continue
    append one row to metrics.jsonl / metrics.csv

What a run directory holds (``--out runs/NAME``)::

    config.json        the resolved configuration (recipe defaults filled in)
    checkpoint.npz     the latest checkpoint (see minires.checkpoint)
    metrics.jsonl      one JSON object per epoch
    metrics.csv        the same rows as CSV, for spreadsheets and pandas
    grad_norms.jsonl   with --grad-norms N: per-layer norms every N steps

Exact resumption. A run stopped after any completed step and resumed ends
with bit-for-bit the same parameters as a run that never stopped, on the CPU
backend. That works because every piece of state is either saved or a pure
function of saved integers:

* parameters, batch-norm running statistics: ``model.state_dict()``;
* momentum buffers: ``optimizer.state_dict()``;
* the learning rate: a closed-form function of the step count
  (``scheduler.state_dict()``);
* the data order and the augmentation: functions of ``(seed, epoch, batch)``
  in :class:`~minires.data.DataLoader`, so the loader state is three integers;
* the initialisation generator (``minires.nn.init``), saved for completeness.

Interrupting. Ctrl-C (SIGINT) does not stop the process in the middle of an
update: the first Ctrl-C asks the trainer to stop after the current step; it
then saves a checkpoint (with the position inside the epoch) and raises
``KeyboardInterrupt``. A second Ctrl-C stops at once; a step cut in half
cannot be saved consistently, so then the checkpoint already on disk (the
last epoch's) is kept and nothing is written. A ``KeyboardInterrupt`` raised
by a callback between steps is treated like the first Ctrl-C.

Divergence. A learning rate far too high makes the loss NaN or infinite,
and the weights with it; training on is pointless and saving them would
replace the last good checkpoint with garbage. So the trainer raises
:class:`TrainingDiverged` (naming the epoch, batch, step and loss) as soon
as it sees a non-finite training loss, and :meth:`Trainer.save_checkpoint`
refuses to write non-finite weights or momentum buffers: the checkpoint on
disk keeps the last good state.

Determinism. On the CPU backend two runs with the same configuration and
seed produce bit-identical parameters (same machine, same NumPy/BLAS).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

import numpy as np
from tqdm import tqdm

from . import __version__, allocator, backend, models, recipes
from .atomic import atomic_write_bytes
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import DataLoader, split_validation, standard_augment, subset
from .diagnostics import grad_norm_rows, rows_to_records
from .diagnostics.grad_norms import print_table
from .kernels.conv import single_threaded_blas
from .nn import functional as F
from .nn import init
from .tensor import Tensor, no_grad

__all__ = [
    "ConfigError",
    "TrainingDiverged",
    "TrainConfig",
    "Callback",
    "Trainer",
    "build_model",
    "evaluate",
    "prepare_out_dir",
    "start_run_dir",
    "metric_columns",
    "CHECKPOINT_NAME",
    "CIFAR10_TRAIN_SIZE",
]

CHECKPOINT_NAME = "checkpoint.npz"
CONFIG_NAME = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
GRAD_NORMS_NAME = "grad_norms.jsonl"
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_JSONL, METRICS_CSV, GRAD_NORMS_NAME)
CHECKPOINT_KIND = "minires-training-run"
CIFAR10_TRAIN_SIZE = 50000


class ConfigError(ValueError):
    """A training configuration that cannot work (unknown model, impossible
    batch size, unusable output directory, ...), detected before any work."""


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


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    ``epochs``, ``batch_size`` and ``lr`` left as ``None`` take the recipe's
    values (:meth:`resolved`). Fields marked *run-defining* in
    :data:`RUN_DEFINING` must be the same when a run is resumed; the others
    (device, data location, logging) may change between sessions.

    Attributes:
        model: a name from ``minires.models.names()`` ("resnet20").
        model_kwargs: extra constructor arguments (``{"depth": 8, "width": 8}``
            for ``resnet_cifar``).
        recipe: "paper" or "fast" (:mod:`minires.recipes`).
        epochs, batch_size, lr: overrides of the recipe.
        seed: fixes initialisation, data order, augmentation, validation split.
        device: "auto", "cpu", "cuda" or "cuda:N".
        data_dir: the directory holding ``cifar-10-batches-py`` (None: default).
        limit_train: train on the first K training images only.
        limit_test: evaluate on the first K test images only.
        val_split: hold out this many random training images for validation
            (the paper uses 5000); 0 for none.
        augment: random crop with 4-pixel padding and horizontal flips.
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
    grad_norms: int = 0
    eval_batch_size: int = 256
    prefetch: int = 1

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's epochs / batch size / lr filled in, after :meth:`validate`."""
        self.validate()
        recipe = recipes.get_recipe(self.recipe)
        out = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        out.model_kwargs = dict(self.model_kwargs)
        out.epochs = recipe.epochs if self.epochs is None else int(self.epochs)
        out.batch_size = recipe.batch_size if self.batch_size is None else int(self.batch_size)
        out.lr = recipe.lr if self.lr is None else float(self.lr)
        return out

    def validate(self) -> None:
        """Check every field; :class:`ConfigError` names the first bad one and its value."""
        if not isinstance(self.model, str) or self.model not in models.names():
            raise ConfigError(f"unknown model {self.model!r}; valid models: {', '.join(models.names())}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")
        if self.recipe not in recipes.names():
            raise ConfigError(f"unknown recipe {self.recipe!r}; valid recipes: {', '.join(recipes.names())}")

        def positive_int(name: str, value: Any, allow_none: bool = True, zero_ok: bool = False) -> None:
            if value is None and allow_none:
                return
            low = 0 if zero_ok else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                kind = "a non-negative" if zero_ok else "a positive"
                raise ConfigError(f"{name} must be {kind} integer, got {value!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("limit_train", self.limit_train)
        positive_int("limit_test", self.limit_test)
        positive_int("seed", self.seed, allow_none=False, zero_ok=True)
        positive_int("val_split", self.val_split, allow_none=False, zero_ok=True)
        positive_int("grad_norms", self.grad_norms, allow_none=False, zero_ok=True)
        positive_int("eval_batch_size", self.eval_batch_size, allow_none=False)
        positive_int("prefetch", self.prefetch, allow_none=False, zero_ok=True)
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


# Changing any of these changes the trained parameters, so a resumed run must keep them.
RUN_DEFINING = (
    "model", "model_kwargs", "recipe", "epochs", "batch_size", "lr", "seed",
    "limit_train", "limit_test", "val_split", "augment",
)


def metric_columns(with_validation: bool) -> list[str]:
    """The columns of ``metrics.csv`` (and keys of each ``metrics.jsonl`` row), in order.

    ``epoch`` counts from 1; ``step`` is the global iteration count at the end
    of the epoch; ``lr`` is the learning rate of the epoch's last step;
    ``train_loss``/``train_acc`` average over the epoch's (augmented) batches
    as the weights changed; accuracies are fractions in [0, 1];
    ``images_per_sec`` is training throughput (evaluation excluded);
    ``epoch_seconds`` is the training time of the epoch.
    """
    cols = ["epoch", "step", "lr", "train_loss", "train_acc"]
    if with_validation:
        cols += ["val_loss", "val_acc"]
    return cols + ["test_loss", "test_acc", "images_per_sec", "epoch_seconds"]


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


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

    Raises :class:`ConfigError` naming the directory and the fix.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} exists and is not a directory")
    if out.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"output directory {out} is not writable ({exc.strerror or exc})") from exc
    else:
        parent = out.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"output directory {out} is not writable: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"output directory {out} is not writable: cannot create it in {parent}")
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

    Called by :class:`Trainer` after every check has passed (configuration,
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


def evaluate(model, loader: DataLoader) -> tuple[float, float]:
    """Average cross-entropy loss and accuracy of ``model`` over ``loader``.

    Runs in eval mode (batch norm uses its running statistics) without
    recording a graph, and restores the model's previous mode.

    Returns:
        ``(loss, accuracy)``, Python floats; accuracy in [0, 1].
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    try:
        with no_grad():
            for images, labels in loader:
                logits = model(images)
                # Sums stay on the device; one transfer per batch at most.
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum").item())
                correct += int((logits.data.argmax(axis=1) == labels.data).sum())
                seen += labels.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader produced no examples")
    return loss_sum / seen, correct / seen


def _format_float(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_metrics(out_dir: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from ``rows``, each file atomically.

    Rewriting everything (a few hundred rows at most) instead of appending
    means a crash can never leave a half-written line, and a resumed run
    that repeats an epoch cannot duplicate its row.
    """
    jsonl = "".join(json.dumps({c: row.get(c) for c in columns}) + "\n" for row in rows)
    atomic_write_bytes(out_dir / METRICS_JSONL, jsonl.encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _format_float(row.get(c)) for c in columns])
    atomic_write_bytes(out_dir / METRICS_CSV, buffer.getvalue().encode("utf-8"))


def _append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsync-ed: a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Callback:
    """Hooks into :meth:`Trainer.fit`; override the methods you need.

    A ``KeyboardInterrupt`` raised from ``on_step_end`` stops training like
    Ctrl-C: a checkpoint is saved first, so the run can be resumed exactly.
    """

    def on_step_end(self, trainer: "Trainer") -> None:
        """After every optimisation step (``trainer.global_step`` already counts it)."""

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None:
        """After the epoch's metrics row is written and its checkpoint saved."""


class _Running:
    """Sums of loss, correct predictions and examples over an epoch.

    The sums stay on the device as 0-d arrays: reading them (``float``)
    forces a GPU sync, so it happens only for the progress bar and at the end.
    """

    def __init__(self, loss_sum: float = 0.0, correct: int = 0, seen: int = 0) -> None:
        self.loss_sum: Any = loss_sum
        self.correct: Any = correct
        self.seen = seen

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        n = labels.shape[0]
        # float64 for a sum over hundreds of batches; one scalar per step.
        self.loss_sum = self.loss_sum + loss.data.astype(np.float64) * n
        self.correct = self.correct + (logits.data.argmax(axis=1) == labels.data).sum()
        self.seen += n

    def values(self) -> tuple[float, float]:
        if self.seen == 0:
            return math.nan, math.nan
        return float(self.loss_sum) / self.seen, int(self.correct) / self.seen

    def state(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": int(self.seen)}


def _non_finite_entries(state: dict) -> list[str]:
    """Names of the model and optimizer arrays in a checkpoint :meth:`Trainer.state` that hold NaN or inf.

    The arrays are the state's host copies, so this reads no device memory.
    """
    bad = [name for name, array in state["model"].items()
           if array.dtype.kind == "f" and not np.isfinite(array).all()]
    for index, entries in state["optimizer"]["state"].items():
        for name, array in entries.items():
            if isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.isfinite(array).all():
                bad.append(f"the optimizer's {name} of parameter {index}")
    return bad


class _StopRequest:
    """Turn the first SIGINT into a flag checked between steps (see the module docstring)."""

    def __init__(self, say) -> None:
        self.requested = False
        self._say = say
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._say("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)")

    def __enter__(self) -> "_StopRequest":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


# What a training checkpoint must hold (checked before resuming from it).
_CHECKPOINT_ENTRIES = {
    "config": dict, "steps_per_epoch": int, "model": dict, "optimizer": dict, "scheduler": dict,
    "rng": dict, "epoch": int, "global_step": int, "finished": bool, "metrics": list,
}
_PARTIAL_KEYS = {"batch", "loss_sum", "correct", "seen", "train_seconds"}


class Trainer:
    """Train a model on image/label arrays with a recipe; save and resume.

    Args:
        config: the run's :class:`TrainConfig` (recipe defaults are filled in).
        data: an object with ``train_images`` ``(N, 3, H, W)`` uint8,
            ``train_labels`` ``(N,)``, ``test_images``, ``test_labels``
            (what :func:`minires.data.load_cifar10` returns).
        out_dir: the run directory (see the module docstring); checked with
            :func:`prepare_out_dir`.
        resume: continue the run saved in ``out_dir``.
        overwrite: replace a run already saved in ``out_dir``.
        model: an already built model (e.g. by the CLI, to print its summary
            before loading data); it must come from :func:`build_model` with
            this config. ``None``: built here.
        callbacks: :class:`Callback` objects.
        progress: tqdm progress bars; ``None``: only when ``stream`` is a terminal.
        verbose: print one line per epoch (and grad-norm tables).
        stream: where to print (standard output by default).

    Raises:
        ConfigError: a bad configuration or a data set too small for it.
        CheckpointError: with ``resume``, a damaged checkpoint or one saved by
            a different run (model, recipe, seed, ...).
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Any,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        model: Any = None,
        callbacks: Iterable[Callback] = (),
        progress: bool | None = None,
        verbose: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.config = config.resolved()
        self.out_dir = prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        if progress is None:
            progress = verbose and bool(getattr(self.stream, "isatty", lambda: False)())
        self.progress = progress
        self.callbacks = list(callbacks)
        try:
            self.device = backend.device(self.config.device)
        except (ValueError, backend.DeviceError) as exc:
            raise ConfigError(str(exc)) from exc
        self.recipe = recipes.get_recipe(self.config.recipe)
        if self.device.type == "cpu":
            # Reuse freed activation memory from step to step instead of taking
            # fresh, page-faulting pages from the kernel (minires/allocator.py).
            allocator.keep_freed_memory()

        saved = None
        if resume:
            saved = self._read_checkpoint(self.checkpoint_path)

        # -- data ------------------------------------------------------------
        cfg = self.config
        train_images, train_labels = data.train_images, data.train_labels
        cfg.check_sizes(int(train_images.shape[0]))
        self.val_loader = None
        if cfg.val_split:
            train_images, train_labels, val_images, val_labels = split_validation(
                train_images, train_labels, n_val=cfg.val_split, seed=cfg.seed
            )
            self.val_loader = self._eval_loader(val_images, val_labels)
        train_images, train_labels = subset(train_images, train_labels, cfg.limit_train)
        test_images, test_labels = data.test_images, data.test_labels
        if cfg.limit_test is not None and cfg.limit_test > test_images.shape[0]:
            raise ConfigError(f"limit_test={cfg.limit_test} is more than the {test_images.shape[0]} test images")
        test_images, test_labels = subset(test_images, test_labels, cfg.limit_test)
        self.train_loader = DataLoader(
            train_images, train_labels, batch_size=cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
            augment=standard_augment if cfg.augment else None, device=self.device, prefetch=cfg.prefetch,
        )
        self.test_loader = self._eval_loader(test_images, test_labels)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch

        # -- model, optimiser, schedule -------------------------------------
        self.model = (model if model is not None else build_model(cfg)).to(self.device)
        self.model.train()
        self.optimizer = recipes.build_optimizer(self.model, self.recipe, cfg.lr)
        self.scheduler = recipes.build_schedule(
            self.optimizer, self.recipe, self.total_steps, recipes.model_depth(self.model)
        )

        # -- progress counters -------------------------------------------------
        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimisation steps
        self.metrics: list[dict] = []
        self.columns = metric_columns(self.val_loader is not None)
        self.finished = False
        # Position inside the current epoch: {"batch", "running", "train_seconds"},
        # None between epochs.
        self._partial: dict | None = None
        self._in_step = False
        self._saved_step: int | None = None  # global step of the checkpoint on disk
        # Training losses not yet checked for NaN/inf: (epoch, batch, step, 0-d
        # loss array still on the device). See _check_losses.
        self._unchecked: list[tuple[int, int, int, Any]] = []
        # Reading a loss is free on the CPU, so every step is checked and a
        # diverged run stops at once. On a GPU a read waits for all queued work
        # (a sync), so losses are read in groups of 10, as often as the progress
        # bar reads its sums. Either way save_checkpoint checks first.
        self._loss_check_every = 1 if self.device.type == "cpu" else 10
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])

        if saved is not None:
            self._restore(saved)
        else:
            start_run_dir(self.out_dir, overwrite)
            atomic_write_bytes(self.out_dir / CONFIG_NAME, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())

    # -- small helpers ---------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        """``out_dir / "checkpoint.npz"``."""
        return self.out_dir / CHECKPOINT_NAME

    def _eval_loader(self, images: Any, labels: Any) -> DataLoader:
        return DataLoader(images, labels, batch_size=self.config.eval_batch_size, shuffle=False,
                          drop_last=False, seed=0, augment=None, device=self.device, prefetch=0)

    def _say(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    # -- checkpoints -------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The checkpoint contents (see :mod:`minires.checkpoint` for the format)."""
        loader_state = self.train_loader.state_dict()
        # The trainer's own counters say where the run is; the loader's epoch
        # counter runs ahead once an epoch's batches are exhausted.
        loader_state["epoch"] = self.epoch
        partial = None
        if self._partial is not None:
            partial = {"batch": int(self._partial["batch"]), **self._partial["running"].state(),
                       "train_seconds": float(self._partial["train_seconds"])}
        loader_state["batch"] = 0 if partial is None else partial["batch"]
        return {
            "kind": CHECKPOINT_KIND,
            "minires_version": __version__,
            "config": self.config.to_dict(),
            "recipe": self.recipe.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": self.finished,
            "partial_epoch": partial,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"loader": loader_state, "init": init.default_generator().bit_generator.state},
            "metrics": list(self.metrics),
        }

    def save_checkpoint(self) -> Path:
        """Write :meth:`state` to ``out_dir/checkpoint.npz`` atomically.

        Raises :class:`TrainingDiverged`, and writes nothing, if a training
        loss or any weight or momentum buffer is NaN or infinite: the
        checkpoint already on disk is worth more than a ruined one.
        """
        self._check_losses()
        state = self.state()
        bad = _non_finite_entries(state)
        if bad:
            if self._partial is not None:
                epoch, batch = self.epoch + 1, int(self._partial["batch"])
            else:
                epoch, batch = self.epoch, self.steps_per_epoch
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(
                f"training diverged: after step {self.global_step} (epoch {epoch}, batch {batch}) NaN or inf "
                f"appeared in {shown}, although every training loss was finite. {self._divergence_advice()}",
                epoch=epoch, batch=batch, step=self.global_step, loss=None,
            )
        path = save_checkpoint(self.checkpoint_path, state)
        self._saved_step = self.global_step
        return path

    def _kept_checkpoint(self) -> str:
        """What the checkpoint on disk holds, for messages about a checkpoint NOT written."""
        if self._saved_step is None:
            return "no checkpoint has been written yet"
        return f"{self.checkpoint_path} keeps the state after step {self._saved_step}"

    def _divergence_advice(self) -> str:
        return (f"The weights are unusable, so no checkpoint was written with them; {self._kept_checkpoint()}. "
                f"Train again with a lower learning rate than lr={self.config.lr:g} (--lr).")

    def _check_losses(self) -> None:
        """Raise :class:`TrainingDiverged` if a training loss since the last check is NaN or inf.

        The losses wait on the device until now and are read in one transfer
        (a GPU sync); the error names the first bad one.
        """
        if not self._unchecked:
            return
        pending, self._unchecked = self._unchecked, []
        losses = [loss for *_, loss in pending]
        xp = backend.get_array_module(*losses)
        values = backend.to_device(xp.stack(losses), backend.cpu)  # shape (len(pending),)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            epoch, batch, step, _ = pending[bad[0]]
            loss = float(values[bad[0]])
            raise TrainingDiverged(
                f"training diverged: the training loss is {loss} at epoch {epoch}, batch {batch} (step {step}). "
                + self._divergence_advice(),
                epoch=epoch, batch=batch, step=step, loss=loss,
            )

    @staticmethod
    def _read_checkpoint(path: Path) -> dict:
        saved = load_checkpoint(path)
        if saved.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{path} is not a training checkpoint (kind {saved.get('kind')!r})")
        # The SHA-256 proves the file is what was saved, not that it was saved
        # by this code: check the entries _restore reads, so a hand-made or
        # foreign file gets a clear error instead of a KeyError half-way.
        wrong = [f"{key!r} (expected {kind.__name__})" for key, kind in _CHECKPOINT_ENTRIES.items()
                 if not isinstance(saved.get(key), kind) or isinstance(saved.get(key), bool) and kind is int]
        wrong += [f"'rng'[{key!r}] (expected dict)" for key in ("init", "loader")
                  if isinstance(saved.get("rng"), dict) and not isinstance(saved["rng"].get(key), dict)]
        part = saved.get("partial_epoch")
        if part is not None and not (isinstance(part, dict) and _PARTIAL_KEYS <= set(part)):
            wrong.append(f"'partial_epoch' (expected None or a dict with {sorted(_PARTIAL_KEYS)})")
        if wrong:
            raise CheckpointError(f"checkpoint {path} lacks or has malformed entries: {', '.join(wrong)}")
        return saved

    def _restore(self, saved: dict) -> None:
        path = self.checkpoint_path
        theirs = saved["config"]
        ours = self.config.to_dict()
        diffs = [f"{k}: checkpoint {theirs.get(k)!r}, now {ours[k]!r}"
                 for k in RUN_DEFINING if theirs.get(k) != ours[k]]
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} belongs to a different run; resuming would not continue it:\n  "
                + "\n  ".join(diffs)
            )
        if saved["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"checkpoint {path} was made with {saved['steps_per_epoch']} steps per epoch, this data gives "
                f"{self.steps_per_epoch}: the training set differs"
            )
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.train_loader.load_state_dict(saved["rng"]["loader"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {exc}") from exc
        init.default_generator().bit_generator.state = saved["rng"]["init"]
        self.epoch = int(saved["epoch"])
        self.global_step = int(saved["global_step"])
        self._saved_step = self.global_step
        self.finished = bool(saved["finished"])
        part = saved["partial_epoch"]
        self._partial = None if part is None else {
            "batch": int(part["batch"]),
            "running": _Running(part["loss_sum"], part["correct"], part["seen"]),
            "train_seconds": float(part["train_seconds"]),
        }
        self.metrics = list(saved["metrics"])
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        # Lines logged after the checkpoint belong to steps that will run again.
        gn = self.out_dir / GRAD_NORMS_NAME
        if gn.exists():
            from .diagnostics import read_jsonl

            kept = [r for r in read_jsonl(gn) if r.get("step", 0) <= self.global_step]
            atomic_write_bytes(gn, "".join(json.dumps(r) + "\n" for r in kept).encode())
        write_metrics(self.out_dir, self.metrics, self.columns)

    # -- the loop ----------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Train until ``config.epochs`` epochs are done; returns the metrics rows.

        Raises ``KeyboardInterrupt`` after saving a checkpoint when stopped by
        Ctrl-C or a callback (see the module docstring), and
        :class:`TrainingDiverged`, without saving, when the loss or the
        weights become NaN or infinite.
        """
        cfg = self.config
        if self.finished or self.epoch >= cfg.epochs:
            self.finished = True
            return self.metrics
        epochs_bar = tqdm(total=cfg.epochs, initial=self.epoch, desc="epochs", unit="ep", file=self.stream,
                          disable=not self.progress, dynamic_ncols=True)
        self._stop = _StopRequest(self._say)
        try:
            with self._stop:
                while self.epoch < cfg.epochs:
                    row = self._run_epoch()
                    epochs_bar.update(1)
                    epochs_bar.set_postfix(test_acc=f"{row['test_acc']:.3f}")
                    if self._stop.requested:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._on_interrupt()
            raise
        finally:
            epochs_bar.close()
        return self.metrics

    def _on_interrupt(self) -> None:
        if self._in_step:
            self._say("interrupted in the middle of a step: its update is incomplete, so it is not saved; "
                      + self._kept_checkpoint())
            return
        self.save_checkpoint()
        epoch = self.epoch + 1 if self._partial else self.epoch
        self._say(f"interrupted: checkpoint saved after step {self.global_step} (epoch {epoch}) "
                  f"in {self.checkpoint_path}; continue with --resume")

    def _run_epoch(self) -> dict:
        cfg = self.config
        epoch = self.epoch
        if self._partial is None:
            self._partial = {"batch": 0, "running": _Running(), "train_seconds": 0.0}
            self.train_loader.set_epoch(epoch)
        else:
            self.train_loader.load_state_dict(
                {**self.train_loader.state_dict(), "epoch": epoch, "batch": self._partial["batch"]}
            )
        position = self._partial
        running: _Running = position["running"]
        steps_bar = tqdm(total=self.steps_per_epoch, initial=position["batch"],
                         desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False, file=self.stream,
                         disable=not self.progress, dynamic_ncols=True)
        self.model.train()
        seconds_before = position["train_seconds"]
        start = time.perf_counter()
        try:
            for images, labels in self.train_loader:
                self._in_step = True
                loss, logits = self._step(images, labels, epoch)
                running.add(loss, logits, labels)
                position["batch"] += 1
                position["train_seconds"] = seconds_before + time.perf_counter() - start
                self._in_step = False
                self._unchecked.append((epoch + 1, position["batch"], self.global_step, loss.data))
                if len(self._unchecked) >= self._loss_check_every:
                    self._check_losses()
                steps_bar.update(1)
                if self.progress and (position["batch"] % 10 == 0 or position["batch"] == self.steps_per_epoch):
                    mean_loss, acc = running.values()
                    speed = running.seen / max(position["train_seconds"], 1e-9)
                    steps_bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.3f}", lr=f"{self._last_lr:.3g}",
                                          img_s=f"{speed:.0f}")
                for cb in self.callbacks:
                    cb.on_step_end(self)
                if self._stop.requested:
                    raise KeyboardInterrupt
        finally:
            steps_bar.close()
        # Before evaluating: a diverged epoch is not worth evaluating or logging.
        self._check_losses()
        # From here until the checkpoint below, an interruption resumes with
        # zero steps left in this epoch: only the evaluation runs again.
        train_seconds = position["train_seconds"]
        train_loss, train_acc = running.values()
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.global_step, "lr": self._last_lr,
                               "train_loss": train_loss, "train_acc": train_acc}
        if self.val_loader is not None:
            row["val_loss"], row["val_acc"] = evaluate(self.model, self.val_loader)
        row["test_loss"], row["test_acc"] = evaluate(self.model, self.test_loader)
        row["images_per_sec"] = running.seen / train_seconds if train_seconds > 0 else math.nan
        row["epoch_seconds"] = train_seconds

        self.metrics.append(row)
        self.epoch = epoch + 1
        self._partial = None
        self.finished = self.epoch >= cfg.epochs
        # The checkpoint first: it refuses diverged weights, and then this
        # epoch's row must not reach the metrics files either. (A crash between
        # the two is harmless: resuming rewrites the metrics from the checkpoint.)
        self.save_checkpoint()
        write_metrics(self.out_dir, self.metrics, self.columns)
        if self.verbose:
            self._say(self._epoch_line(row))
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        return row

    def _epoch_line(self, row: dict) -> str:
        parts = [f"epoch {row['epoch']}/{self.config.epochs}", f"step {row['step']}", f"lr {row['lr']:.4g}",
                 f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"]
        if "val_loss" in row:
            parts.append(f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%")
        parts.append(f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%")
        parts.append(f"{row['images_per_sec']:.0f} img/s")
        return " | ".join(parts)

    def _step(self, images: Tensor, labels: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """One SGD step on one batch; returns ``(loss, logits)``."""
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        # BLAS on one thread for the whole step: the convolutions parallelise
        # over the batch themselves, and OpenBLAS's idle threads would spin on
        # the cores they need (see single_threaded_blas; 1.6x on 2 cores).
        with single_threaded_blas():
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
            n = self.config.grad_norms
            if n and (self.global_step + 1) % n == 0:
                # Before optimizer.step(): the pure loss gradient, without weight decay or momentum.
                self._log_grad_norms(epoch, float(loss.item()))
            self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return loss, logits

    def _log_grad_norms(self, epoch: int, loss: float) -> None:
        rows = grad_norm_rows(self.model)
        step = self.global_step + 1
        _append_jsonl(self.out_dir / GRAD_NORMS_NAME,
                      {"step": step, "epoch": epoch + 1, "lr": self._last_lr, "loss": loss,
                       "layers": rows_to_records(rows)})
        if self.verbose:
            print_table(rows, title=f"gradient norms at step {step} (epoch {epoch + 1}, loss {loss:.4f})", write=self._say)
