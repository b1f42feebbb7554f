"""Batch normalisation layers: BatchNorm2d (per channel of NCHW) and BatchNorm1d.

In training mode BN normalises each channel with the mean and variance of the
current batch, then scales and shifts it with learnt ``weight`` (gamma) and
``bias`` (beta). It also keeps exponential moving averages of those batch
statistics in the buffers ``running_mean`` and ``running_var``::

    running = (1 - momentum) * running + momentum * batch_statistic

(``running_var`` uses the UNBIASED batch variance, as PyTorch does), and
counts the updates in ``num_batches_tracked``. In eval mode it normalises with
the running statistics instead, so a prediction no longer depends on the rest
of its batch. ``momentum=None`` replaces the moving average by a cumulative
average (``momentum = 1 / num_batches_tracked``).

The arithmetic and the in-place update of the running statistics live in
:func:`minires.nn.functional.batch_norm`; this module owns the state and
decides which statistics to use.

A classic mistake is evaluating a freshly built network: its running
statistics are still the initial zeros and ones, so eval-mode outputs are
nonsense. The first such call warns.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from .. import backend
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d"]


def _is_real(value: Any) -> bool:
    """A real number, bool excluded (True would otherwise pass as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _on_gpu(array: Any) -> bool:
    return backend.device_of(array).type == "cuda"


class _BatchNorm(Module):
    """Shared state and forward of BatchNorm1d/2d (they differ only in accepted shapes)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not _is_real(eps) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if momentum is not None and (not _is_real(momentum) or not 0 <= momentum <= 1):
            raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=np.float32))
            self.bias = Parameter(np.zeros(self.num_features, dtype=np.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=np.float32))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=np.float32))
            # int64 and 0-d, like PyTorch's, so state dicts are interchangeable.
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._warned_initial_stats = False
        self._host_batches: int | None = None  # GPU only: a host mirror of num_batches_tracked (see _batches_tracked)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0 (in place)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0
            self._warned_initial_stats = False
            self._host_batches = None

    def reset_parameters(self) -> None:
        """Reset the running statistics and set gamma = 1, beta = 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check_input_dim(self, x: Any) -> None:
        raise NotImplementedError

    def forward(self, x):
        """Normalise ``x``; shape unchanged (see the subclasses for the accepted shapes)."""
        momentum, use_batch_stats, track = self._prepare(x)
        y = F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )
        self._count_batch()
        return y

    def _prepare(self, x) -> tuple:
        """Check x: ``(momentum, use_batch_stats, track)`` for the functional call.

        The batch is counted (:meth:`_count_batch`) only after that call has
        succeeded, so an input the functional refuses leaves the module as it was.
        """
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got an input with {x.shape[1]} channels "
                f"(shape {tuple(x.shape)})"
            )
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.momentum is None:
            momentum = 1.0 / float(self._batches_tracked() + 1)  # this batch included
        # Batch statistics in training, and also in eval when there are no
        # running statistics to use (track_running_stats=False).
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats and not self._warned_initial_stats and self._batches_tracked() == 0:
            self._warned_initial_stats = True
            warnings.warn(
                f"{type(self).__name__}({self.num_features}) is in eval mode but its running statistics were "
                "never updated (num_batches_tracked == 0): it normalises with the initial mean 0 and "
                "variance 1. Train first (model.train()), or load a checkpoint, before evaluating.",
                stacklevel=4,  # point at the caller of module(x), past Module.__call__ and forward
            )
        # Running statistics are only passed when they are to be used or updated.
        track = not self.training or self.track_running_stats
        return momentum, use_batch_stats, track

    def _batches_tracked(self) -> int:
        """``num_batches_tracked`` as a Python int.

        On the GPU, reading the device buffer would make every forward wait
        for the device, so it is read once and then mirrored on the host
        (:meth:`_count_batch` counts both; loading a state dict re-reads it).
        """
        if not _on_gpu(self.num_batches_tracked):
            return int(self.num_batches_tracked)
        if self._host_batches is None:
            self._host_batches = int(self.num_batches_tracked)  # the one synchronisation
        return self._host_batches

    def _state_loaded(self) -> None:
        self._host_batches = None  # the buffer was overwritten: read it again when needed

    def _count_batch(self) -> None:
        if self.training and self.track_running_stats:
            # In place, so the array object registered as the buffer stays the same.
            self.num_batches_tracked += 1
            if self._host_batches is not None:
                self._host_batches += 1

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of an image batch.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root.
        momentum: weight of the current batch in the running averages
            (PyTorch's convention: 0.1, i.e. 0.9 on the old value), or None
            for a cumulative average.
        affine: learn gamma (``weight``) and beta (``bias``), shape ``(C,)``.
        track_running_stats: keep running statistics for eval mode.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``; statistics over N, H and W.
    """

    def _check_input_dim(self, x: Any) -> None:
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of ``(N, C)`` or ``(N, C, L)`` inputs.

    Arguments as :class:`BatchNorm2d`. Statistics over N (and L).
    """

    def _check_input_dim(self, x: Any) -> None:
        if x.ndim not in (2, 3):
            raise ValueError(f"BatchNorm1d expects a 2-D (N, C) or 3-D (N, C, L) input, got shape {tuple(x.shape)}")
