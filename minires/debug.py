"""Debugging aids: count the host<->device round trips a piece of code makes.

On a GPU, every value read back to the host (``loss.item()``, ``x.numpy()``)
waits for all queued kernels to finish and then copies across the PCIe bus:
a training step that does it once per layer runs at a fraction of the speed
it could. Such round trips are easy to add by accident and invisible in the
code's output, so this module makes them countable::

    import minires.debug
    with minires.debug.count_transfers() as c:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    print(c.count)          # 0: the whole step stayed on the device

What is counted (by one line each in :func:`minires.backend.to_device`,
:meth:`Tensor.numpy` and :meth:`Tensor.item`):

* ``backend.to_device`` calls that really move an array between devices
  (a no-op move to the device the array is already on is not counted);
* every ``Tensor.numpy()`` and ``Tensor.item()`` call, ON ANY DEVICE. On a GPU
  each is a device-to-host copy and a synchronisation; on the CPU it is free,
  but counting it there too lets a CPU-only test prove that a code path would
  make no round trip on a GPU either.

What is NOT counted: reads that bypass those three entry points, such as
``float(array)``, ``int(array)`` or ``bool(array)`` on a raw CuPy array, or a
CuPy operation whose output size depends on the data (boolean-mask indexing,
``nonzero``), which synchronises internally. One such uncounted read happens
in every training step: ``cross_entropy`` checks that every target is a valid
class index, which needs the number of bad targets on the host (a few bytes,
but a synchronisation).

The counter is global to the process: transfers made by other threads (a
data loader prefetching the next batch) during the region are counted too.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import backend

__all__ = ["TransferCounter", "count_transfers", "no_transfers", "total_transfers"]


def total_transfers() -> int:
    """Transfers counted since the process started (see the module docstring for what counts)."""
    return backend._transfer_count[0]


class TransferCounter:
    """The number of transfers since the counter started; frozen when its region ends."""

    def __init__(self) -> None:
        self._start = total_transfers()
        self._end: int | None = None

    @property
    def count(self) -> int:
        """Transfers so far (inside the region) or in the whole region (after it)."""
        end = total_transfers() if self._end is None else self._end
        return end - self._start

    def _stop(self) -> None:
        self._end = total_transfers()

    def __repr__(self) -> str:
        state = "running" if self._end is None else "finished"
        return f"TransferCounter(count={self.count}, {state})"


@contextlib.contextmanager
def count_transfers() -> Iterator[TransferCounter]:
    """Count the host<->device transfers made inside the ``with`` block.

    Yields a :class:`TransferCounter`; read ``.count`` inside the block for the
    count so far, or after it for the block's total. Regions may nest.
    """
    counter = TransferCounter()
    try:
        yield counter
    finally:
        counter._stop()


@contextlib.contextmanager
def no_transfers(what: str = "this region") -> Iterator[TransferCounter]:
    """Like :func:`count_transfers`, but raise ``RuntimeError`` at the end if any happened.

    ``what`` names the region in the error message ("the training step").
    An exception raised inside the block propagates unchanged.
    """
    with count_transfers() as counter:
        yield counter
    if counter.count:
        raise RuntimeError(
            f"{what} made {counter.count} host<->device transfer(s) (to_device moves, Tensor.numpy() or "
            "Tensor.item() calls); on a GPU each one stalls until every queued kernel has finished"
        )
