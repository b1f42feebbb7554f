"""Kernel threads for the CPU: a small pool that shares the batch, with BLAS held to one thread.

NumPy copies run on one core and release the GIL; BLAS uses all cores on
its own. The fast kernels split the batch into chunks and deal them to a
pool of threads (:func:`run_chunks`) while BLAS is limited to one thread,
so the threads share the cores instead of queueing behind each other's BLAS
calls. Needs ``threadpoolctl``; without it everything runs on the calling
thread. Why and how much: see README.md in this package.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["num_threads", "run_chunks", "single_threaded_blas"]

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()  # one parallel region at a time (see run_chunks)
_blas_state: dict[str, Any] = {"checked": False, "controller": None}



def _forget_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its threads: work
    # submitted there would wait forever. Start afresh in the child.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)

# Below this many multiply-adds a problem is too small to be worth a thread hand-off (tens of microseconds).
_MIN_PARALLEL_WORK = 1 << 20


def num_threads() -> int:
    """Threads the CPU kernels use: ``MINIRES_NUM_THREADS`` if set, else the usable cores."""
    env = os.environ.get("MINIRES_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MINIRES_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MINIRES_NUM_THREADS must be a positive integer, got {env!r}")
        return value
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blas_controller() -> Any:
    """threadpoolctl's controller, or None when the package is missing."""
    if not _blas_state["checked"]:
        _blas_state["checked"] = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_state["controller"] = None
        else:
            _blas_state["controller"] = ThreadpoolController()
    return _blas_state["controller"]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while the block runs (a whole training step, say).

    Why: after a multi-threaded BLAS call OpenBLAS's worker threads spin for a
    while waiting for more work; in a step that alternates BLAS calls with
    NumPy copies and with :func:`run_chunks` regions those spinning threads
    steal the cores from the code that runs next (README.md). The
    convolutions get their parallelism from :func:`run_chunks` instead. A no-op without
    ``threadpoolctl``. Restores the previous BLAS thread count on exit.
    """
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def run_chunks(xp: Any, n_items: int, chunk: int, work: Callable[[list[int]], Any], flops: int = 0) -> list[Any]:
    """Split ``range(n_items)`` into chunks of ``chunk`` and hand them to ``work``.

    ``work(starts)`` processes the chunks beginning at each index in ``starts``
    (so each thread allocates its scratch buffers once) and returns a value;
    the list of those values (one per thread) is returned.

    On NumPy with more than one thread, ``threadpoolctl`` installed and a
    problem of at least ``_MIN_PARALLEL_WORK`` multiply-adds (``flops``), the
    chunks are dealt round-robin to the threads and BLAS is limited to one
    thread for the duration: the threads then share the cores instead of each
    BLAS call spawning its own. Otherwise all chunks run on the caller's thread.
    """
    starts = list(range(0, n_items, chunk))
    threads = min(num_threads(), len(starts))
    controller = _blas_controller() if xp.__name__ == "numpy" else None
    if threads <= 1 or controller is None or flops < _MIN_PARALLEL_WORK:
        return [work(starts)]
    global _pool, _pool_size
    # The lock makes concurrent callers take turns: two regions at once would
    # oversubscribe the cores, and each would restore BLAS's thread count at
    # a different moment.
    with _pool_lock:
        if _pool is None or _pool_size < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="minires-kernel")
            _pool_size = threads - 1
        with controller.limit(limits=1, user_api="blas"):
            futures = [_pool.submit(work, starts[t::threads]) for t in range(1, threads)]
            try:
                results = [work(starts[0::threads])]  # the caller does its share too
            finally:
                wait(futures)  # never leave a worker writing into buffers after an error here
            results += [f.result() for f in futures]
    return results

