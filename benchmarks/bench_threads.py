"""What handing work to a second thread costs on this machine.

minires' CPU kernels share their work between threads (``MINIRES_NUM_THREADS``,
default: the cores, at most 2) through :func:`minires.fast.threads.run_chunks`.
NumPy releases CPython's global interpreter lock (GIL) while it loops over
an array, so two threads can compute at once; but every NumPy call starts
and ends under the GIL, and a thread that wants the GIL while the other
holds it goes to sleep until it is released. How much that costs depends on
the machine: waking a sleeping thread takes a few microseconds on a laptop
and tens of microseconds on some virtual machines. This script measures it,
so that the two-thread numbers of ``bench_train_step.py`` can be read
against the machine they came from:

1. hand-off: a lock passed back and forth between two threads (a round
   trip is two wake-ups), a ``ThreadPoolExecutor`` submit + wait, and an
   empty parallel region of ``run_chunks``;
2. short NumPy calls (``np.add(a, b, out=b)`` on arrays of several sizes)
   repeated by one thread alone, by two threads at once (each on its own
   arrays) and by two processes at once. Two threads should take as long per
   PAIR of calls as one thread per call; the processes, which have a GIL
   each, show what the cores themselves can do.

    python benchmarks/bench_threads.py
    python benchmarks/bench_threads.py --repeat 5      # more rounds, less noise
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIZES = (4_096, 65_536, 1_048_576)  # float32 elements: 16 kB, 256 kB, 4 MB
CALL_SECONDS = 0.2  # about how long each loop of NumPy calls runs


def lock_round_trip(trips: int) -> float:
    """Seconds per round trip of a lock-based ping-pong between the caller and one thread."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def partner() -> None:
        for _ in range(trips):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=partner)
    thread.start()
    start = time.perf_counter()
    for _ in range(trips):
        ping.release()
        pong.acquire()
    elapsed = time.perf_counter() - start
    thread.join()
    return elapsed / trips


def executor_round_trip(trips: int) -> float:
    """Seconds per ``submit`` + ``result`` of an empty task on a one-thread pool."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result()
        start = time.perf_counter()
        for _ in range(trips):
            pool.submit(lambda: None).result()
        return (time.perf_counter() - start) / trips


def empty_region(trips: int) -> float | None:
    """Seconds per empty parallel region of ``run_chunks`` on 2 threads (None if it would not use 2)."""
    from minires.fast import threads

    if threads.num_threads() < 2 or threads._blas_controller() is None:
        return None
    work = lambda starts: None  # noqa: E731 (the smallest possible share of work)
    big = 1 << 40  # claim enough work that the region really uses the threads
    threads.run_chunks(np, 2, 1, work, flops=big)
    start = time.perf_counter()
    for _ in range(trips):
        threads.run_chunks(np, 2, 1, work, flops=big)
    return (time.perf_counter() - start) / trips


def _calls(size: int, count: int) -> float:
    """Seconds per ``np.add(a, b, out=b)`` over ``count`` calls on fresh arrays of ``size`` floats."""
    a = np.ones(size, dtype=np.float32)
    b = np.ones(size, dtype=np.float32)
    np.add(a, b, out=b)
    start = time.perf_counter()
    for _ in range(count):
        np.add(a, b, out=b)
    return (time.perf_counter() - start) / count


def _calls_in_process(size: int, count: int, barrier, results) -> None:
    barrier.wait()
    results.put(_calls(size, count))


def numpy_calls(size: int) -> dict:
    """Per-call seconds for one thread, and per-pair seconds for two threads and two processes."""
    alone = _calls(size, 50)
    count = max(50, int(CALL_SECONDS / alone))
    alone = _calls(size, count)

    times = [0.0, 0.0]
    barrier = threading.Barrier(2)

    def timed_thread(i: int) -> None:
        barrier.wait()
        times[i] = _calls(size, count)

    helper = threading.Thread(target=timed_thread, args=(1,))
    helper.start()
    timed_thread(0)
    helper.join()
    two_threads = max(times)

    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    process_barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_calls_in_process, args=(size, count, process_barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    two_processes = max(results.get() for _ in workers)
    for w in workers:
        w.join()
    return {"alone": alone, "threads": two_threads, "processes": two_processes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement; medians are shown")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    os.environ.setdefault("MINIRES_NUM_THREADS", "2")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"cores usable: {cores}; load average before: {os.getloadavg()[0]:.2f}")
    print(f"medians of {args.repeat} rounds; us = microseconds\n")

    def median(fn, *a):
        values = [fn(*a) for _ in range(args.repeat)]
        return None if any(v is None for v in values) else statistics.median(values)

    lock = median(lock_round_trip, 2000)
    pool = median(executor_round_trip, 2000)
    region = median(empty_region, 2000)
    print("| hand-off | us |")
    print("|---|---|")
    print(f"| lock passed to another thread and back (two wake-ups) | {lock * 1e6:.1f} |")
    print(f"| ThreadPoolExecutor submit + result, empty task | {pool * 1e6:.1f} |")
    print("| empty parallel region, minires.fast.threads.run_chunks, 2 threads | "
          + ("not threaded here (one thread, or threadpoolctl missing)" if region is None
             else f"{region * 1e6:.1f}") + " |")

    print("\n| np.add(a, b, out=b), float32 | one thread, us per call | two threads, us per pair of calls "
          "| two processes, us per pair | threads' slowdown vs ideal |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        rounds = [numpy_calls(size) for _ in range(args.repeat)]
        alone, threads, processes = (statistics.median(r[k] for r in rounds) for k in ("alone", "threads",
                                                                                       "processes"))
        print(f"| {size:,} elements ({size * 4 // 1024} kB) | {alone * 1e6:.1f} | {threads * 1e6:.1f} | "
              f"{processes * 1e6:.1f} | {threads / alone:.2f}x |")
    print("\nIdeal: two threads (or processes) take as long per pair of calls as one thread per call (1.00x);"
          " 2.00x means no gain from the second core. Large arrays are limited by memory bandwidth as well.")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
