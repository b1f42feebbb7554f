"""A whole training step, minires (NumPy) vs PyTorch (CPU): time and peak memory.

One step = forward, cross-entropy loss, backward, SGD update (momentum 0.9,
weight decay 1e-4), batch 128, float32, CIFAR ResNet-20 and ResNet-56 with
option-A shortcuts. PyTorch runs the same architecture
(``benchmarks/torch_resnet.py``) with the same weights (minires' state dict
loaded into it) on the same random batch, with ``torch.set_num_threads``
equal to minires' thread count.

Time: both libraries in ONE process, steps ALTERNATING (minires, torch,
minires, ...) after warm-up steps, so that a slow spell of the (shared)
machine hits both; the table reports medians and the fastest step. Before
each minires step the script sleeps 30 ms so that PyTorch's OpenMP threads,
which spin for a while after each parallel region, are idle again (and under
``--kernels reference`` 150 ms before each PyTorch step, for BLAS's threads).

Kernels: minires runs under one kernel set (``--kernels``, set with
:func:`minires.set_kernels`; the header prints it): ``fast`` (default), the
speed plug-ins of :mod:`minires.fast`, or ``reference``, the readable code in
:mod:`minires.kernels`. The step gets the settings that
:func:`minires.fast.training_context` gives a CPU training loop under that set:

* fast: the step runs inside :func:`minires.fast.threads.single_threaded_blas`
  (the kernels bring their own ``--threads`` threads), and
  :func:`minires.fast.allocator.keep_freed_memory` is called before the first
  step (``--malloc glibc`` skips it).
* reference: no kernel threads and glibc's malloc defaults (``--malloc keep``
  asks for the setting anyway); the parallelism is BLAS's own, held to
  ``--threads`` threads during minires' step so that both libraries get the
  same number of threads.

The malloc setting is process-wide, so PyTorch's timed steps, which share
the process, run with it too: the time ratio compares the two under the same
conditions. PyTorch's memory process runs with glibc's defaults, as a
PyTorch user's would.

Memory: each library in its OWN fresh process (so that neither's allocations
or imports count against the other), a few steps, then its peak resident
set size (VmHWM; see ``_peak_mb`` for why not ``ru_maxrss``), interpreter
and imports included. The process's resident
size just before the first step is reported too ("before").

    python benchmarks/bench_train_step.py                       # ResNet-20 and -56
    python benchmarks/bench_train_step.py --models 20 --steps 15
    python benchmarks/bench_train_step.py --kernels reference  # the readable kernels of minires/kernels
    python benchmarks/bench_train_step.py --profile ops         # where minires' step time goes
    python benchmarks/bench_train_step.py --profile cprofile    # the same, by Python function
    python benchmarks/bench_train_step.py --profile threads     # how the kernel threads share the step
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SETTLE_SECONDS = 0.03
# Under --kernels reference minires' parallelism is BLAS's, and OpenBLAS's idle threads spin for about
# 2**28 cycles (~0.1 s) after a threaded call: a pause this long before each PyTorch step lets them go idle
# (measured: PyTorch's ResNet-20 step ~140 ms after 30 ms, ~100 ms after 150 ms, as after a fast-set step).
BLAS_SETTLE_SECONDS = 0.15
BATCH = 128
NUM_CLASSES = 10
KERNEL_SETS = ("reference", "fast")


# ---------------------------------------------------------------------------
# The two training steps
# ---------------------------------------------------------------------------


def make_batch(batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int64)
    return images, labels


def use_kernel_set(kernels: str) -> str:
    """Make ``kernels`` minires' active kernel set (:func:`minires.set_kernels`); returns the active set."""
    import minires as mr

    if not hasattr(mr, "set_kernels"):  # an older minires (to time a baseline): one set, the fast one
        if kernels != "fast":
            raise SystemExit(f"this minires has no kernel sets (minires.set_kernels): --kernels {kernels} "
                             "cannot be timed with it; use --kernels fast")
        return "fast (this minires has no kernel sets)"
    mr.set_kernels(kernels)
    return mr.get_kernels()


