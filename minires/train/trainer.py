"""Trainer: epochs of :func:`~.step.train_step`, evaluation, metrics and a checkpoint after every epoch.

One epoch, as :meth:`Trainer.fit` runs it::

    for images, labels in train_loader:        # shuffled, augmented
        train_step(model, (images, labels), optimizer)
        scheduler.step()                       # the lr moves every ITERATION
    evaluate on the test set (and the validation split, if any)
    save checkpoint.npz                        # everything needed to continue
    append one row to metrics.jsonl / metrics.csv

The run can be stopped after any step and resumed exactly (:mod:`.state`);
Ctrl-C finishes the step and saves first (:mod:`.interrupt`); a NaN or
infinite loss stops the run without saving (:mod:`.divergence`). On the CPU
backend two runs with the same configuration and seed produce bit-identical
parameters (same machine, same NumPy/BLAS).

Started by ``mpiexec -n W``, every rank runs this same loop on its share of
each global batch; :mod:`.distributed` holds what differs (sharded data, the
DistributedDataParallel wrapper, sums over the ranks, rank 0 alone writing).
"""

from __future__ import annotations

import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterable, TextIO

from .. import backend
from ..data import DataLoader, split_validation, standard_augment, subset
from ..diagnostics import grad_norm_rows, print_table, weights_before_update, with_updates
from ..nn import init
from ..tensor import Tensor
from . import recipes
from .callbacks import Callback
from .checkpoint import save_checkpoint as write_checkpoint_file
from .config import ConfigError, TrainConfig, build_model
from .distributed import DataParallel
from .divergence import LossWatch, non_finite_arrays, weights_diverged
from .interrupt import StoppedTogether, StopRequest
from .metrics import log_grad_norms, metric_columns, trim_grad_norm_log, write_metrics
from .progress import Reporter, epoch_line
from .resume import check_same_run, load_into, read_training_state
from .run_dir import CHECKPOINT_NAME, GRAD_NORMS_NAME, prepare_out_dir, start_run_dir, write_config
from .speed import cpu_step_context
from .state import EpochProgress, TrainingState
from .step import train_step

__all__ = ["Trainer"]


