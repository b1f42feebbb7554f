"""Layer timings against PyTorch on every distinct layer shape of a CIFAR ResNet-20.

For conv2d, batch_norm (training mode) and relu, at batch 128 in float32, the
script times the forward pass alone and forward + backward (through autograd,
as in a training step: the first convolution's input, the image, needs no
gradient) in minires and in PyTorch on the CPU, in the same process, with
PyTorch limited to the number of threads minires uses. Runs ALTERNATE between
the two libraries (minires, torch, minires, torch, ...) so that a slow spell of
the machine hits both, and the table reports medians.

The last rows weight each shape by how many times it occurs in ResNet-20
(19 convolutions, 19 batch norms, 19 ReLUs) to give the total a training step
spends in these layers.

    python benchmarks/bench_layers.py                  # print the table
    python benchmarks/bench_layers.py --repeats 15     # more runs per cell
    python benchmarks/bench_layers.py --update-readme  # also rewrite the section in benchmarks/README.md

Without torch installed only minires is timed. ``MINIRES_NUM_THREADS`` sets
minires' thread count (default: the usable cores); ``MINIRES_KERNELS`` its
kernel set (default ``fast``; the header prints the active set).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import minires as mr
import minires.nn.functional as F
from minires.fast import threads

try:
    import torch
except ImportError:  # the script still times minires alone
    torch = None

README = Path(__file__).resolve().parent / "README.md"
sys.path.insert(0, str(README.parent))  # benchmarks/ is not a package; run as a script
from readme_section import render_table, update_section  # noqa: E402

SECTION = "## Layers (bench_layers.py)"

# (C_in, C_out, input size, stride, how many in ResNet-20). Every conv is 3x3, padding 1, no bias.
CONVS = [
    (3, 16, 32, 1, 1),
    (16, 16, 32, 1, 6),
    (16, 32, 32, 2, 1),
    (32, 32, 16, 1, 5),
    (32, 64, 16, 2, 1),
    (64, 64, 8, 1, 5),
]
# Activation shapes (C, size, count): a BN after every conv; a ReLU after the
# stem BN and two per basic block (after its first BN and after the addition).
BATCH_NORMS = [(16, 32, 7), (32, 16, 6), (64, 8, 6)]
RELUS = [(16, 32, 7), (32, 16, 6), (64, 8, 6)]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# Pause before each minires call: after a parallel region PyTorch's OpenMP
# threads keep spinning (libgomp's default is tens of milliseconds), waiting
# for more work, and would steal a core from minires' threads. minires leaves
# nothing spinning, so PyTorch's calls need no pause.
SETTLE_SECONDS = 0.03


def alternate(ours: Callable[[], Any], theirs: Callable[[], Any] | None, repeats: int) -> tuple[list, list]:
    """Time ours and theirs alternately (after one warm-up call each); returns both lists of seconds."""
    ours()
    if theirs is not None:
        theirs()
    a, b = [], []
    for _ in range(repeats):
        time.sleep(SETTLE_SECONDS)
        a.append(timed(ours))
        if theirs is not None:
            b.append(timed(theirs))
    return a, b


def conv_cases(batch: int, rng: np.random.Generator):
    for c_in, c_out, size, stride, count in CONVS:
        x = rng.standard_normal((batch, c_in, size, size)).astype(np.float32)
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
        out = size // stride
        g = rng.standard_normal((batch, c_out, out, out)).astype(np.float32)
        first = c_in == 3  # the image needs no gradient
        label = f"conv {c_in}->{c_out} {size}x{size} s{stride}"

        def ours_f(x=x, w=w, stride=stride):
            with mr.no_grad():
                F.conv2d(mr.Tensor(x), mr.Tensor(w), None, stride, 1)

        def ours_fb(x=x, w=w, g=g, stride=stride, first=first):
            xt, wt = mr.Tensor(x, requires_grad=not first), mr.Tensor(w, requires_grad=True)
            F.conv2d(xt, wt, None, stride, 1).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            tx, tw, tg = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(g)

            def theirs_f(tx=tx, tw=tw, stride=stride):
                with torch.no_grad():
                    torch.nn.functional.conv2d(tx, tw, None, stride, 1)

            def theirs_fb(tx=tx, tw=tw, tg=tg, stride=stride, first=first):
                a, b = tx.detach().requires_grad_(not first), tw.detach().requires_grad_(True)
                torch.nn.functional.conv2d(a, b, None, stride, 1).backward(tg)

        yield label, count, ours_f, ours_fb, theirs_f, theirs_fb


def bn_cases(batch: int, rng: np.random.Generator):
    for c, size, count in BATCH_NORMS:
        x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        label = f"batch_norm {c}x{size}x{size}"

        def ours_f(x=x, c=c):
            with mr.no_grad():
                F.batch_norm(mr.Tensor(x), np.zeros(c, np.float32), np.ones(c, np.float32),
                             mr.Tensor(gamma), mr.Tensor(beta), training=True)

        def ours_fb(x=x, g=g, c=c):
            xt = mr.Tensor(x, requires_grad=True)
            wt, bt = mr.Tensor(gamma, requires_grad=True), mr.Tensor(beta, requires_grad=True)
            F.batch_norm(xt, np.zeros(c, np.float32), np.ones(c, np.float32), wt, bt, training=True).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            tx, tg = torch.from_numpy(x), torch.from_numpy(g)

            def theirs_f(tx=tx, c=c):
                with torch.no_grad():
                    torch.nn.functional.batch_norm(tx, torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c),
                                                   training=True)

            def theirs_fb(tx=tx, tg=tg, c=c):
                a = tx.detach().requires_grad_(True)
                w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
                torch.nn.functional.batch_norm(a, torch.zeros(c), torch.ones(c), w, b, training=True).backward(tg)

        yield label, count, ours_f, ours_fb, theirs_f, theirs_fb


def relu_cases(batch: int, rng: np.random.Generator):
    for c, size, count in RELUS:
        x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        label = f"relu {c}x{size}x{size}"

        def ours_f(x=x):
            with mr.no_grad():
                F.relu(mr.Tensor(x))

        def ours_fb(x=x, g=g):
            F.relu(mr.Tensor(x, requires_grad=True)).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            tx, tg = torch.from_numpy(x), torch.from_numpy(g)

            def theirs_f(tx=tx):
                with torch.no_grad():
                    torch.relu(tx)

            def theirs_fb(tx=tx, tg=tg):
                torch.relu(tx.detach().requires_grad_(True)).backward(tg)

        yield label, count, ours_f, ours_fb, theirs_f, theirs_fb


def machine_description() -> list[str]:
    lines = [f"python {platform.python_version()}, numpy {np.__version__}"
             + (f", torch {torch.__version__}" if torch is not None else ", torch not installed")]
    controller = threads._blas_controller()
    if controller is not None:
        for info in controller.info():
            if info.get("user_api") == "blas":
                lines.append(f"numpy BLAS: {info.get('internal_api')} {info.get('version')} "
                             f"({info.get('architecture')}), {info.get('num_threads')} threads")
                break
    else:
        lines.append("threadpoolctl not installed: minires runs its chunks on one thread")
    lines.append(f"minires kernel set: {mr.get_kernels()}")
    lines.append(f"minires kernel threads: {threads.num_threads()}"
                 + (f", torch.set_num_threads({torch.get_num_threads()})" if torch is not None else ""))
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        lines += ["lscpu | head:"] + ["    " + line for line in lscpu[:10]]
    except (OSError, subprocess.SubprocessError):
        lines.append(f"cpu: {platform.processor() or 'unknown'}, {os.cpu_count()} logical cores")
    return lines


def run(batch: int, repeats: int, ops: list[str]) -> tuple[list[str], list[str]]:
    """Returns (plain-text table lines, markdown table lines)."""
    rng = np.random.default_rng(0)
    groups = {"conv": conv_cases, "bn": bn_cases, "relu": relu_cases}
    header = ["layer", "count", "fwd minires", "fwd torch", "ratio", "fwd+bwd minires", "fwd+bwd torch", "ratio"]
    rows = []
    totals: dict[str, list[float]] = {}
    for op in ops:
        if op == "bn" and not hasattr(F, "batch_norm"):
            print("batch_norm is not available in minires.nn.functional: skipping its rows", file=sys.stderr)
            continue
        for label, count, ours_f, ours_fb, theirs_f, theirs_fb in groups[op](batch, rng):
            a, b = alternate(ours_f, theirs_f, repeats)
            c, d = alternate(ours_fb, theirs_fb, repeats)
            med = [statistics.median(v) * 1e3 if v else float("nan") for v in (a, b, c, d)]
            best = [min(v) * 1e3 if v else float("nan") for v in (a, b, c, d)]
            rows.append([label, str(count), f"{med[0]:.2f}", f"{med[1]:.2f}", f"{med[0] / med[1]:.2f}",
                         f"{med[2]:.2f}", f"{med[3]:.2f}", f"{med[2] / med[3]:.2f}"])
            for key in (op, "all"):
                acc = totals.setdefault(key, [0.0] * 8)
                for i in range(4):
                    acc[i] += count * med[i]
                    acc[4 + i] += count * best[i]
            print("  " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
    names = {"conv": "conv2d", "bn": "batch_norm", "relu": "relu", "all": "all three"}
    for key in [op for op in ops if op in totals] + ["all"]:
        if key not in totals or (key == "all" and len(totals) <= 2):
            continue  # "all" only when more than one kind of layer was timed
        acc = totals[key]
        rows.append([f"**ResNet-20 total, {names[key]}**", "", f"{acc[0]:.1f}", f"{acc[1]:.1f}",
                     f"{acc[0] / acc[1]:.2f}", f"{acc[2]:.1f}", f"{acc[3]:.1f}", f"{acc[2] / acc[3]:.2f}"])
    for key in [op for op in ops if op in totals] + ["all"]:
        if key not in totals or (key == "all" and len(totals) <= 2):
            continue
        acc = totals[key][4:]
        rows.append([f"ResNet-20 total, {names[key]}, fastest runs", "", f"{acc[0]:.1f}", f"{acc[1]:.1f}",
                     f"{acc[0] / acc[1]:.2f}", f"{acc[2]:.1f}", f"{acc[3]:.1f}", f"{acc[2] / acc[3]:.2f}"])
    return render_table(header, rows)


def update_readme(section_body: str) -> None:
    """Replace (or append) the ``## Layers (bench_layers.py)`` section, leaving the rest untouched."""
    update_section(SECTION, section_body, README)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per cell (each library)")
    parser.add_argument("--ops", default="conv,bn,relu", help="comma-separated subset of conv,bn,relu")
    parser.add_argument("--update-readme", action="store_true", help=f"rewrite '{SECTION}' in {README}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: minires' MINIRES_NUM_THREADS or the usable cores)")
    parser.add_argument("--note", default="",
                        help="a paragraph appended to the README section (e.g. how busy the machine was)")
    args = parser.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(ops) - {"conv", "bn", "relu"}
    if unknown:
        parser.error(f"unknown --ops entries {sorted(unknown)}; choose from conv, bn, relu")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        os.environ["MINIRES_NUM_THREADS"] = str(args.threads)
        controller = threads._blas_controller()
        if controller is not None:
            controller.limit(limits=args.threads, user_api="blas")  # stays in force for this process
    if torch is not None:
        torch.set_num_threads(threads.num_threads())
    machine = machine_description()
    print("\n".join(machine))
    print(f"batch {args.batch}, float32, median of {args.repeats} alternating runs per cell, times in ms\n")
    text, markdown = run(args.batch, args.repeats, ops)
    print("\n".join(text))
    if args.update_readme:
        body = "\n".join([
            f"`python benchmarks/bench_layers.py --repeats {args.repeats}"
            + (f" --threads {args.threads}" if args.threads is not None else "")
            + f"`: batch {args.batch}, float32, "
            "milliseconds, median of alternating runs (minires, torch, minires, ...; a 30 ms pause before each "
            "minires run lets PyTorch's spinning OpenMP threads go idle). Ratio = minires / torch "
            "(below 1: minires is faster). Totals weight each shape by its count in ResNet-20; the "
            "'fastest runs' rows sum each cell's minimum instead of its median (less sensitive to other load).",
            "",
            *markdown,
            "",
            "Machine:",
            "",
            "```",
            *machine,
            "```",
            *(["", args.note] if args.note else []),
        ])
        update_readme(body)
        print(f"\nwrote the '{SECTION}' section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
