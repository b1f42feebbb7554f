"""A ``minires train`` recipe run in PyTorch, on the same batches and starting weights: the accuracy reference.

``python benchmarks/torch_train.py --model resnet20 --recipe fast --out runs/torch_fast``
trains PyTorch's version of the CIFAR ResNet (``torch_resnet.py``) with
everything else taken from minires, handed over as arrays:

* the initial weights: ``minires.train.config.build_model`` with the same
  seed, copied in with ``load_minires_state``;
* the data: minires's loader reads the same files and serves the same
  shuffled, augmented batches (same seed) as ``minires train`` on one process;
* the recipe: batch size, momentum, Nesterov, weight decay, and the same
  per-iteration schedule (``fast``: linear warm-up over 5% of the iterations
  from 0.1 x lr, then a half cosine to 0; ``paper``: lr / 10 at 50% and 75%).

So if the two libraries end at different test accuracies, the difference is
in the library (kernels, optimiser, batch norm), not in the recipe or the
data. Writes ``metrics.csv`` with minires's columns (atomically, after every
epoch) and prints one line per epoch. torch is never a dependency of minires.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import cifar_resnet, load_minires_state  # noqa: E402

from minires.atomic import atomic_write_text  # noqa: E402
from minires.data import DataLoader, load_cifar10, standard_augment  # noqa: E402
from minires.train import recipes  # noqa: E402
from minires.train.config import TrainConfig, build_model  # noqa: E402
from minires.train.metrics import metric_columns  # noqa: E402

COLUMNS = metric_columns(with_validation=False)


def lr_factor(recipe: recipes.Recipe, step: int, total: int) -> float:
    """The learning rate of iteration ``step`` (0-based) as a fraction of the peak, as minires's schedules give it."""
    if recipe.name == "paper":
        return 0.1 ** sum(step >= int(round(f * total)) for f in recipes.PAPER_MILESTONES)
    warmup = min(total - 1, max(1, math.ceil(recipes.FAST_WARMUP_FRACTION * total)))
    if step < warmup:  # LinearLR from 0.1 to 1.0 over `warmup` steps
        return 0.1 + 0.9 * step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))  # CosineAnnealingLR to 0


def evaluate(model: torch.nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader``, in eval mode (running BN statistics)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            x, y = torch.from_numpy(np.asarray(images.data)), torch.from_numpy(np.asarray(labels.data))
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    model.train()
    return loss_sum / seen, correct / seen


def train_epoch(model, optimizer, loader, recipe, peak_lr, step, total) -> tuple[float, float, int, float]:
    """One epoch; returns (mean loss, accuracy, global step, lr of the last step)."""
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        lr = peak_lr * lr_factor(recipe, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = torch.from_numpy(np.asarray(images.data)), torch.from_numpy(np.asarray(labels.data))
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return loss_sum / seen, correct / seen, step, lr


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="a minires CIFAR ResNet name (resnetN)")
    parser.add_argument("--recipe", default="fast", choices=recipes.names())
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all)")
    parser.add_argument("--data-dir", default=None, help="the folder holding cifar-10-batches-py (or $MINIRES_DATA)")
    parser.add_argument("--limit-train", type=int, default=None, help="train on the first K images only")
    parser.add_argument("--limit-test", type=int, default=None, help="test on the first K images only")
    parser.add_argument("--out", required=True, help="folder for metrics.csv")
    args = parser.parse_args(argv)

    recipe = recipes.get_recipe(args.recipe)
    epochs = args.epochs or recipe.epochs
    peak_lr = args.lr if args.lr is not None else recipe.lr
    batch_size = args.batch_size or recipe.batch_size
    if epochs < 1 or peak_lr <= 0 or batch_size < 1:
        parser.error("--epochs, --batch-size and --lr must be positive")
    if not args.model.startswith("resnet"):
        parser.error(f"--model {args.model!r}: only the CIFAR ResNets (resnet20, resnet56, ...) have a PyTorch twin")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = TrainConfig(model=args.model, recipe=args.recipe, seed=args.seed)
    ours = build_model(config)  # minires's seeded initial weights
    model = cifar_resnet(recipes.model_depth(ours))
    load_minires_state(model, ours.state_dict())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)

    cifar = load_cifar10(args.data_dir, download=False, examples_per_batch="meta")  # as `minires train` reads it
    n, m = args.limit_train or len(cifar.train_labels), args.limit_test or len(cifar.test_labels)
    train = DataLoader(cifar.train_images[:n], cifar.train_labels[:n], batch_size=batch_size, shuffle=True,
                       drop_last=True, seed=args.seed, augment=standard_augment, prefetch=1)
    test = DataLoader(cifar.test_images[:m], cifar.test_labels[:m], batch_size=256, shuffle=False, drop_last=False)
    total = epochs * len(train)
    print(f"PyTorch {torch.__version__}, {args.threads} threads: {args.model}, recipe {recipe.name}, "
          f"{epochs} epochs x {len(train)} steps, batch {batch_size}, peak lr {peak_lr}", flush=True)

    rows, step, began = [], 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        train.set_epoch(epoch - 1)
        start = time.perf_counter()
        train_loss, train_acc, step, lr = train_epoch(model, optimizer, train, recipe, peak_lr, step, total)
        seconds = time.perf_counter() - start
        test_loss, test_acc = evaluate(model, test)
        rows.append(dict(epoch=epoch, step=step, lr=lr, train_loss=train_loss, train_acc=train_acc,
                         test_loss=test_loss, test_acc=test_acc, images_per_sec=len(train) * batch_size
                         / seconds, epoch_seconds=seconds))
        write_csv(out / "metrics.csv", rows)
        print(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.2%}, test loss {test_loss:.4f} "
              f"acc {test_acc:.2%}, {seconds:.0f} s", flush=True)
    print(f"done: test accuracy {rows[-1]['test_acc']:.2%} after {epochs} epochs, "
          f"{time.perf_counter() - began:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