class Trainer:
    """Train a model on image/label arrays with a recipe; save and resume.

    Args:
        config: the run's :class:`TrainConfig` (recipe defaults are filled in).
        data: an object with ``train_images`` ``(N, 3, H, W)`` uint8,
            ``train_labels`` ``(N,)``, ``test_images``, ``test_labels``
            (what :func:`minires.data.load_cifar10` returns).
        out_dir: the run directory (:mod:`.run_dir`), checked with :func:`prepare_out_dir`.
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
        self.parallel = DataParallel()
        self.out_dir = prepare_out_dir(out_dir, resume=resume, overwrite=overwrite)
        main = self.parallel.is_main  # only rank 0 prints
        self.report = Reporter(stream, verbose and main, progress if main else False)
        self.callbacks = list(callbacks)
        try:
            self.device = self.parallel.device(self.config.device)
        except (ValueError, backend.DeviceError) as exc:
            raise ConfigError(str(exc)) from exc
        self.recipe = recipes.get_recipe(self.config.recipe)
        self._step_context = cpu_step_context(self.device.type)
        saved = read_training_state(self.checkpoint_path) if resume else None

        self._build_loaders(data)
        self._build_model(model)

        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimisation steps
        self.finished = False
        self.metrics: list[dict] = []
        self.columns = metric_columns(self.val_loader is not None)
        self.epoch_progress: EpochProgress | None = None  # None between epochs
        self.loss_watch = LossWatch(1 if self.device.type == "cpu" else 10, advice=self._divergence_advice)
        self._in_step = False
        self._saved_step: int | None = None  # global step of the checkpoint on disk
        self._stop = StopRequest(self.report.say)
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])

        if saved is not None:
            self._restore(saved)
        else:
            self.parallel.barrier()  # every rank has checked out_dir before rank 0 changes it
            if self.parallel.is_main:
                start_run_dir(self.out_dir, overwrite)
                write_config(self.out_dir, self.config)

    # -- building ------------------------------------------------------------------

    def _build_loaders(self, data: Any) -> None:
        """The training loader (shuffled, augmented), the test loader and, with ``val_split``, the validation one."""
        cfg = self.config
        train_images, train_labels = data.train_images, data.train_labels
        cfg.check_sizes(int(train_images.shape[0]))
        self.val_loader = None
        if cfg.val_split:
            train_images, train_labels, val_images, val_labels = split_validation(
                train_images, train_labels, n_val=cfg.val_split, seed=cfg.seed
            )
            self.val_loader = self._eval_loader(*self.parallel.shard(val_images, val_labels))
        train_images, train_labels = subset(train_images, train_labels, cfg.limit_train)
        test_images, test_labels = data.test_images, data.test_labels
        if cfg.limit_test is not None and cfg.limit_test > test_images.shape[0]:
            raise ConfigError(f"limit_test={cfg.limit_test} is more than the {test_images.shape[0]} test images")
        test_images, test_labels = subset(test_images, test_labels, cfg.limit_test)
        # On W processes each rank takes batch_size / W of every global batch (its sampler's share).
        self.train_loader = DataLoader(
            train_images, train_labels, batch_size=self.parallel.per_rank_batch(cfg.batch_size), shuffle=True,
            drop_last=True, seed=cfg.seed, augment=standard_augment if cfg.augment else None, device=self.device,
            prefetch=cfg.prefetch, sampler=self.parallel.sampler(int(train_images.shape[0]), cfg.seed),
        )
        self.test_loader = self._eval_loader(*self.parallel.shard(test_images, test_labels))
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch

    def _eval_loader(self, images: Any, labels: Any) -> DataLoader:
        return DataLoader(images, labels, batch_size=self.config.eval_batch_size, shuffle=False,
                          drop_last=False, seed=0, augment=None, device=self.device, prefetch=0)

    def _build_model(self, model: Any) -> None:
        """The model on its device (wrapped when data-parallel), the recipe's optimiser and its lr schedule."""
        net = (model if model is not None else build_model(self.config)).to(self.device)
        self.model = self.parallel.wrap(net, self.config.sync_bn)
        self.model.train()
        self.optimizer = recipes.build_optimizer(self.model, self.recipe, self.config.lr)
        self.scheduler = recipes.build_schedule(
            self.optimizer, self.recipe, self.total_steps, recipes.model_depth(self.parallel.unwrap(self.model))
        )

    @property
    def checkpoint_path(self) -> Path:
        """``out_dir / "checkpoint.npz"``."""
        return self.out_dir / CHECKPOINT_NAME

    # -- checkpoints -----------------------------------------------------------------

    def training_state(self) -> TrainingState:
        """Everything the checkpoint holds, now (host copies of the arrays); global over the ranks.

        Data-parallel, every rank must call it (the epoch's sums are added up over the ranks).
        """
        loader_rng = self.parallel.global_loader_state(self.train_loader.state_dict())
        # The trainer's own counters say where the run is; the loader's epoch
        # counter runs ahead once an epoch's batches are exhausted.
        loader_rng["epoch"] = self.epoch
        loader_rng["batch"] = 0 if self.epoch_progress is None else self.epoch_progress.batch
        return TrainingState(
            config=self.config, epoch=self.epoch, global_step=self.global_step, total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, finished=self.finished,
            partial_epoch=None if self.epoch_progress is None else self.parallel.global_progress(self.epoch_progress),
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), loader_rng=loader_rng,
            init_rng=init.default_generator().bit_generator.state, metrics=list(self.metrics),
        )

    def save_checkpoint(self) -> Path:
        """Write :meth:`training_state` to ``out_dir/checkpoint.npz`` atomically.

        Raises :class:`TrainingDiverged`, and writes nothing, if a training
        loss or any weight or momentum buffer is NaN or infinite: the
        checkpoint already on disk is worth more than a ruined one.
        Data-parallel: every rank calls it, rank 0 writes, and nobody returns
        before the file is in place.
        """
        self.loss_watch.check()
        state = self.training_state()
        bad = non_finite_arrays(state.model, state.optimizer)
        if self.parallel.any(bool(bad)):
            if self.epoch_progress is not None:
                epoch, batch = self.epoch + 1, self.epoch_progress.batch
            else:
                epoch, batch = self.epoch, self.steps_per_epoch
            raise weights_diverged(bad, epoch=epoch, batch=batch, step=self.global_step,
                                   advice=self._divergence_advice())
        if self.parallel.is_main:
            write_checkpoint_file(self.checkpoint_path, state.to_dict())
        self.parallel.barrier()
        self._saved_step = self.global_step
        return self.checkpoint_path

    def _kept_checkpoint(self) -> str:
        """What the checkpoint on disk holds, for messages about a checkpoint NOT written."""
        if self._saved_step is None:
            return "no checkpoint has been written yet"
        return f"{self.checkpoint_path} keeps the state after step {self._saved_step}"

    def _divergence_advice(self) -> str:
        return (f"The weights are unusable, so no checkpoint was written with them; {self._kept_checkpoint()}. "
                f"Train again with a lower learning rate than lr={self.config.lr:g} (--lr).")

    def _restore(self, state: TrainingState) -> None:
        """Continue from ``state`` (read from this run's checkpoint, by any number of processes).

        The checkpoint is global (batch size, position in global batches, the
        epoch's sums over all ranks), so it resumes on another number of
        processes too; see :mod:`.distributed` for what then stays the same.
        """
        check_same_run(state, self.config, self.steps_per_epoch, self.checkpoint_path)
        state.loader_rng = self.parallel.local_loader_state(state.loader_rng)
        load_into(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                  train_loader=self.train_loader, path=self.checkpoint_path)
        self.epoch, self.global_step, self.finished = state.epoch, state.global_step, state.finished
        self._saved_step = self.global_step
        self.epoch_progress = self.parallel.local_progress(state.partial_epoch)
        self.metrics = list(state.metrics)
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        if self.parallel.is_main:
            # Lines logged after the checkpoint belong to steps that will run again.
            trim_grad_norm_log(self.out_dir / GRAD_NORMS_NAME, self.global_step)
            write_metrics(self.out_dir, self.metrics, self.columns)

    # -- the loop ----------------------------------------------------------------------

    def fit(self) -> list[dict]:
        """Train until ``config.epochs`` epochs are done; returns the metrics rows.

        Raises ``KeyboardInterrupt`` after saving a checkpoint when stopped by
        Ctrl-C (:class:`StoppedTogether`: every rank stopped after the same
        step) or by a callback, and :class:`TrainingDiverged`, without saving,
        when the loss or the weights become NaN or infinite.
        """
        epochs = self.config.epochs
        if self.finished or self.epoch >= epochs:
            self.finished = True
            return self.metrics
        epochs_bar = self.report.bar(total=epochs, initial=self.epoch, desc="epochs", unit="ep")
        self._stop = StopRequest(self.report.say)
        try:
            with self._stop:
                while self.epoch < epochs:
                    row = self._run_epoch()
                    epochs_bar.update(1)
                    epochs_bar.set_postfix(test_acc=f"{row['test_acc']:.3f}")
                    if self.parallel.any(self._stop.requested):
                        raise StoppedTogether
        except KeyboardInterrupt:
            self._on_interrupt()
            raise
        finally:
            epochs_bar.close()
        return self.metrics

    def _on_interrupt(self) -> None:
        if self._in_step:
            self.report.say("interrupted in the middle of a step: its update is incomplete, so it is not saved; "
                            + self._kept_checkpoint())
            return
        self.save_checkpoint()
        epoch = self.epoch + 1 if self.epoch_progress is not None else self.epoch
        self.report.say(f"interrupted: checkpoint saved after step {self.global_step} (epoch {epoch}) "
                        f"in {self.checkpoint_path}; continue with --resume")

    def _run_epoch(self) -> dict:
        """The current epoch's remaining steps, then its evaluation, metrics row and checkpoint; returns the row."""
        progress = self._train_epoch()
        # Before evaluating: a diverged epoch is not worth evaluating or logging.
        self.loss_watch.check()
        # From here until the checkpoint below, an interruption resumes with
        # zero steps left in this epoch: only the evaluation runs again.
        row = self._metrics_row(progress)
        self.metrics.append(row)
        self.epoch += 1
        self.epoch_progress = None
        self.finished = self.epoch >= self.config.epochs
        # The checkpoint first: it refuses diverged weights, and then this
        # epoch's row must not reach the metrics files either. (A crash between
        # the two is harmless: resuming rewrites the metrics from the checkpoint.)
        self.save_checkpoint()
        if self.parallel.is_main:
            write_metrics(self.out_dir, self.metrics, self.columns)
        if self.report.verbose:
            self.report.say(epoch_line(row, self.config.epochs))
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)
        return row

    def _train_epoch(self) -> EpochProgress:
        """Run the steps left in the current epoch (all of them, unless resuming inside it)."""
        if self.epoch_progress is None:
            self.epoch_progress = EpochProgress()
            self.train_loader.set_epoch(self.epoch)
        else:
            self.train_loader.load_state_dict(
                {**self.train_loader.state_dict(), "epoch": self.epoch, "batch": self.epoch_progress.batch}
            )
        progress = self.epoch_progress
        bar = self.report.bar(total=self.steps_per_epoch, initial=progress.batch,
                              desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="step", leave=False)
        self.model.train()
        seconds_before, start = progress.train_seconds, time.perf_counter()
        try:
            for images, labels in self.train_loader:
                self._in_step = True
                loss, logits = self._step(images, labels, self.epoch)
                progress.add_batch(loss, logits, labels)
                progress.train_seconds = seconds_before + time.perf_counter() - start
                self._in_step = False
                # Data-parallel: the global batch's loss, and a stop if any rank was asked to.
                checked_loss, stop = self.parallel.step_outcome(loss.data, self._stop.requested)
                self.loss_watch.add(self.epoch + 1, progress.batch, self.global_step, checked_loss)
                self._update_bar(bar, progress)
                for callback in self.callbacks:
                    callback.on_step_end(self)
                if stop:
                    raise StoppedTogether  # every rank got the same `stop` from the same step
        finally:
            bar.close()
        # The last steps' GPU kernels may still be running: wait before the epoch's time is final.
        self.device.synchronize()
        progress.train_seconds = seconds_before + time.perf_counter() - start
        return progress

    def _update_bar(self, bar: Any, progress: EpochProgress) -> None:
        bar.update(1)
        # Every 10 steps: reading the running sums is a GPU sync.
        if self.report.progress and (progress.batch % 10 == 0 or progress.batch == self.steps_per_epoch):
            mean_loss, acc = progress.averages()
            speed = progress.seen / max(progress.train_seconds, 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.3f}", lr=f"{self._last_lr:.3g}", img_s=f"{speed:.0f}")

    def _metrics_row(self, progress: EpochProgress) -> dict[str, Any]:
        """The epoch's row of metrics.jsonl: training averages, then validation and test evaluations.

        Data-parallel: sums over all ranks; each rank evaluates its shard with rank 0's running statistics.
        """
        progress = self.parallel.global_progress(progress)
        train_loss, train_acc = progress.averages()
        self.parallel.sync_buffers(self.model)
        row: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self._last_lr,
                               "train_loss": train_loss, "train_acc": train_acc}
        if self.val_loader is not None:
            row["val_loss"], row["val_acc"] = self.parallel.evaluate(self.model, self.val_loader)
        row["test_loss"], row["test_acc"] = self.parallel.evaluate(self.model, self.test_loader)
        seconds = progress.train_seconds
        row["images_per_sec"] = progress.seen / seconds if seconds > 0 else math.nan
        row["epoch_seconds"] = seconds
        return row

    def _step(self, images: Tensor, labels: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """One :func:`train_step` (under the CPU speed helpers), then the lr schedule; returns ``(loss, logits)``."""
        self._last_lr = float(self.optimizer.param_groups[0]["lr"])
        n = self.config.grad_norms
        # Gradient norms: measured between backward and the update (rank 0 alone: the gradients
        # are the averaged ones, the same on every rank), then logged with the update they led to.
        measure = bool(n) and (self.global_step + 1) % n == 0 and self.parallel.is_main
        measured: list = []
        with self._step_context():
            loss, logits = train_step(self.model, (images, labels), self.optimizer,
                                      before_update=partial(self._measure_grad_norms, measured) if measure else None)
        if measured:
            self._log_grad_norms(epoch, *measured)
        self.scheduler.step()
        self.global_step += 1
        return loss, logits

    def _measure_grad_norms(self, measured: list, loss: Tensor) -> None:
        """Before the update: each layer's gradient and weight norms, and a copy of the weights."""
        net = self.parallel.unwrap(self.model)
        measured.extend([grad_norm_rows(net), weights_before_update(net), float(loss.item())])

    def _log_grad_norms(self, epoch: int, rows: list, before: dict, loss: float) -> None:
        """After the update: add each layer's update-to-weight ratio; log, and print when verbose."""
        step = self.global_step + 1
        rows = with_updates(rows, self.parallel.unwrap(self.model), before)
        log_grad_norms(self.out_dir / GRAD_NORMS_NAME, rows, step=step, epoch=epoch + 1, lr=self._last_lr, loss=loss)
        if self.report.verbose:
            print_table(rows, title=f"gradient norms at step {step} (epoch {epoch + 1}, loss {loss:.4f})",
                        write=self.report.say)