def default_malloc(kernels: str) -> str:
    """What a Trainer does to malloc under ``kernels`` (:func:`minires.fast.training_context`)."""
    return "keep" if kernels == "fast" else "glibc"


def _single_threaded_blas() -> Callable[[], Any]:
    try:
        from minires.fast.threads import single_threaded_blas
    except ImportError:  # an older minires (to time a baseline)
        try:
            from minires.kernels.conv import single_threaded_blas
        except ImportError:  # older still: the same setting, spelled out
            return lambda: _blas_limited_to(1)
    return single_threaded_blas


def _blas_limited_to(threads: int) -> Any:
    """A context that holds BLAS to ``threads`` threads (does nothing without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, "blas")


def _keep_freed_memory() -> None:
    try:
        from minires.fast.allocator import keep_freed_memory
    except ImportError:  # an older minires (to time a baseline)
        try:
            from minires.allocator import keep_freed_memory
        except ImportError:  # older still: no such setting
            return
    keep_freed_memory()


def minires_step(depth: int, batch: int, keep_memory: bool = True, kernels: str = "fast",
                 threads: int | None = None) -> tuple[Callable[[], float], Any]:
    """(step function returning the loss, the model) for minires under kernel set ``kernels``.

    The step gets what :func:`minires.fast.training_context` gives a training
    loop on the CPU (module docstring): under ``fast``, BLAS on one thread
    during the step; under ``reference``, BLAS held to ``threads`` threads
    (None: BLAS's own default). ``keep_memory``: call keep_freed_memory first.
    """
    import minires as mr
    import minires.nn.functional as F
    from minires import models, optim

    use_kernel_set(kernels)
    if kernels == "fast":
        blas = _single_threaded_blas()
    elif threads is None:
        blas = contextlib.nullcontext
    else:
        blas = lambda: _blas_limited_to(threads)  # noqa: E731
    if keep_memory:
        _keep_freed_memory()
    model = models.resnet_cifar(depth, num_classes=NUM_CLASSES, seed=0)
    model.train()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = make_batch(batch)
    x, y = mr.Tensor(images), mr.Tensor(labels)

    def step() -> float:
        with blas():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.item())

    return step, model


def torch_step(depth: int, batch: int, state: dict | None) -> Callable[[], float]:
    """Step function for PyTorch; ``state``: a minires state dict to start from (None: torch's init)."""
    import torch

    sys.path.insert(0, str(HERE))
    from torch_resnet import cifar_resnet, load_minires_state

    model = cifar_resnet(depth, NUM_CLASSES)
    if state is not None:
        load_minires_state(model, state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = make_batch(batch)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)

    def step() -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# Memory: one fresh process per library and model
# ---------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; NaN where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # the file says kB
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def _peak_mb() -> float:
    """Peak resident set size of THIS process image, in MB.

    Linux's ``getrusage().ru_maxrss`` is inherited across fork and kept across
    exec, so a child started by a big parent reports at least the parent's
    size at the fork (we saw both libraries "peak" at exactly the parent's
    745 MB). VmHWM, the high-water mark of the current address space, starts
    afresh at exec. ru_maxrss is the fallback elsewhere.
    """
    hwm = _status_mb("VmHWM")
    if hwm == hwm:  # not NaN
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux, bytes on macOS


def child_memory(lib: str, depth: int, batch: int, steps: int, threads: int, keep_memory: bool = True,
                 kernels: str = "fast") -> None:
    """Runs in the child process: build, take ``steps`` steps, print JSON with the peak RSS."""
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        step = torch_step(depth, batch, None)
    else:
        step, _ = minires_step(depth, batch, keep_memory, kernels, threads)
    before = _status_mb("VmRSS")
    for _ in range(steps):
        step()
    peak = _peak_mb()
    print(json.dumps({"before_mb": before, "peak_mb": peak}))


def measure_memory(lib: str, depth: int, batch: int, steps: int, threads: int, malloc: str = "keep",
                   kernels: str = "fast") -> dict:
    env = dict(os.environ, MINIRES_NUM_THREADS=str(threads), MINIRES_KERNELS=kernels)
    cmd = [sys.executable, __file__, "--child", lib, "--models", str(depth), "--batch", str(batch),
           "--steps", str(steps), "--threads", str(threads), "--malloc", malloc, "--kernels", kernels]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {lib} resnet{depth} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Profiling minires' step
# ---------------------------------------------------------------------------


def _all_functions():
    from minires.function import Function

    seen, stack = [], list(Function.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def profile_ops(step: Callable[[], float], steps: int) -> None:
    """Wrap every Function's forward/backward with a timer; print totals per op and the rest (overhead)."""
    totals: dict[tuple[str, str], list[float]] = {}

    def wrap(cls, kind):
        original = cls.__dict__[kind].__func__

        def timed_fn(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                entry = totals.setdefault((cls.__name__, kind), [0.0, 0])
                entry[0] += time.perf_counter() - start
                entry[1] += 1

        setattr(cls, kind, staticmethod(timed_fn))
        return original

    restore = []
    for cls in _all_functions():
        for kind in ("forward", "backward"):
            if kind in cls.__dict__:
                restore.append((cls, kind, wrap(cls, kind)))
    try:
        step()  # warm-up
        totals.clear()
        wall = sum(timed(step) for _ in range(steps)) / steps
    finally:
        for cls, kind, original in restore:
            setattr(cls, kind, staticmethod(original))
    rows = sorted(((v[0] / steps, v[1] // steps, k) for k, v in totals.items()), reverse=True)
    inside = sum(r[0] for r in rows)
    print(f"minires step: {wall * 1e3:.1f} ms per step (mean of {steps}); inside Function.forward/backward "
          f"{inside * 1e3:.1f} ms; outside (autograd bookkeeping, optimizer, Python): {(wall - inside) * 1e3:.1f} ms")
    print(f"{'op':<28} {'pass':<9} {'calls':>5} {'ms/step':>8} {'share':>6}")
    for seconds, calls, (name, kind) in rows:
        print(f"{name:<28} {kind:<9} {calls:>5} {seconds * 1e3:>8.1f} {seconds / wall:>6.1%}")


def profile_threads(step: Callable[[], float], steps: int) -> None:
    """Time every parallel region of the step and what each kernel thread does in it.

    The kernels share their work among threads through ONE function,
    :func:`minires.fast.threads.run_chunks` (a "region": the caller hands
    each worker its chunks, works on its own share, then waits for the
    workers). This wraps it, for the duration of the profile, in every
    module of :mod:`minires.fast` that holds it (those that imported it by
    name: conv, batch_norm, relu; and threads itself), and records per
    region its wall time and, per thread, when it started working and for
    how long. What the summary means:

    * busy, summed: the work of all threads. Compare it with the same line
      of a ``--threads 1`` run: the difference is what sharing costs (on
      CPython mostly the GIL, which every NumPy call takes back when it
      returns, so a thread may wait for the other to let it go).
    * imbalance: per region, how much longer the busiest thread worked than
      the least busy one; the caller's share of the region ends only then.
    * late start: per region, how long after the region began the last
      thread started working (waking a sleeping thread is not free).
    * a perfect split: busy / threads for the regions, plus everything that
      runs on one thread anyway. The best these threads could do.
    """
    import threading

    from minires.fast import batch_norm, conv, relu, threads  # noqa: F401  (imported: they hold run_chunks)

    original = threads.run_chunks
    users = [m for name, m in sorted(sys.modules.items())
             if (name == "minires.fast" or name.startswith("minires.fast.")) and m is not None
             and getattr(m, "run_chunks", None) is original]
    regions: list[tuple[float, list[tuple[float, float]]]] = []  # (wall, [(start offset, busy) per thread])

    def traced(xp, n_items, chunk, work, flops=0):
        begin = time.perf_counter()
        spans: list[tuple[float, float]] = []
        lock = threading.Lock()

        def timed_work(starts):
            start = time.perf_counter()
            try:
                return work(starts)
            finally:
                with lock:
                    spans.append((start - begin, time.perf_counter() - start))

        try:
            return original(xp, n_items, chunk, timed_work, flops)
        finally:
            regions.append((time.perf_counter() - begin, spans))

    for module in users:
        module.run_chunks = traced
    walls, summaries = [], []
    try:
        step()  # warm-up
        for _ in range(steps):
            regions.clear()
            walls.append(timed(step))
            summaries.append(_summarise_regions(regions, walls[-1]))
    finally:
        for module in users:
            module.run_chunks = original
    threads = max((s["threads"] for s in summaries), default=1)
    rows = [
        ("step", "step"),
        (f"parallel regions ({summaries[0]['parallel']} per step): wall", "parallel_wall"),
        ("  threads' busy time, summed", "busy"),
        ("  imbalance (busiest minus least busy thread), summed", "imbalance"),
        ("  late start of the last thread, summed", "late"),
        (f"regions run by the caller alone ({summaries[0]['serial']} per step: one thread, or too little work)",
         "serial_wall"),
        ("outside every region (autograd, optimizer, small ops, Python)", "outside"),
        (f"step with a perfect split of the busy time (busy / {threads} + the rest)", "perfect"),
    ]
    print(f"minires step with {threads} kernel thread(s), ms per step: median and fastest of {steps} steps")
    print(f"{'':<82} {'ms':>7} {'fastest':>9}")
    for label, key in rows:
        values = [s[key] * 1e3 for s in summaries]
        print(f"{label:<82} {statistics.median(values):>7.1f} {min(values):>9.1f}")


def _summarise_regions(regions: list, wall: float) -> dict:
    """One step's regions (see :func:`profile_threads`) as the totals it prints, in seconds."""
    parallel = [(w, spans) for w, spans in regions if len(spans) > 1]
    serial_wall = sum(w for w, spans in regions if len(spans) <= 1)
    parallel_wall = sum(w for w, _ in parallel)
    busy = sum(b for _, spans in parallel for _, b in spans)
    threads = max((len(spans) for _, spans in parallel), default=1)
    outside = wall - parallel_wall - serial_wall
    return {
        "step": wall,
        "parallel": len(parallel),
        "serial": len(regions) - len(parallel),
        "threads": threads,
        "parallel_wall": parallel_wall,
        "busy": busy,
        "imbalance": sum(max(b for _, b in spans) - min(b for _, b in spans) for _, spans in parallel),
        "late": sum(max(s for s, _ in spans) for _, spans in parallel),
        "serial_wall": serial_wall,
        "outside": outside,
        "perfect": busy / threads + serial_wall + outside,
    }


def profile_cprofile(step: Callable[[], float], steps: int) -> None:
    step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def machine_lines(threads: int, kernels: str = "fast") -> list[str]:
    import numpy as np

    lines = [f"python {platform.python_version()}, numpy {np.__version__}"]
    try:
        import torch

        lines[0] += f", torch {torch.__version__}"
    except ImportError:
        lines[0] += ", torch not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    ours = (f"minires MINIRES_NUM_THREADS={threads} kernel threads, BLAS on one thread" if kernels == "fast"
            else f"minires BLAS held to {threads} (the reference kernels have no threads of their own)")
    lines.append(f"threads: {ours}, torch.set_num_threads({threads}); cores usable: {cores}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="20,56", help="comma-separated CIFAR ResNet depths (default 20,56)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per library and model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per library first")
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--memory-steps", type=int, default=3, help="steps in each memory process")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-torch", action="store_true", help="time minires alone")
    parser.add_argument("--profile", choices=["ops", "cprofile", "threads"],
                        help="profile minires' step instead: by op, by Python function, or its parallel regions")
    parser.add_argument("--kernels", choices=KERNEL_SETS, default="fast",
                        help="minires' kernel set (minires.set_kernels): fast, the plug-ins of minires.fast "
                             "(default, whatever MINIRES_KERNELS says), or reference, the code in minires/kernels")
    parser.add_argument("--malloc", choices=["keep", "glibc"], default=None,
                        help="keep: minires.fast.allocator.keep_freed_memory(); glibc: its defaults "
                             "(default: what a Trainer does, keep under --kernels fast, glibc under reference)")
    parser.add_argument("--child", choices=["minires", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.profile == "threads" and args.kernels != "fast":
        parser.error("--profile threads times the fast kernels' parallel regions: the reference kernels "
                     "have none (use --kernels fast)")
    if args.malloc is None:
        args.malloc = default_malloc(args.kernels)
    try:
        depths = [int(d.strip().removeprefix("resnet")) for d in args.models.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--models must be depths such as 20,56; got {args.models!r}")
    # Before minires is imported anywhere: its kernels read these.
    os.environ["MINIRES_NUM_THREADS"] = str(args.threads)
    os.environ["MINIRES_KERNELS"] = args.kernels
    keep = args.malloc == "keep"

    if args.child:
        child_memory(args.child, depths[0], args.batch, args.steps, args.threads, keep, args.kernels)
        return 0

    active = use_kernel_set(args.kernels)
    if args.profile:
        print(f"minires kernels: {active}")
        for depth in depths:
            step, _ = minires_step(depth, args.batch, keep, args.kernels, args.threads)
            print(f"== resnet{depth}, batch {args.batch}")
            profiler = {"ops": profile_ops, "cprofile": profile_cprofile, "threads": profile_threads}[args.profile]
            profiler(step, args.steps)
        return 0

    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: timing minires alone", file=sys.stderr)
            use_torch = False
        else:
            torch.set_num_threads(args.threads)
    print(f"minires kernels: {active} (minires.set_kernels; --kernels {'|'.join(KERNEL_SETS)})")
    print("\n".join(machine_lines(args.threads, args.kernels)))
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    malloc = ("minires.fast.allocator.keep_freed_memory() (process-wide, PyTorch timed with it too)" if keep
              else "glibc defaults")
    print(f"malloc: {malloc}")
    print(f"batch {args.batch}, float32, {args.steps} alternating timed steps after {args.warmup} warm-up "
          "steps each; times in ms\n")

    rows = []
    for depth in depths:
        step, model = minires_step(depth, args.batch, keep, args.kernels, args.threads)
        theirs = torch_step(depth, args.batch, model.state_dict()) if use_torch else None
        for _ in range(args.warmup):
            step()
            if theirs is not None:
                theirs()
        ours_t, theirs_t = [], []
        for _ in range(args.steps):
            time.sleep(SETTLE_SECONDS)
            ours_t.append(timed(step))
            if theirs is not None:
                if args.kernels == "reference":
                    time.sleep(BLAS_SETTLE_SECONDS)
                theirs_t.append(timed(theirs))
        row = {"model": f"resnet{depth}", "ours_med": statistics.median(ours_t) * 1e3, "ours_min": min(ours_t) * 1e3}
        if theirs_t:
            row.update(theirs_med=statistics.median(theirs_t) * 1e3, theirs_min=min(theirs_t) * 1e3)
        if not args.no_memory:
            row["ours_mem"] = measure_memory("minires", depth, args.batch, args.memory_steps, args.threads,
                                             args.malloc, args.kernels)
            if use_torch:
                row["theirs_mem"] = measure_memory("torch", depth, args.batch, args.memory_steps, args.threads,
                                                   "glibc")
        rows.append(row)
        print(f"  resnet{depth}: minires {row['ours_med']:.0f} ms"
              + (f", torch {row['theirs_med']:.0f} ms" if theirs_t else ""), file=sys.stderr, flush=True)

    nan = float("nan")
    header = ["model", "minires ms (median)", "torch ms (median)", "time ratio", "minires ms (fastest)",
              "torch ms (fastest)", "minires peak MB", "torch peak MB", "memory ratio"]
    table = []
    for r in rows:
        om, tm = r.get("ours_mem", {}), r.get("theirs_mem", {})
        op, tp = om.get("peak_mb", nan), tm.get("peak_mb", nan)
        table.append([r["model"], f"{r['ours_med']:.0f}", f"{r.get('theirs_med', nan):.0f}",
                      f"{r['ours_med'] / r.get('theirs_med', nan):.2f}", f"{r['ours_min']:.0f}",
                      f"{r.get('theirs_min', nan):.0f}", f"{op:.0f} (before {om.get('before_mb', nan):.0f})",
                      f"{tp:.0f} (before {tm.get('before_mb', nan):.0f})", f"{op / tp:.2f}"])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in table:
        print("| " + " | ".join(cells) + " |")
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
          "(this benchmark itself keeps about 2 busy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
