"""Data-parallel training as the Trainer sees it: which rank does what, and what is summed over the ranks.

Under ``mpiexec -n W minires train ...`` every rank runs the same Trainer.
What changes compared with one process (the rest is the same code):

* data: each rank trains on its share of every global batch, B / W of the
  B examples (:class:`~minires.distributed.DistributedSampler`), and
  evaluates on 1/W of the test images;
* model: wrapped in :class:`~minires.distributed.DistributedDataParallel`, so
  every ``backward()`` leaves the gradient of the global batch and the
  parameters stay identical on all ranks;
* numbers: training loss and accuracy sums, example counts and evaluation
  sums are added up over the ranks (an all-reduce) before they are shown or
  saved, so every rank holds the same numbers and takes the same decisions
  (stop at a NaN loss, stop after Ctrl-C): no rank leaves while another
  waits for it in a collective;
* files and printing: rank 0 alone; the others wait at a barrier wherever
  they must not run ahead of a file.

With one process every method here returns its input or does nothing, so
the single-process path is exactly the plain one.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from .. import backend
from .. import distributed as dist
from .config import ConfigError
from .state import EpochProgress
from .step import evaluate_sums

__all__ = ["DataParallel", "abort_world"]


class DataParallel:
    """This process's place in the run (``rank`` of ``world_size``) and the operations that depend on it.

    Built under ``mpiexec -n W`` it joins the process group (which loads MPI);
    otherwise it is rank 0 of 1 and never touches MPI.

    Raises:
        minires.distributed.DistributedError: W > 1 but MPI is missing or broken.
    """

    def __init__(self) -> None:
        if dist.launched_world_size() > 1:
            dist.init_process_group()
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    # -- the device --------------------------------------------------------------------

    def device(self, spec: Any) -> backend.Device:
        """The device this rank trains on: ``spec`` parsed, and on W processes one GPU per rank.

        ``"cuda"`` or ``"auto"`` (no index given) on W processes means rank r
        takes ``cuda:(r mod G)`` of the G GPUs, the paper's one GPU per
        worker; an explicit ``cuda:N`` is obeyed as given.
        """
        dev = backend.device(spec)
        explicit = isinstance(spec, backend.Device) or (isinstance(spec, str) and ":" in spec)
        if self.world_size == 1 or dev.type != "cuda" or explicit:
            return dev
        return backend.device(f"cuda:{self.rank % backend.cuda_device_count()}")

    # -- data --------------------------------------------------------------------------

    def per_rank_batch(self, global_batch: int) -> int:
        """The batch each rank computes: ``global_batch / world_size`` (128 on 2 ranks: 64)."""
        try:
            return dist.per_rank_batch_size(global_batch, self.world_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def sampler(self, num_examples: int, seed: int) -> dist.DistributedSampler | None:
        """Which training examples this rank takes each epoch; ``None`` on one process (the loader's own order).

        ``drop_last``: every rank gets ``floor(N / W)`` of the shared order, so
        an epoch has ``floor(N / B)`` global batches on any number of
        processes, and global batch ``b`` holds the examples of batch ``b`` of a
        one-process run with the same seed (only their split over the ranks
        and the augmentation's random draws differ).
        """
        if self.world_size == 1:
            return None
        return dist.DistributedSampler(num_examples, self.world_size, self.rank, shuffle=True, seed=seed,
                                       drop_last=True)

    def shard(self, images: Any, labels: Any) -> tuple[Any, Any]:
        """This rank's share of an evaluation set: every W-th example from ``rank`` on (no repeats, no padding)."""
        if self.world_size == 1:
            return images, labels
        if images.shape[0] < self.world_size:
            raise ConfigError(f"{images.shape[0]} evaluation images cannot be shared out among "
                              f"{self.world_size} processes; evaluate on more images")
        return images[self.rank::self.world_size], labels[self.rank::self.world_size]

    def global_loader_state(self, state: dict) -> dict:
        """A rank's loader state in global units for the checkpoint: the batch size is the global one.

        The position (``batch``) needs no change: every rank serves global
        batch b as its own batch b.
        """
        return {**state, "batch_size": state["batch_size"] * self.world_size}

    def local_loader_state(self, state: dict) -> dict:
        """The inverse of :meth:`global_loader_state`, for this world size (which may differ from the saver's)."""
        return {**state, "batch_size": state["batch_size"] // self.world_size}

    # -- the model ---------------------------------------------------------------------

    def wrap(self, model: Any, sync_bn: bool) -> Any:
        """``model`` (already on its device) ready for data-parallel training; unchanged on one process."""
        if self.world_size == 1:
            return model
        if sync_bn:
            model = dist.SyncBatchNorm.convert_sync_batchnorm(model)
        return dist.DistributedDataParallel(model)

    @staticmethod
    def unwrap(model: Any) -> Any:
        """The network inside a DistributedDataParallel wrapper (parameter names without ``module.``)."""
        return model.module if isinstance(model, dist.DistributedDataParallel) else model

    def sync_buffers(self, model: Any) -> None:
        """Give every rank rank 0's batch-norm running statistics (before a sharded evaluation)."""
        if isinstance(model, dist.DistributedDataParallel):
            model.sync_buffers()

    # -- numbers summed over the ranks ---------------------------------------------------

    def sum(self, values: tuple) -> tuple:
        """Each value summed over the ranks (float64); the values themselves on one process."""
        if self.world_size == 1:
            return values
        totals = np.array([float(v) for v in values], dtype=np.float64)
        dist.all_reduce(totals, dist.ReduceOp.SUM)
        return tuple(totals.tolist())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank (every rank gets the same answer)."""
        if self.world_size == 1:
            return flag
        return self.sum((bool(flag),))[0] > 0

    def step_outcome(self, loss: Any, stop: bool) -> tuple[Any, bool]:
        """After a step: the loss of the global batch (for the NaN check) and whether any rank must stop.

        One small all-reduce per step. The mean of the ranks' losses is the
        loss of the global batch (equal shares); a NaN on any rank makes it
        NaN everywhere, so all ranks stop at the same step.
        """
        if self.world_size == 1:
            return loss, stop
        loss_sum, stops = self.sum((float(loss), bool(stop)))
        return np.asarray(loss_sum / self.world_size), stops > 0

    def global_progress(self, progress: EpochProgress) -> EpochProgress:
        """The epoch's running sums over all ranks (batch count and time: this rank's, the same on all)."""
        if self.world_size == 1:
            return progress
        loss_sum, correct, seen = self.sum((progress.loss_sum, progress.correct, progress.seen))
        return EpochProgress(batch=progress.batch, loss_sum=loss_sum, correct=int(correct), seen=int(seen),
                             train_seconds=progress.train_seconds)

    def local_progress(self, saved: EpochProgress | None) -> EpochProgress | None:
        """A saved (global) partial epoch as this rank's starting point: its sums stay on rank 0 only.

        Each rank adds its own steps to its sums, and :meth:`global_progress`
        adds the ranks up: the saved sums must enter that total once.
        """
        if saved is None or self.is_main:
            return saved
        return EpochProgress(batch=saved.batch, train_seconds=saved.train_seconds)

    def evaluate(self, model: Any, loader: Any) -> tuple[float, float]:
        """``(loss, accuracy)`` over the whole evaluation set, each rank evaluating its shard (:meth:`shard`)."""
        loss_sum, correct, seen = self.sum(evaluate_sums(model, loader))
        if seen == 0:
            raise ValueError("evaluate: the loader produced no examples")
        return loss_sum / seen, correct / seen

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for on one process)."""
        if self.world_size > 1:
            dist.barrier()


# How long a rank that aborts the run waits for mpiexec to forward its last output.
OUTPUT_DRAIN_SECONDS = 0.5


def abort_world(code: int) -> None:
    """End every rank of this MPI run now with exit status ``code`` (MPI_Abort); nothing on one process.

    A rank that fails alone must not leave the others waiting forever in
    their next collective: the launcher ends all of them. The short wait
    before the abort lets mpiexec pass on what this rank printed last (its
    error message): the abort tears down the pipes it is read through.
    """
    if dist.launched_world_size() > 1 and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(OUTPUT_DRAIN_SECONDS)
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(int(code) or 1)
