"""Gradient buckets: many small gradients packed into a few flat arrays for the all-reduce.

One all-reduce of n bytes takes about ``alpha + beta * n``: a fixed cost
alpha (a message round, tens of microseconds or more) plus a cost per byte.
ResNet-20 has 65 parameter tensors, some of only 16 numbers; reducing them one
by one pays alpha 65 times. Packing them into buckets of about ``cap`` bytes
pays it ``total / cap`` times, while a bucket is still small enough to be sent
as soon as its gradients are known, with the rest of backward still running.

Backward produces gradients roughly from the last layer to the first, so the
parameters go into buckets in REVERSE registration order (as PyTorch does):
bucket 0 holds the last layers and fills first.

A bucket of parameters ``p_0 .. p_k`` is one flat array::

    buffer = [ p_0.grad.ravel() | p_1.grad.ravel() | ... | p_k.grad.ravel() ]
              ^ offsets[0]        ^ offsets[1]

and after the reduction ``p_i.grad`` becomes a view of its slice.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..nn import Parameter

__all__ = ["Bucket", "assign_buckets"]


class Bucket:
    """The parameters of one flat all-reduce, and the state of one backward pass.

    Attributes:
        params: the parameters, in the order of their slices.
        offsets: where each parameter's slice starts in ``buffer``.
        buffer: the flat array of this pass (a new one per pass, so that the
            ``.grad`` views handed out last time are never overwritten).
        filled: one flag per parameter: has its gradient been copied in?
        pending: gradients still expected before the bucket can be sent.
        work: the running all-reduce, once started.
    """

    def __init__(self, params: list[Parameter]) -> None:
        self.params = params
        self.offsets = []
        total = 0
        for p in params:
            self.offsets.append(total)
            total += p.size
        self.numel = total
        self.buffer: Any = None
        self.filled: list[bool] = []
        self.pending = 0
        self.work: Any = None

    @property
    def nbytes(self) -> int:
        return self.numel * self.params[0].dtype.itemsize

    def reset(self, expected: set[int]) -> None:
        """Start a pass in which the parameters whose ``id`` is in ``expected`` will get gradients."""
        xp = self.params[0].xp
        self.buffer = xp.empty(self.numel, dtype=self.params[0].dtype)
        self.filled = [False] * len(self.params)
        self.pending = sum(id(p) in expected for p in self.params)
        self.work = None

    def slice(self, i: int) -> Any:
        """Parameter i's part of the buffer, in the parameter's shape (a view)."""
        start = self.offsets[i]
        return self.buffer[start:start + self.params[i].size].reshape(self.params[i].shape)

    def put(self, i: int, grad: Any) -> None:
        """Copy parameter i's gradient in; one fewer to wait for."""
        self.slice(i)[...] = grad
        self.filled[i] = True
        self.pending -= 1

    def fill_missing(self) -> None:
        """Slices nobody filled (parameters unused in this pass) get their current ``.grad``, or zeros."""
        for i, p in enumerate(self.params):
            if not self.filled[i]:
                self.slice(i)[...] = 0 if p.grad is None else p.grad
                self.filled[i] = True


def assign_buckets(params: Iterable[Parameter], cap_bytes: int) -> list[Bucket]:
    """Group ``params`` (already in reverse registration order) into consecutive buckets.

    A bucket is closed once it holds at least ``cap_bytes``, or when the next
    parameter has another dtype or device (a flat array has one of each). A
    parameter bigger than the cap gets a bucket of its own.
    """
    buckets: list[Bucket] = []
    current: list[Parameter] = []
    size = 0
    for p in params:
        if current and (p.dtype != current[0].dtype or p.device != current[0].device):
            buckets.append(Bucket(current))
            current, size = [], 0
        current.append(p)
        size += p.size * p.dtype.itemsize
        if size >= cap_bytes:
            buckets.append(Bucket(current))
            current, size = [], 0
    if current:
        buckets.append(Bucket(current))
    return buckets
