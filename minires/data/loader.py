"""Batches for training: choose examples, shuffle them reproducibly, prefetch.

:class:`DataLoader` turns arrays of images and labels into an iterator of
``(images, labels)`` :class:`~minires.Tensor` mini-batches on a device::

    loader = DataLoader(train_images, train_labels, batch_size=128, shuffle=True,
                        seed=0, augment=standard_augment, device="cuda", prefetch=2)
    for epoch in range(epochs):
        for x, y in loader:        # x: (128, 3, 32, 32) float32, y: (128,) int64
            ...

Reproducibility without hidden state
------------------------------------
Every random number the loader uses is derived from three integers:
``seed``, the epoch, and the batch index. The order of epoch ``e`` is a
permutation drawn from a generator seeded with ``(seed, e)``; the
augmentation of batch ``b`` in epoch ``e`` uses a fresh generator seeded with
``(seed, e, b)`` (NumPy's ``SeedSequence`` turns such tuples into independent
streams). Consequences:

* the same seed gives the same batches, and different epochs different orders;
* a resumed run reproduces epoch ``k`` exactly: ``state_dict()`` is just
  ``{seed, epoch, batch}``, which IS the complete random state;
* prefetching on a background thread cannot change anything, because no
  batch depends on which batches were made before it or when.

The epoch advances by itself when a pass over the data completes (you may
also call :meth:`DataLoader.set_epoch`, as with PyTorch's samplers).
Breaking out of a loop does not advance it: the next ``iter()`` restarts the
same epoch from its first batch, unless :meth:`DataLoader.load_state_dict`
asked to resume in the middle.

Work per batch: gather the examples (uint8, on the host), copy them to the
device (uint8 is a quarter of float32's bytes), augment and normalise there,
wrap in Tensors.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import backend
from ..tensor import Tensor
from .transforms import CIFAR10_MEAN, CIFAR10_STD, to_float
from .transforms import normalize as _normalize

__all__ = ["DataLoader", "split_validation", "subset", "epoch_order"]


# ---------------------------------------------------------------------------
# Choosing examples
# ---------------------------------------------------------------------------


def _check_pair(images: Any, labels: Any) -> int:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must be an (N, C, H, W) array, got shape {getattr(images, 'shape', None)}")
    if getattr(labels, "ndim", None) != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"labels must have shape ({images.shape[0]},) to match images {tuple(images.shape)}, "
            f"got {getattr(labels, 'shape', None)}"
        )
    return int(images.shape[0])


def subset(images: Any, labels: Any, k: int | None) -> tuple[Any, Any]:
    """The first ``k`` examples (for quick runs); ``k=None`` keeps all.

    ``(N, C, H, W), (N,)`` -> ``(k, C, H, W), (k,)``, views of the inputs.
    Note CIFAR-10's files are not sorted by class, so the first few thousand
    examples already contain all ten classes in roughly equal numbers.
    """
    n = _check_pair(images, labels)
    if k is None:
        return images, labels
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"limit must be an integer in 1..{n}, got {k!r}")
    return images[: int(k)], labels[: int(k)]


def split_validation(
    images: Any, labels: Any, n_val: int = 5000, seed: int = 0
) -> tuple[Any, Any, Any, Any]:
    """Hold out ``n_val`` random examples for validation (the paper's 45k/5k split).

    Args:
        images: ``(N, C, H, W)``.
        labels: ``(N,)``.
        n_val: size of the validation set, ``1 <= n_val < N``.
        seed: the same seed always gives the same split.

    Returns:
        ``(train_images, train_labels, val_images, val_labels)`` with
        ``N - n_val`` and ``n_val`` examples: new arrays, each part in the
        original order of the examples (the loader shuffles anyway; sorted
        indices also make the split easy to inspect).
    """
    n = _check_pair(images, labels)
    if int(n_val) != n_val or not 1 <= n_val < n:
        raise ValueError(f"n_val must be an integer in 1..{n - 1}, got {n_val!r}")
    perm = np.random.default_rng(np.random.SeedSequence(int(seed))).permutation(n)
    val_idx = np.sort(perm[: int(n_val)])
    train_idx = np.sort(perm[int(n_val):])
    xp = backend.get_array_module(images)
    val_idx, train_idx = xp.asarray(val_idx), xp.asarray(train_idx)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


# ---------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------


def _generator(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream for ``(seed, *key)``; see the module docstring."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a permutation of ``0..num_examples-1`` fixed by ``(seed, epoch)``.

    :class:`DataLoader` serves its examples in this order, and
    :class:`minires.distributed.DistributedSampler` shares it out among the
    ranks, so global batch ``b`` holds the same examples on any number of processes.
    """
    return _generator(int(seed), int(epoch), _ORDER_STREAM).permutation(int(num_examples))


def _is_count(value: Any, smallest: int) -> bool:
    """Whether ``value`` is an integer ``>= smallest`` (an integral float passes, a bool does not)."""
    return not isinstance(value, bool) and int(value) == value and value >= smallest


def _check_arguments(
    images: Any, labels: Any, batch_size: Any, seed: Any, prefetch: Any, augment: Any
) -> None:
    """Refuse bad :class:`DataLoader` arguments when it is built, not at the first batch."""
    if _check_pair(images, labels) == 0:
        raise ValueError("cannot build a DataLoader over 0 examples")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if not _is_count(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not _is_count(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_count(prefetch, 0):
        raise ValueError(f"prefetch must be a non-negative integer (0, 1, 2, ...), got {prefetch!r}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be None or a callable(batch, rng), got {type(augment).__name__}")


def _mean_and_std(normalize: Any, channels: int) -> tuple[tuple, tuple] | None:
    """The per-channel ``(mean, std)`` the ``normalize`` argument asks for, or None for none."""
    if normalize is True:
        mean_std = (CIFAR10_MEAN, CIFAR10_STD)
    elif normalize is False:
        return None
    else:
        try:
            mean, std = normalize
        except (TypeError, ValueError):
            raise ValueError(f"normalize must be True, False or (mean, std), got {normalize!r}") from None
        mean_std = (tuple(mean), tuple(std))
    if not len(mean_std[0]) == len(mean_std[1]) == channels:
        # Fail here, not on the first batch deep inside a training loop.
        raise ValueError(
            f"normalize needs one mean and one std per channel: images have {channels} channels, got "
            f"{len(mean_std[0])} means and {len(mean_std[1])} stds (pass normalize=False or "
            "normalize=(mean, std))"
        )
    return mean_std


class DataLoader:
    """Iterate over ``(images, labels)`` in mini-batches of Tensors.

    Args:
        images: ``(N, C, H, W)`` uint8 (or floating, already on the 0..1
            scale), NumPy or CuPy.
        labels: ``(N,)`` integer class indices.
        batch_size: examples per batch.
        shuffle: a new random order every epoch (else the stored order).
        drop_last: skip the final batch when it would be smaller than
            ``batch_size`` (keeps batch-norm statistics from a tiny batch out).
        seed: non-negative integer; with the epoch, it fixes every random choice.
        augment: ``None`` or ``augment(batch, rng) -> batch`` applied to the
            (uint8) batch on the device before normalisation, e.g.
            :func:`minires.data.transforms.standard_augment`.
        normalize: ``True``: CIFAR-10 mean/std; ``(mean, std)``: your own
            per-channel values; ``False``: only scale to float32 in ``[0, 1]``.
        device: where the batches go (``"cpu"``, ``"cuda"``, a Device, ...).
        prefetch: how many batches a background thread may prepare ahead
            (0: none, everything happens in the caller's thread).
        sampler: ``None``, or an object with ``set_epoch(e)``, ``indices()``
            and ``rank`` choosing this process's examples of each epoch, e.g.
            :class:`minires.distributed.DistributedSampler` (data-parallel
            training; it then decides the order, and ``shuffle`` is ignored).
            Each rank's augmentation gets its own random stream.

    Yields:
        ``images``: Tensor ``(B, C, H, W)`` float32 on ``device``;
        ``labels``: Tensor ``(B,)`` int64 on ``device``; ``B = batch_size``
        except possibly for the last batch.
    """

    def __init__(
        self,
        images: Any,
        labels: Any,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        augment: Callable[[Any, np.random.Generator], Any] | None = None,
        normalize: "bool | tuple[Sequence[float], Sequence[float]]" = True,
        device: Any = "cpu",
        prefetch: int = 0,
        sampler: Any = None,
    ) -> None:
        _check_arguments(images, labels, batch_size, seed, prefetch, augment)
        self._mean_std = _mean_and_std(normalize, channels=int(images.shape[1]))
        self.images = images
        # int64 is what cross-entropy indexes with; converting once here, not per batch.
        self.labels = labels if labels.dtype == np.int64 else labels.astype(np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.augment = augment
        self.device = backend.device(device)
        self.prefetch = int(prefetch)
        self.sampler = sampler
        self._epoch = 0
        self._position = 0  # batches handed out in the current epoch
        self._resume_at = 0  # where the next iter() starts (set by load_state_dict)

    # -- size and bookkeeping ---------------------------------------------

    @property
    def num_examples(self) -> int:
        """``N``, the number of examples the loader draws from."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(N / B)``, or ``floor(N / B)`` with ``drop_last`` (N: the sampler's share)."""
        n = self.num_examples if self.sampler is None else len(self.sampler)
        if self.drop_last:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` from its first batch."""
        if not _is_count(epoch, 0):
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)
        self._position = 0
        self._resume_at = 0

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this loader is.

        ``seed``, ``epoch`` and ``batch`` (batches of that epoch already
        handed out) determine all random choices; ``num_examples`` and
        ``batch_size`` are kept to refuse a state from a different setup.
        """
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "batch": self._position,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`: the next ``iter()`` continues from ``state['batch']``.

        ``seed``, ``epoch`` and ``batch`` must be non-negative integers (Python
        or NumPy, not bool or float): a bad value is refused here, naming the
        key, instead of failing later inside NumPy's random generator. A
        missing key raises ``KeyError``; nothing changes unless all checks pass.
        """
        if not isinstance(state, dict):
            raise TypeError(f"loader state must be a dict (from DataLoader.state_dict()), got {type(state).__name__}")
        missing = {"seed", "epoch", "batch"} - set(state)
        if missing:
            raise KeyError(f"loader state is missing {sorted(missing)}; got keys {sorted(state)}")
        counters = {}
        for key in ("seed", "epoch", "batch"):
            value = state[key]
            # bool is a subclass of int, and int(2.7) would quietly become 2: refuse both.
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"loader state {key}={value!r} must be an integer, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"loader state {key}={value!r} must be a non-negative integer")
            counters[key] = int(value)
        for key in ("num_examples", "batch_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]!r} but this loader has {getattr(self, key)!r}: "
                    "the data order would differ, so it cannot be resumed"
                )
        batch = counters["batch"]
        if batch > len(self):
            raise ValueError(f"loader state batch={batch} is outside 0..{len(self)}")
        self.seed = counters["seed"]
        self._epoch = counters["epoch"]
        self._position = batch
        self._resume_at = batch

    # -- what each batch contains ------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of ``epoch`` in the order they are served, ``(N,)`` int64."""
        if self.sampler is not None:
            self.sampler.set_epoch(int(epoch))
            return self.sampler.indices()
        if not self.shuffle:
            return np.arange(self.num_examples, dtype=np.int64)
        return epoch_order(self.num_examples, self.seed, epoch)

    def _device_scope(self):
        # CuPy work goes to the thread's *current* device; a prefetch thread
        # starts on device 0, so name ours explicitly.
        if self.device.type == "cuda":
            return self.device.xp.cuda.Device(self.device.index or 0)
        return contextlib.nullcontext()

    def _make_batch(self, epoch: int, index: int, order: np.ndarray) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of ``epoch``: a pure function of (seed, epoch, index)."""
        idx = order[index * self.batch_size:(index + 1) * self.batch_size]
        with self._device_scope():
            xp = backend.get_array_module(self.images)
            idx = xp.asarray(idx)
            images = backend.to_device(self.images[idx], self.device)
            labels = backend.to_device(self.labels[idx], self.device)
            if self.augment is not None:
                key = (epoch, _AUGMENT_STREAM, index) + (() if self.sampler is None else (self.sampler.rank,))
                images = self.augment(images, _generator(self.seed, *key))
            if self._mean_std is not None:
                images = _normalize(images, *self._mean_std)
            elif images.dtype == np.uint8:
                images = to_float(images)
            if images.dtype != np.float32:
                images = images.astype(backend.get_array_module(images).float32)
        return Tensor(images), Tensor(labels)

    # -- handing a GPU batch from one thread to another -----------------------

    def _record_ready(self) -> Any:
        """In the prefetch thread: an event that completes when this thread's queued work has run.

        GPU kernels run asynchronously, in the order of a *stream*. With
        per-thread default streams (``CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1``)
        the prefetch thread queues the batch's copy and augmentation on ITS
        stream and the training step runs on another, so nothing would stop
        the step from reading the images before they are written. The event
        marks the point in the producer's stream after the batch's last
        kernel; :meth:`_wait_ready` makes the consumer's stream wait for it.
        None on the CPU, where the batch is complete when it is returned.
        """
        if self.device.type != "cuda":
            return None
        cp = self.device.xp
        with self._device_scope():
            event = cp.cuda.Event(disable_timing=True)  # only ordering is needed, not timing
            event.record(cp.cuda.get_current_stream())
        return event

    def _wait_ready(self, event: Any) -> None:
        """In the consumer's thread: later work on its current stream waits for ``event``.

        The wait happens on the GPU (``cudaStreamWaitEvent``): this thread does
        not block, it only orders the kernels it queues after the batch's.
        """
        if event is None:
            return
        cp = self.device.xp
        with self._device_scope():
            cp.cuda.get_current_stream().wait_event(event)

    # -- iteration -----------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0
        self._position = start
        order = self.order(epoch)
        indices = range(start, len(self))
        batches = self._prefetched(epoch, indices, order) if self.prefetch else (
            self._make_batch(epoch, i, order) for i in indices
        )
        try:
            for i, batch in zip(indices, batches):
                # Count the batch as handed out BEFORE yielding, so a checkpoint taken
                # after the training step on it resumes with the next one.
                self._position = i + 1
                yield batch
        finally:
            batches.close()  # stops a prefetch thread now, not whenever this is garbage-collected
        self._epoch = epoch + 1
        self._position = 0

    def _prefetched(self, epoch: int, indices: range, order: np.ndarray) -> Iterator[tuple[Tensor, Tensor]]:
        """Make the batches on a background thread, at most ``prefetch`` ahead.

        The worker puts ``("batch", b)`` items on a bounded queue, then
        ``("end", None)``; if it fails it puts ``("error", exc)`` and the
        exception is re-raised here, in the consumer's thread. When the
        consumer stops early (``break``), closing this generator sets ``stop``
        so the worker does not block forever on a full queue.

        On a GPU each batch travels with an event marking the end of its
        copy and augmentation kernels (see :meth:`_record_ready`).
        """
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for i in indices:
                    batch = self._make_batch(epoch, i, order)
                    if not put(("batch", (batch, self._record_ready()))):
                        return
                put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
                put(("error", exc))

        worker = threading.Thread(target=work, name="minires-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = q.get()
                if kind == "batch":
                    batch, ready = payload
                    self._wait_ready(ready)
                    yield batch
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            stop.set()
            worker.join()

    def __repr__(self) -> str:
        return (
            f"DataLoader(examples={self.num_examples}, batch_size={self.batch_size}, batches={len(self)}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed}, epoch={self._epoch}, "
            f"augment={getattr(self.augment, '__name__', self.augment)}, device='{self.device}', "
            f"prefetch={self.prefetch})"
        )
