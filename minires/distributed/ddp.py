"""DistributedDataParallel: one model per rank, gradients averaged over the ranks after backward.

W ranks split a global batch of B examples into W parts of n = B / W. Rank r
computes its loss ``L_r = (1/n) sum_{i in part r} l_i`` and its gradient. The
loss of the whole batch is ``L = (1/B) sum_i l_i = (1/W) sum_r L_r``, so

    dL/dtheta = (1/W) sum_r dL_r/dtheta        (an all-reduce with AVG)

After that all-reduce every rank holds the gradient of the whole batch; all
ranks start from the same parameters (rank 0's, broadcast when the wrapper
is built) and take the same optimizer step, so they stay identical without
ever sending parameters again.

When the all-reduce happens (``overlap``):

* ``overlap=False``, the reference: after the last gradient of backward is
  known, one blocking all-reduce per bucket (:mod:`.bucket`).
* ``overlap=True`` (default): each parameter has a hook
  (:meth:`Tensor.register_hook`) that the engine calls with the parameter's
  gradient, just before it accumulates it into ``.grad``. The hook copies the
  gradient into its bucket; once a bucket is full its all-reduce starts,
  non-blocking (MPI's ``Iallreduce``), while backward goes on computing
  the earlier layers' gradients. Buckets start strictly in bucket order:
  MPI matches collectives by the order they are called, which must be the
  same on every rank.

Either way, the hook of the LAST parameter to get its gradient finishes the
job: it waits for every bucket and sets each ``p.grad`` to the average.
``loss.backward()`` therefore returns with averaged gradients, and the
training loop is unchanged: ``forward, zero_grad, backward, step``. A
parameter that the forward did not use never gets a gradient, so the last
hook never runs: pass ``find_unused_parameters=True`` (the forward then finds
the parameters its output depends on), or call
:meth:`DistributedDataParallel.finish_gradient_sync` after backward.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..nn import Module, Parameter
from ..tensor import Tensor, is_grad_enabled, no_grad
from .bucket import Bucket, assign_buckets
from .comm import ProcessGroup, ReduceOp, new_group

__all__ = ["DistributedDataParallel", "DEFAULT_BUCKET_CAP_MB"]

# PyTorch's default is 25 MB, more than the 1.1 MB of all ResNet-20's gradients: one
# bucket, sent after backward, so nothing would overlap. A quarter MB gives it four.
DEFAULT_BUCKET_CAP_MB = 0.25


class DistributedDataParallel(Module):
    """Wrap ``module`` so that ``loss.backward()`` leaves the gradient averaged over all ranks.

    Args:
        module: the model, already on its device and dtype (``.double()`` etc.
            must come BEFORE wrapping: the buckets are laid out here).
        process_group: the ranks to average over; default: a new group of all
            ranks (its own MPI communicator, see :func:`.comm.new_group`).
        bucket_cap_mb: about how many megabytes (2**20 bytes) of gradients per all-reduce.
        overlap: start each bucket's all-reduce during backward (True) or
            all of them after it (False, the simple reference; same result).
        broadcast_buffers: before each training-mode forward, copy rank 0's
            buffers (BatchNorm's running statistics) to every rank, as
            PyTorch does. That forward then updates them on each rank from
            its own data, so after the last step they differ again: call
            :meth:`sync_buffers` before an evaluation shared out among the
            ranks. (Eval-mode forwards never communicate, so rank 0 may
            evaluate alone.)
        find_unused_parameters: let each forward find the parameters its
            output does not depend on, so that backward does not wait for them.

    ``forward`` calls ``module``. ``state_dict()`` and ``load_state_dict()``
    are the wrapped module's, keys WITHOUT PyTorch's ``"module."`` prefix,
    so a checkpoint loads the same with or without the wrapper.
    ``parameters()`` are the module's (named ``module.<name>``).
    """

    def __init__(
        self,
        module: Module,
        process_group: ProcessGroup | None = None,
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        overlap: bool = True,
        broadcast_buffers: bool = True,
        find_unused_parameters: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a Module, got {type(module).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        self.module = module
        self.process_group = process_group if process_group is not None else new_group()
        self.overlap = bool(overlap)
        self.broadcast_buffers = bool(broadcast_buffers)
        self.find_unused_parameters = bool(find_unused_parameters)
        self._broadcast_from_rank0(parameters=True)
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._buckets = assign_buckets(reversed(self._params), max(1, int(bucket_cap_mb * 2**20)))
        self._slots = {id(p): (bucket, i) for bucket in self._buckets for i, p in enumerate(bucket.params)}
        self._hook_handles = [p.register_hook(self._gradient_hook(p)) for p in self._params]
        self._require_sync = True  # False inside no_sync()
        self._expecting = False  # a forward has prepared a backward whose gradients are to be averaged
        self._expected = self._arrived = self._next_bucket = 0
        # How many buckets started their all-reduce before the last gradient of the
        # latest backward was known: the overlap, to look at (0 when overlap=False).
        self.buckets_started_in_backward = 0

    @property
    def buckets(self) -> list[Bucket]:
        return list(self._buckets)

    # -- forward ---------------------------------------------------------------

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """``module(*inputs, **kwargs)``, after syncing buffers; arms the hooks for the next backward."""
        if self._arrived:
            raise RuntimeError(
                "the previous backward did not finish averaging the gradients: some parameters got no "
                "gradient (unused in forward). Pass find_unused_parameters=True to DistributedDataParallel, "
                "or call finish_gradient_sync() after backward() on every rank"
            )
        if self.training and self.broadcast_buffers:
            self.sync_buffers()
        out = self.module(*inputs, **kwargs)
        if is_grad_enabled() and self._require_sync:
            self._prepare_for_backward(out)
        return out

    def _broadcast_from_rank0(self, parameters: bool) -> None:
        if self.process_group.size == 1:
            return
        with no_grad():
            if parameters:
                for p in self.module.parameters():
                    self.process_group.broadcast(p.data, src=0)
            for b in self.module.buffers():
                self.process_group.broadcast(b, src=0)

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (running statistics) to every rank. Collective: every rank must call it."""
        self._broadcast_from_rank0(parameters=False)

    def _prepare_for_backward(self, outputs: Any) -> None:
        used = _parameters_reached(outputs, self._params) if self.find_unused_parameters else self._params
        expected = {id(p) for p in used}
        for bucket in self._buckets:
            bucket.reset(expected)
        self._expected, self._arrived, self._next_bucket = len(expected), 0, 0
        self.buckets_started_in_backward = 0
        self._expecting = True

    # -- backward: the hooks ---------------------------------------------------

    def _gradient_hook(self, param: Parameter):
        bucket, i = self._slots[id(param)]

        def hook(grad: Tensor) -> Tensor | None:
            if not self._expecting:  # a backward that our forward did not prepare (no_sync, the bare module)
                return None
            if bucket.filled[i]:
                raise RuntimeError("a parameter got two gradients in one backward pass under DistributedDataParallel")
            # The engine adds `grad` into .grad right after the hooks; the bucket gets that sum.
            bucket.put(i, grad.data if param.grad is None else param.grad + grad.data)
            self._arrived += 1
            if self.overlap:
                self._start_buckets(all_remaining=False)
            if self._arrived < self._expected:
                return None
            return self._finish(last=param)

        return hook

    def _start_buckets(self, all_remaining: bool) -> None:
        """Start the all-reduce of every full bucket (or all of them), in bucket order, without waiting."""
        buckets = self._buckets
        while self._next_bucket < len(buckets) and (all_remaining or buckets[self._next_bucket].pending == 0):
            bucket = buckets[self._next_bucket]
            bucket.fill_missing()
            bucket.work = self.process_group.all_reduce(bucket.buffer, ReduceOp.AVG, async_op=True)
            self._next_bucket += 1
            self.buckets_started_in_backward += int(self._arrived < self._expected)
        # MPICH moves a non-blocking collective forward only inside MPI calls: asking helps it along.
        for bucket in buckets[:self._next_bucket]:
            bucket.work.is_completed()

    def _finish(self, last: Parameter | None = None) -> Tensor | None:
        """Reduce what is left, wait for all buckets, set every ``.grad`` to its averaged slice.

        Called from the hook of the last parameter, ``last``, whose gradient
        the engine stores only AFTER its hooks: its ``.grad`` is left None and
        the average returned, which the engine then stores as ``.grad``.
        """
        if self.overlap:
            self._start_buckets(all_remaining=True)
        else:
            for bucket in self._buckets:  # the reference: one blocking all-reduce per bucket
                bucket.fill_missing()
                self.process_group.all_reduce(bucket.buffer, ReduceOp.AVG)
        for bucket in self._buckets:
            if bucket.work is not None:
                bucket.work.wait()
            for i, p in enumerate(bucket.params):
                p.grad = bucket.slice(i)
        self._expecting, self._arrived = False, 0
        if last is None:
            return None
        averaged, last.grad = last.grad, None
        return Tensor._wrap(averaged)

    def finish_gradient_sync(self) -> None:
        """Average now whatever gradients backward produced (collective: every rank must call it).

        Only needed when some parameters got no gradient and
        ``find_unused_parameters`` is False; after a backward that reached
        every parameter the gradients are already averaged, and this does nothing.
        """
        if self._expecting:
            self._finish()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside this block backward only accumulates locally (gradient accumulation over several batches).

        The first backward after the block averages the accumulated sum.
        """
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    # -- the wrapped module's state ------------------------------------------------

    def state_dict(self):
        """The wrapped module's state dict (keys without a ``"module."`` prefix)."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict: bool = True):
        """Load into the wrapped module (keys without a ``"module."`` prefix)."""
        return self.module.load_state_dict(state_dict, strict=strict)

    def extra_repr(self) -> str:
        return (f"world_size={self.process_group.size}, buckets={len(self._buckets)}, overlap={self.overlap}, "
                f"find_unused_parameters={self.find_unused_parameters}")


def _parameters_reached(outputs: Any, params: list[Parameter]) -> list[Parameter]:
    """The parameters among ``params`` that the graph of ``outputs`` depends on (a walk over ``_ctx.inputs``)."""
    stack = [t for t in _tensors_in(outputs) if t.requires_grad]
    seen: set[int] = set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t._ctx is not None:
            stack.extend(x for x in t._ctx.inputs if x.requires_grad)
    return [p for p in params if id(p) in seen]


def _tensors_in(outputs: Any) -> Iterator[Tensor]:
    """The Tensors in a forward's output: a Tensor, or tuples, lists and dicts of them."""
    if isinstance(outputs, Tensor):
        yield outputs
    elif isinstance(outputs, (tuple, list)):
        for item in outputs:
            yield from _tensors_in(item)
    elif isinstance(outputs, dict):
        for item in outputs.values():
            yield from _tensors_in(item)
