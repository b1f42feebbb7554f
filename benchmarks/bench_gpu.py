"""GPU timings: minires (CuPy + its CUDA kernels) against PyTorch eager on the same GPU, same run.

minires runs under its active kernel set (``MINIRES_KERNELS``, default
``fast``: the hand-written CUDA kernels of :mod:`minires.cuda`; ``reference``
times the array code of :mod:`minires.kernels` on CuPy instead); the header
prints it.

Two tables, batch 128, float32:

1. Layers: conv2d, batch_norm (training mode) and relu at every distinct
   layer shape of a CIFAR ResNet-20, forward alone and forward + backward
   through autograd, as in a training step. The last rows weight each shape by
   how often it occurs in ResNet-20.
2. A ResNet-20 training epoch: 390 steps of 128 images (SGD, momentum 0.9,
   weight decay 1e-4) on 50,000 images already on the GPU: the real CIFAR-10
   training set when it is found (``--data-dir``, default location of
   ``minires.data.load_cifar10``), else synthetic random images (the timing
   does not depend on the pixel values). Plus, for minires, one epoch of its
   DataLoader alone (random crop + flip on the GPU, ``minires train``'s input
   pipeline).

Timing: every measurement synchronises the GPU before starting the clock and
before stopping it (kernels run asynchronously: without the synchronisation
one would time the Python that queues them), after warm-up calls that also
pay for CuPy's kernel compilation and PyTorch's cuDNN/cuBLAS setup. Layer
cells are medians of ``--repeats`` runs of ``--inner`` calls each, alternating
between the two libraries. TF32 is switched off in PyTorch (``--tf32`` allows
it) so that both libraries multiply in true float32; CuPy does not use TF32
unless ``CUPY_TF32=1`` is set.

    python benchmarks/bench_gpu.py                    # both tables
    python benchmarks/bench_gpu.py --skip-epoch       # layers only (a few seconds)
    python benchmarks/bench_gpu.py --update-readme    # also rewrite the GPU section of benchmarks/README.md

Exit status: 0 after printing the tables; 2, with the reason on standard
error, where no GPU is usable (no CuPy, no driver, no device). Without a
CUDA build of PyTorch only minires is timed (the reason is printed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import minires as mr
import minires.debug
from minires import backend, models
from minires.nn import functional as F
from minires.optim import SGD

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper, also when imported by path
from readme_section import render_table, update_section  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
SECTION = "## GPU (bench_gpu.py)"
EXIT_NO_GPU = 2

# (C_in, C_out, input size, stride, how many in ResNet-20). Every conv is 3x3, padding 1, no bias.
CONVS = [(3, 16, 32, 1, 1), (16, 16, 32, 1, 6), (16, 32, 32, 2, 1), (32, 32, 16, 1, 5), (32, 64, 16, 2, 1),
         (64, 64, 8, 1, 5)]
# (C, size, count): a BN after every conv; a ReLU after the stem BN and two per basic block.
BATCH_NORMS = [(16, 32, 7), (32, 16, 6), (64, 8, 6)]
RELUS = [(16, 32, 7), (32, 16, 6), (64, 8, 6)]


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------


def load_torch(index: int, allow_tf32: bool) -> tuple[Any, str | None]:
    """(torch, None) when PyTorch can use CUDA device ``index``, else (None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch is not installed ({exc})"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} cannot use CUDA (CPU-only build or no driver)"
    if index >= torch.cuda.device_count():
        return None, f"PyTorch sees {torch.cuda.device_count()} CUDA device(s), not cuda:{index}"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    return torch, None


def describe(cp: Any, index: int, torch: Any, torch_missing: str | None) -> list[str]:
    props = cp.cuda.runtime.getDeviceProperties(index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    runtime = cp.cuda.runtime.runtimeGetVersion()
    driver = cp.cuda.runtime.driverGetVersion()
    lines = [
        f"GPU cuda:{index}: {name}, compute capability {props['major']}.{props['minor']}, "
        f"{props['totalGlobalMem'] / 2**30:.1f} GiB, {props['multiProcessorCount']} SMs",
        f"CUDA driver {driver // 1000}.{driver % 1000 // 10}, runtime {runtime // 1000}.{runtime % 1000 // 10}; "
        f"CuPy {cp.__version__}; NumPy {np.__version__}; minires {mr.__version__}",
        f"minires kernel set: {mr.get_kernels()} (MINIRES_KERNELS; fast: the CUDA kernels of minires.cuda, "
        "reference: the array code of minires.kernels on CuPy)",
    ]
    if torch is None:
        lines.append(f"PyTorch: not timed: {torch_missing}")
    else:
        cudnn = torch.backends.cudnn.version()
        lines.append(f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn}), eager mode, "
                     f"TF32 {'allowed' if torch.backends.cudnn.allow_tf32 else 'off'}, "
                     f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
    return lines


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def alternate(ours: Callable[[], Any], theirs: Callable[[], Any] | None, sync_ours: Callable[[], None],
              sync_theirs: Callable[[], None] | None, warmup: int, repeats: int, inner: int) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and ``theirs`` (nan when None), timed alternately."""

    def one(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        return (time.perf_counter() - start) / inner

    for _ in range(warmup):
        ours()
        if theirs is not None:
            theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(one(ours, sync_ours))
        if theirs is not None:
            b.append(one(theirs, sync_theirs))
    return statistics.median(a), (statistics.median(b) if b else float("nan"))


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def layer_cases(cp: Any, torch: Any, device: str, batch: int, rng: np.random.Generator):
    """Yield (label, count, ours_fwd, ours_fwd_bwd, theirs_fwd, theirs_fwd_bwd)."""
    tdev = None if torch is None else torch.device(device)

    def both(host: np.ndarray) -> tuple[Any, Any]:
        return cp.asarray(host), (None if torch is None else torch.from_numpy(host).to(tdev))

    for c_in, c_out, size, stride, count in CONVS:
        x, tx = both(rng.standard_normal((batch, c_in, size, size)).astype(np.float32))
        w, tw = both((rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32))
        g, tg = both(rng.standard_normal((batch, c_out, size // stride, size // stride)).astype(np.float32))
        first = c_in == 3  # the image needs no gradient

        def ours_f(x=x, w=w, stride=stride):
            with mr.no_grad():
                F.conv2d(mr.Tensor(x), mr.Tensor(w), None, stride, 1)

        def ours_fb(x=x, w=w, g=g, stride=stride, first=first):
            F.conv2d(mr.Tensor(x, requires_grad=not first), mr.Tensor(w, requires_grad=True), None, stride,
                     1).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            def theirs_f(tx=tx, tw=tw, stride=stride):
                with torch.no_grad():
                    torch.nn.functional.conv2d(tx, tw, None, stride, 1)

            def theirs_fb(tx=tx, tw=tw, tg=tg, stride=stride, first=first):
                a, b = tx.detach().requires_grad_(not first), tw.detach().requires_grad_(True)
                torch.nn.functional.conv2d(a, b, None, stride, 1).backward(tg)

        yield f"conv {c_in}->{c_out} {size}x{size} s{stride}", count, ours_f, ours_fb, theirs_f, theirs_fb

    for c, size, count in BATCH_NORMS:
        x, tx = both(rng.standard_normal((batch, c, size, size)).astype(np.float32))
        g, tg = both(rng.standard_normal((batch, c, size, size)).astype(np.float32))
        gamma, tgamma = both(np.ones(c, np.float32))
        beta, tbeta = both(np.zeros(c, np.float32))
        rmean, rvar = cp.zeros(c, np.float32), cp.ones(c, np.float32)
        if torch is not None:
            trmean, trvar = torch.zeros(c, device=tdev), torch.ones(c, device=tdev)

        def ours_f(x=x, gamma=gamma, beta=beta, rmean=rmean, rvar=rvar):
            with mr.no_grad():
                F.batch_norm(mr.Tensor(x), rmean, rvar, mr.Tensor(gamma), mr.Tensor(beta), training=True)

        def ours_fb(x=x, g=g, gamma=gamma, beta=beta, rmean=rmean, rvar=rvar):
            F.batch_norm(mr.Tensor(x, requires_grad=True), rmean, rvar, mr.Tensor(gamma, requires_grad=True),
                         mr.Tensor(beta, requires_grad=True), training=True).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            def theirs_f(tx=tx, tgamma=tgamma, tbeta=tbeta, trmean=trmean, trvar=trvar):
                with torch.no_grad():
                    torch.nn.functional.batch_norm(tx, trmean, trvar, tgamma, tbeta, training=True)

            def theirs_fb(tx=tx, tg=tg, tgamma=tgamma, tbeta=tbeta, trmean=trmean, trvar=trvar):
                a = tx.detach().requires_grad_(True)
                wt, bt = tgamma.detach().requires_grad_(True), tbeta.detach().requires_grad_(True)
                torch.nn.functional.batch_norm(a, trmean, trvar, wt, bt, training=True).backward(tg)

        yield f"batch_norm {c}x{size}x{size}", count, ours_f, ours_fb, theirs_f, theirs_fb

    for c, size, count in RELUS:
        x, tx = both(rng.standard_normal((batch, c, size, size)).astype(np.float32))
        g, tg = both(rng.standard_normal((batch, c, size, size)).astype(np.float32))

        def ours_f(x=x):
            with mr.no_grad():
                F.relu(mr.Tensor(x))

        def ours_fb(x=x, g=g):
            F.relu(mr.Tensor(x, requires_grad=True)).backward(g)

        theirs_f = theirs_fb = None
        if torch is not None:
            def theirs_f(tx=tx):
                with torch.no_grad():
                    torch.relu(tx)

            def theirs_fb(tx=tx, tg=tg):
                torch.relu(tx.detach().requires_grad_(True)).backward(tg)

        yield f"relu {c}x{size}x{size}", count, ours_f, ours_fb, theirs_f, theirs_fb


def layer_table(cp, torch, device, index, args) -> list[list[str]]:
    sync_ours = cp.cuda.Device(index).synchronize
    sync_theirs = (lambda: torch.cuda.synchronize(index)) if torch is not None else None
    rows, totals = [], {}
    rng = np.random.default_rng(0)
    for label, count, ours_f, ours_fb, theirs_f, theirs_fb in layer_cases(cp, torch, device, args.batch, rng):
        f = alternate(ours_f, theirs_f, sync_ours, sync_theirs, args.warmup, args.repeats, args.inner)
        fb = alternate(ours_fb, theirs_fb, sync_ours, sync_theirs, args.warmup, args.repeats, args.inner)
        ms = [v * 1e3 for v in (*f, *fb)]
        rows.append([label, str(count), cell(ms[0], 3), cell(ms[1], 3), ratio(ms[0], ms[1]),
                     cell(ms[2], 3), cell(ms[3], 3), ratio(ms[2], ms[3])])
        print("  " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
        kind = label.split()[0]
        for key in (kind, "all three"):
            acc = totals.setdefault(key, [0.0] * 4)
            for i in range(4):
                acc[i] += count * ms[i]
    for key in ("conv", "batch_norm", "relu", "all three"):
        acc = totals[key]
        rows.append([f"ResNet-20 total, {key}", "", cell(acc[0], 2), cell(acc[1], 2), ratio(acc[0], acc[1]),
                     cell(acc[2], 2), cell(acc[3], 2), ratio(acc[2], acc[3])])
    return rows


# ---------------------------------------------------------------------------
# A training epoch
# ---------------------------------------------------------------------------


def torch_resnet20(torch: Any) -> Any:
    """ResNet-20 in PyTorch with the paper's option-A shortcuts, as minires builds it."""
    nn = torch.nn

    class PadShortcut(nn.Module):
        def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
            super().__init__()
            self.stride = stride
            self.before = (out_planes - in_planes) // 2
            self.after = out_planes - in_planes - self.before

        def forward(self, x):
            x = x[:, :, ::self.stride, ::self.stride]
            return nn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))

    class Block(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            same = stride == 1 and in_planes == planes
            self.shortcut = nn.Identity() if same else PadShortcut(in_planes, planes, stride)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    planes_in = 16
    for stage, planes in enumerate((16, 32, 64)):
        for j in range(3):
            stride = 2 if stage > 0 and j == 0 else 1
            layers.append(Block(planes_in, planes, stride))
            planes_in = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def training_images(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images (N, 3, 32, 32), int64 labels, description)."""
    try:
        from minires.data import load_cifar10

        data = load_cifar10(args.data_dir, download=False)
        return data.train_images, np.asarray(data.train_labels, dtype=np.int64), "CIFAR-10 training set"
    except Exception as exc:  # noqa: BLE001 - any reason to lack the data set means synthetic data
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(args.epoch_images, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=args.epoch_images).astype(np.int64)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return images, labels, f"synthetic random images (no CIFAR-10: {why[:60]}...)"


def epoch_table(cp, torch, device, index, args) -> tuple[list[list[str]], list[str]]:
    from minires.data import DataLoader, standard_augment
    from minires.data.transforms import normalize

    images, labels, source = training_images(args)
    n = images.shape[0]
    batch = args.batch
    steps = n // batch
    notes = [f"epoch data: {n} {source}; {steps} steps of {batch} (the last partial batch dropped), "
             "fixed order, no augmentation inside the timed steps; median of "
             f"{args.epochs} epoch(s) after {args.warmup_steps} warm-up steps"]
    sync_ours = cp.cuda.Device(index).synchronize

    def run_epochs(step: Callable[[int], None], sync: Callable[[], None]) -> float:
        for i in range(args.warmup_steps):
            step(i % steps)
        times = []
        for _ in range(args.epochs):
            sync()
            start = time.perf_counter()
            for i in range(steps):
                step(i)
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def minires_epochs() -> tuple[float, int]:
        """(median epoch seconds, host<->device transfers) for minires; its arrays are freed on return."""
        # The whole normalised training set on the GPU, batches are slices of it.
        x_all = normalize(cp.asarray(images))
        y_all = cp.asarray(labels)
        model = models.create("resnet20", seed=0).to(device=device)
        model.train()
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def ours_step(i: int) -> None:
            xb, yb = mr.Tensor(x_all[i * batch:(i + 1) * batch]), mr.Tensor(y_all[i * batch:(i + 1) * batch])
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        with minires.debug.count_transfers() as transfers:
            seconds = run_epochs(ours_step, sync_ours)
        return seconds, transfers.count

    ours, transfer_count = minires_epochs()
    notes.append(f"host<->device transfers counted by minires.debug during the minires epochs: {transfer_count}")
    cp.get_default_memory_pool().free_all_blocks()

    theirs = float("nan")
    if torch is not None:
        tdev = torch.device(device)
        mean = torch.tensor((0.49127, 0.48210, 0.44652), device=tdev).view(1, 3, 1, 1)
        std = torch.tensor((0.24543, 0.24286, 0.26073), device=tdev).view(1, 3, 1, 1)
        tx_all = (torch.from_numpy(images).to(tdev).float() / 255.0 - mean) / std
        ty_all = torch.from_numpy(labels).to(tdev)
        torch.manual_seed(0)
        tmodel = torch_resnet20(torch).to(tdev).train()
        toptim = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

        def theirs_step(i: int) -> None:
            out = tmodel(tx_all[i * batch:(i + 1) * batch])
            loss = torch.nn.functional.cross_entropy(out, ty_all[i * batch:(i + 1) * batch])
            toptim.zero_grad(set_to_none=True)
            loss.backward()
            toptim.step()

        theirs = run_epochs(theirs_step, lambda: torch.cuda.synchronize(index))
        del tx_all, ty_all, tmodel, toptim
        torch.cuda.empty_cache()

    rows = [["ResNet-20 epoch, training steps", cell(ours, 2), cell(theirs, 2), ratio(ours, theirs),
             cell(steps * batch / ours, 0), cell(steps * batch / theirs, 0)]]

    if not args.skip_loader:
        loader = DataLoader(images, labels, batch_size=batch, shuffle=True, drop_last=True, seed=0,
                            augment=standard_augment, device=device, prefetch=1)
        for i, _ in enumerate(loader):  # warm-up epoch (kernel compilation), cut short
            if i >= args.warmup_steps:
                break
        sync_ours()
        start = time.perf_counter()
        for _ in loader:
            pass
        sync_ours()
        seconds = time.perf_counter() - start
        rows.append(["minires DataLoader alone (crop + flip on the GPU)", f"{seconds:.2f}", "", "",
                     f"{steps * batch / seconds:.0f}", ""])
    return rows, notes


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def cell(value: float, digits: int) -> str:
    """A table cell: the value with ``digits`` decimals, or n/a for NaN (a library not timed)."""
    return f"{value:.{digits}f}" if value == value else "n/a"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs == theirs and theirs > 0 else "n/a"


def update_readme(body: str) -> None:
    """Replace (or append) the GPU section of benchmarks/README.md atomically, leaving the rest untouched."""
    update_section(SECTION, body, README)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default cuda)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per layer cell and library")
    parser.add_argument("--inner", type=int, default=10, help="calls per timed run (between two synchronisations)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before a layer cell")
    parser.add_argument("--skip-epoch", action="store_true", help="time the layers only")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per library (median reported)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed training steps before the epoch")
    parser.add_argument("--epoch-images", type=int, default=50000, help="synthetic training images without CIFAR-10")
    parser.add_argument("--data-dir", default=None, help="directory holding cifar-10-batches-py")
    parser.add_argument("--skip-loader", action="store_true", help="do not time the minires DataLoader")
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 (off by default: true float32)")
    parser.add_argument("--update-readme", action="store_true", help=f"rewrite '{SECTION}' in {README}")
    args = parser.parse_args(argv)
    for name in ("batch", "repeats", "inner", "epochs", "epoch_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.epoch_images < args.batch:
        parser.error(f"--epoch-images ({args.epoch_images}) must be at least --batch ({args.batch})")

    if not backend.cupy_available():
        print(f"bench_gpu.py: no usable GPU, nothing was timed: {backend.cupy_unavailable_reason()}",
              file=sys.stderr)
        return EXIT_NO_GPU
    try:
        dev = backend.device(args.device)
    except (ValueError, backend.DeviceError) as exc:
        print(f"bench_gpu.py: {exc}", file=sys.stderr)
        return EXIT_NO_GPU
    if dev.type != "cuda":
        parser.error(f"--device must be cuda or cuda:N, got {args.device!r}")
    index = dev.index or 0
    cp = dev.xp
    torch, torch_missing = load_torch(index, args.tf32)

    with cp.cuda.Device(index):
        machine = describe(cp, index, torch, torch_missing)
        print("\n".join(machine))
        print(f"batch {args.batch}, float32; layer cells: ms per call, median of {args.repeats} runs of "
              f"{args.inner} calls; ratio = minires / torch (below 1: minires is faster)\n")
        layer_header = ["layer", "count", "fwd minires", "fwd torch", "ratio", "fwd+bwd minires",
                        "fwd+bwd torch", "ratio"]
        layer_text, layer_md = render_table(layer_header, layer_table(cp, torch, str(dev), index, args))
        print("\n".join(layer_text))
        epoch_md: list[str] = []
        notes: list[str] = []
        if not args.skip_epoch:
            rows, notes = epoch_table(cp, torch, str(dev), index, args)
            epoch_header = ["what", "minires s", "torch s", "ratio", "minires img/s", "torch img/s"]
            epoch_text, epoch_md = render_table(epoch_header, rows)
            print()
            print("\n".join(epoch_text))
            print("\n".join(notes))
    if args.update_readme:
        command = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
        body = [f"`{command.strip()}`: batch {args.batch}, float32, both libraries on the same GPU in the "
                "same run. Layer cells: milliseconds per call, median of alternating runs; ratio = minires / torch.",
                "", *layer_md]
        if epoch_md:
            body += ["", *epoch_md, "", *notes]
        body += ["", "Machine:", "", "```", *machine, "```"]
        update_readme("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
