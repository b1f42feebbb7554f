# %% [markdown]
# # 6. Training a ResNet on CIFAR-10
#
# The previous notebooks took a ResNet apart; this one trains one. CIFAR-10 has 50,000 training and
# 10,000 test images of 32x32 pixels in 10 classes, and it is the data set of the paper's depth
# experiments (section 4.2).
#
# **By the end of this notebook you will understand**
#
# * how the images get from disk into normalised, augmented mini-batches (`minires.data`);
# * what the paper's augmentation (pad by 4, random 32x32 crop, horizontal flip) does to an image;
# * how a training run is organised: a recipe (optimiser and learning-rate schedule), the
#   `Trainer` loop, metrics and checkpoints, and how to run the full schedule on a GPU;
# * the *degradation* result that motivated residual learning, and where this project's own
#   measurements of it are.
#
# The data set is read from the directory in `$MINIRES_DATA` (it must contain
# `cifar-10-batches-py/`). Where it is missing, the notebook uses a small synthetic stand-in and
# says so; everything still runs, but the pictures and numbers are then not CIFAR-10's.

# %%
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import minires
from minires import models, nn, recipes
from minires.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFARError,
    DataLoader,
    channel_stats,
    load_cifar10,
    normalize,
    resolve_data_dir,
    standard_augment,
    to_float,
)
from minires.nn import functional as F
from minires.optim import SGD
from minires.train import TrainConfig, Trainer

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")


# %% [markdown]
# ## 1. The data
#
# `load_cifar10` finds the official python release (or downloads and verifies it, when allowed),
# decodes it into `uint8` arrays in NCHW layout, and caches the decoded arrays so that the next
# load takes a fraction of a second. We never download here (`download=False`).

# %%
def synthetic_cifar(n_train, n_test, seed=0):
    """A learnable stand-in for CIFAR-10 (uint8 (N, 3, 32, 32) images): a smooth colour pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)

    def make(n):
        labels = rng.integers(0, 10, size=n)
        noisy = 0.6 * patterns[labels] + 51 + rng.normal(0, 40, size=(n, 3, 32, 32))
        return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)

    (train_x, train_y), (test_x, test_y) = make(n_train), make(n_test)
    return SimpleNamespace(train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
                           classes=[f"pattern {i}" for i in range(10)], source="synthetic")


try:
    data = load_cifar10(resolve_data_dir(), download=False)  # $MINIRES_DATA, else ~/.cache/minires
    REAL_DATA = True
    # (data.source is where the files were found on this machine: we print only its last part)
    print(f"CIFAR-10 read from .../{Path(data.source).name}: {data.train_images.shape[0]:,} training and "
          f"{data.test_images.shape[0]:,} test images, classes {', '.join(data.classes)}")
except CIFARError as err:
    REAL_DATA = False
    data = synthetic_cifar(5000, 1000)
    print("NOTE: CIFAR-10 is not available here, so this notebook uses SYNTHETIC images: the pictures and "
          "accuracies below are not CIFAR-10's. Set MINIRES_DATA to a directory containing "
          "cifar-10-batches-py to use the real data.\n  " + str(err).split(". ")[0])

print("train images:", data.train_images.shape, data.train_images.dtype, "| labels:", data.train_labels.shape,
      data.train_labels.dtype)
print("test images: ", data.test_images.shape, "| images per class (train):", np.bincount(data.train_labels))


# %%
def show_images(images, titles=None, rows=1, scale=1.3):
    """Draw uint8 (N, 3, H, W) images in a grid."""
    cols = int(np.ceil(len(images) / rows))
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols, scale * rows + 0.3 * (titles is not None)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")  # CHW -> HWC; show the true pixels
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    return fig


first_of_class = [np.flatnonzero(data.train_labels == c)[:2] for c in range(10)]
picks = np.concatenate([[idx[0] for idx in first_of_class], [idx[1] for idx in first_of_class]])
show_images(data.train_images[picks], [data.classes[data.train_labels[i]] for i in picks], rows=2)
plt.show()

# %% [markdown]
# ## 2. Normalisation and augmentation
#
# Networks train best on inputs with about zero mean and unit variance, so every pixel is scaled to
# $[0, 1]$ and then normalised per channel with the training set's mean and standard deviation
# (`CIFAR10_MEAN`, `CIFAR10_STD`; `channel_stats` computes them). The paper subtracted the per-pixel
# mean; per-channel statistics are the common modern choice and work as well.

# %%
n_stats = 2000 if QUICK else 20000
mean, std = channel_stats(data.train_images[:n_stats])
print(f"first {n_stats} training images: mean {np.round(mean, 4)}, std {np.round(std, 4)}")
print(f"minires constants (all 50,000):  mean {CIFAR10_MEAN}, std {CIFAR10_STD}")
batch = normalize(to_float(data.train_images[:256]))
print("after normalize(to_float(...)): per-channel mean", batch.mean(axis=(0, 2, 3)).round(3),
      "std", batch.std(axis=(0, 2, 3)).round(3), batch.dtype)

# %% [markdown]
# With 50,000 images and a network of 0.27 M parameters (ResNet-20), the network could eventually
# memorise the training set. **Data augmentation** shows it a slightly different version of each
# image every epoch. The paper's recipe: pad each image with 4 zero pixels on every side (40x40),
# take a random 32x32 crop (a shift of up to 4 pixels in each direction), and flip it horizontally
# with probability 1/2. Neither changes what the image shows. `standard_augment(batch, rng)` does
# this for a whole `uint8` batch at once, with no Python loop over images, and draws its random
# numbers from the generator it is given, so the same generator state gives the same augmentation
# (which is what makes runs reproducible and resumable). Each row below is one image: the original,
# then five augmented versions. The black bars are the zero padding that a shifted crop brings in.

# %%
originals = data.train_images[picks[:6]]
rng = np.random.default_rng(0)
versions = [originals] + [standard_augment(originals, rng) for _ in range(5)]
grid = np.stack(versions, axis=1).reshape(-1, 3, 32, 32)  # image-major: one row per original
show_images(grid, ["original"] + ["augmented"] * 5 + [""] * (len(grid) - 6), rows=6)
plt.show()

# %% [markdown]
# ## 3. Mini-batches: `DataLoader`
#
# `DataLoader` ties it together: each epoch it shuffles the examples, cuts them into batches,
# augments each batch (on the device that holds it) and normalises it, and yields a pair of tensors.
# Every random choice is a function of `(seed, epoch, batch index)`, so the same seed gives the same
# batches, and a run resumed from a checkpoint continues with exactly the batches it would have
# seen. `drop_last=True` skips a final incomplete batch (a batch of a few examples would give batch
# norm poor statistics).

# %%
loader = DataLoader(data.train_images, data.train_labels, batch_size=128, shuffle=True, drop_last=True,
                    seed=0, augment=standard_augment)
images, labels = next(iter(loader))
print(f"{len(loader)} batches per epoch; images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")
# Below zero on average: the crops bring in black padding, which normalises to about -1.9.
print("normalised, augmented batch: mean per channel", images.numpy().mean(axis=(0, 2, 3)).round(3))

again = DataLoader(data.train_images, data.train_labels, batch_size=128, shuffle=True, drop_last=True,
                   seed=0, augment=standard_augment)
print("same seed, same first batch:", np.array_equal(next(iter(again))[0].numpy(), images.numpy()))
print("epoch 0 and epoch 1 start with the same examples:", np.array_equal(loader.order(0)[:128], loader.order(1)[:128]))

# %% [markdown]
# ## 4. The recipe: optimiser and learning-rate schedule
#
# The paper trains with SGD (momentum 0.9, weight decay $10^{-4}$, batch 128), learning rate 0.1,
# divided by 10 at 32,000 and 48,000 iterations, stopping at 64,000 (about 164 epochs). minires's
# `paper` recipe states the schedule in *fractions* of the run (50% and 75%), so that a short run
# keeps the same shape. ResNet-110 starts at 0.01 for the first 400 iterations, because 0.1 is too
# large to start converging it. The `fast` recipe (not from the paper) is a 30-epoch alternative:
# a short linear warm-up, then a cosine decay to zero. The schedules are closed-form functions of the
# iteration count:

# %%
total = 164 * (50000 // 128)  # the full paper run, one scheduler step per iteration
dummy = SGD([nn.Parameter(np.zeros(1, dtype=np.float32))], lr=0.1)
t = np.arange(total)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for name, depth, style in [("paper", 20, "-"), ("paper", 110, ":"), ("fast", 20, "--")]:
    schedule = recipes.build_schedule(dummy, recipes.get_recipe(name), total, depth)
    lrs = [schedule.lr_at(0.1, int(k)) for k in t]
    label = f"{name} (depth {depth})"
    axes[0].plot(t, lrs, style, label=label)
    axes[1].plot(t[:1500], lrs[:1500], style, label=label)
axes[0].set_yscale("log")
axes[0].set_ylim(3e-4, 0.3)  # the cosine ends at exactly 0, which a log axis cannot show
axes[0].set_title(f"learning rate over the full run ({total:,} iterations)")
axes[1].set_title("the first 1,500 iterations (warm-ups)")
for ax in axes:
    ax.set_xlabel("iteration")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
plt.show()

# %% [markdown]
# ## 5. A short training run on the CPU
#
# `minires.train.Trainer` runs the loop: for every batch, forward pass, cross-entropy loss,
# `zero_grad`, `backward`, `optimizer.step()` and one step of the schedule; after every epoch, an
# evaluation on the test set (batch norm in evaluation mode, no graph recorded), a row of metrics in
# `metrics.jsonl` and `metrics.csv`, and a checkpoint from which the run can be resumed exactly.
# A `TrainConfig` describes the run. On a CPU we can afford only a small slice of the real thing:
# a few epochs over a few thousand images.

# %%
if QUICK:
    config = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 8}, recipe="paper", epochs=2,
                         batch_size=32, limit_train=256, limit_test=256, device="cpu")
else:
    config = TrainConfig(model="resnet20", recipe="paper", epochs=4, batch_size=64, limit_train=2560,
                         limit_test=1000, device="cpu")
run_dir = Path(tempfile.mkdtemp(prefix="minires-run-"))
trainer = Trainer(config, data, run_dir, progress=False)
print(f"{config.model}{' ' + str(config.model_kwargs) if config.model_kwargs else ''}: "
      f"{trainer.steps_per_epoch} steps per epoch, "
      f"{trainer.total_steps} steps in all, on {trainer.device}\n")
metrics = trainer.fit()
print("\nfiles in the run directory:", sorted(p.name for p in run_dir.iterdir()))

# %%
epochs = [row["epoch"] for row in metrics]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(epochs, [row["train_loss"] for row in metrics], "o-", label="training loss")
axes[0].plot(epochs, [row["test_loss"] for row in metrics], "s--", label="test loss")
axes[1].plot(epochs, [100 * (1 - row["train_acc"]) for row in metrics], "o-", label="training error")
axes[1].plot(epochs, [100 * (1 - row["test_acc"]) for row in metrics], "s--", label="test error")
axes[0].set_ylabel("cross-entropy")
axes[1].set_ylabel("error (%)")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.set_xticks(epochs)
    ax.legend()
    ax.grid(True, alpha=0.3)
fig.suptitle("A short CPU run" + ("" if REAL_DATA else " (synthetic data)"))
plt.show()

# %% [markdown]
# A few minutes of CPU time only scratch the surface: the full schedule is 64,000 iterations of
# batch 128, hundreds of times the work of the run above. Two details of the curves: the training
# error is the running average over each epoch's augmented batches, measured while the weights
# were still changing, which is why it can sit above the test error early on; and the test loss
# after the first epoch can be high because evaluation uses batch norm's running statistics, which
# lag behind weights that are still changing fast.
#
# ## 6. The full run, on a GPU
#
# The same loop runs on a GPU when CuPy is installed (see the main README for the wheel that
# matches your CUDA version). From the repository root:
#
# ```
# minires train --model resnet20 --recipe paper --device cuda --out runs/resnet20
# ```
#
# Useful variations:
#
# * `--val-split` holds out 5,000 training images for validation, as the paper does for tuning;
# * `--resume` continues an interrupted run from `runs/resnet20/checkpoint.npz` (Ctrl-C saves one
#   after the current step); the result is the same as an uninterrupted run;
# * `--grad-norms 100` logs per-layer gradient norms every 100 steps (notebook 5);
# * `--model plain20`, `resnet56`, `plain56`, ... for the other depths;
# * `minires eval --checkpoint runs/resnet20/checkpoint.npz` measures a saved model on the test set.
#
# The paper reports 8.75% test error for ResNet-20 after this schedule (table 6); individual runs
# vary by a few tenths of a percent. Here is what the command resolves to:

# %%
full = TrainConfig(model="resnet20", recipe="paper", device="cuda").resolved()
steps_per_epoch = 50000 // full.batch_size
print(f"recipe '{full.recipe}': {full.epochs} epochs x {steps_per_epoch} steps = {full.epochs * steps_per_epoch:,} "
      f"iterations of batch {full.batch_size}, peak lr {full.lr}")
print(recipes.get_recipe("paper").description)


# %% [markdown]
# ## 7. The degradation problem
#
# The experiment that motivated residual learning compares plain networks of different depths. The
# paper's figure 6 (left) trains plain networks of 20, 32, 44 and 56 layers on CIFAR-10: the
# **deeper plain networks have higher training error** throughout training, not just higher test
# error. That rules out overfitting: the deeper network is worse at fitting the very data it is
# trained on, although it could represent the shallower network exactly (by making its extra layers
# identities). Batch norm is used everywhere, so the forward and backward signals do not simply die
# out; the deep plain networks are hard to *optimise*. With identity shortcuts the trend reverses:
#
# | network | test error (paper) |
# |---|---|
# | plain-20 | about 9.5% (read off figure 6) |
# | plain-56 | about 13.5% (read off figure 6) |
# | ResNet-20 | 8.75% |
# | ResNet-56 | 6.97% |
# | ResNet-110 | 6.43% (best of 5 runs) |
#
# Plain-110 does not train at all (over 60% error). Notebook 5 showed the mechanism at the level of
# gradients. This project reproduces the comparison in miniature with `minires compare`: a short run
# on a CPU, so the absolute errors are far above the paper's and only the *comparisons* mean
# something. `docs/results/README.md` describes the setup and discusses the numbers, and
# `docs/results/reproduce.sh` has the exact commands; the committed summary and figures are shown
# below.

# %%
def find_results_dir():
    """docs/results of this repository: next to the notebooks, or next to the installed minires package."""
    for root in (Path.cwd().parent, Path.cwd(), Path(minires.__file__).resolve().parents[1]):
        if (root / "docs" / "results").is_dir():
            return root / "docs" / "results"
    return None


results = find_results_dir()
preferred = ["degradation_long/training_curves.png", "degradation/gradient_depth.png",
             "gradflow/depth_sweep.png", "gradflow/gradflow.png"]
pngs = sorted(results.rglob("*.png")) if results else []
if not pngs:
    print("NOTE: no committed result figures found (docs/results/**/*.png is missing in this checkout); "
          "run docs/results/reproduce.sh to produce them.")
else:
    chosen = [results / p for p in preferred if (results / p).is_file()] or pngs[:4]
    summary_txt = results / "degradation_long" / "summary.txt"
    if summary_txt.is_file():
        print(summary_txt.read_text())
    for path in chosen:
        print(path.relative_to(results.parent.parent))
        display(Image(filename=str(path), width=900))
    others = [p.relative_to(results.parent.parent) for p in pngs if p not in chosen]
    if others:
        print("more figures:", ", ".join(str(p) for p in others))


# %% [markdown]
# ### The same experiment, live and in miniature
#
# The committed results above took hours. Here is a version you can watch in a few minutes:
# narrow networks (8 channels in the first stage instead of 16) of 8 and 20 layers, plain and
# residual, trained from the same seed on the same batches in the same order with SGD and
# momentum, a few hundred steps in full mode (a handful in quick mode, where the curves mean
# nothing). The curves are training losses smoothed over 20 steps. Expect far less than the
# paper: the networks are small, the runs short, and one seed decides a lot. What to look for is
# the *direction* of each comparison: does going from 8 to 20 layers help or hurt the plain
# network, and the residual one? The printed table says what this run shows.

# %%
def train_curve(name, depth, steps, batch_size=64, lr=0.05):
    """Per-step training losses of a width-8 `name` ("plain_cifar" or "resnet_cifar") network of `depth` layers."""
    model = models.create(name, depth=depth, width=8, seed=0)
    model.train()
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(data.train_images, data.train_labels, batch_size=batch_size, shuffle=True,
                        drop_last=True, seed=0, augment=standard_augment)  # one seed: the same batches for all
    losses = []
    while len(losses) < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
            if len(losses) == steps:
                break
    return np.array(losses)


def smooth(values, window):
    """Running mean over the last `window` values (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


live_steps = 6 if QUICK else 250
curves = {(kind, depth): train_curve(f"{kind}_cifar", depth, live_steps)
          for depth in (8, 20) for kind in ("plain", "resnet")}
window = min(20, live_steps)
fig, ax = plt.subplots(figsize=(8, 4.5))
for (kind, depth), losses in curves.items():
    ax.plot(np.arange(1, live_steps + 1), smooth(losses, window), "--" if kind == "plain" else "-",
            color="C0" if depth == 8 else "C3", label=f"{kind}-{depth}")
ax.set_xlabel("SGD step (batch 64)")
ax.set_ylabel(f"training loss (running mean of {window} steps)")
ax.set_title("Plain (dashed) and residual (solid) networks of 8 and 20 layers, width 8")
ax.grid(True, alpha=0.3)
ax.legend()
plt.show()
print(f"final smoothed training loss after {live_steps} steps:")
for (kind, depth), losses in curves.items():
    print(f"  {kind}-{depth:<3d} {smooth(losses, window)[-1]:.3f}")
for kind in ("plain", "resnet"):
    deeper = smooth(curves[(kind, 20)], window)[-1] - smooth(curves[(kind, 8)], window)[-1]
    print(f"{kind}: 20 layers end {'above' if deeper > 0 else 'below'} 8 layers by {abs(deeper):.3f}")


# %% [markdown]
# ## Summary
#
# * `load_cifar10` gives `uint8` NCHW arrays; `DataLoader` shuffles, augments (pad 4, random crop,
#   flip), normalises and batches them, reproducibly from a seed.
# * A recipe fixes the optimiser and the learning-rate schedule; the `paper` recipe is SGD with
#   momentum, lr 0.1 divided by 10 at 50% and 75% of the run.
# * `Trainer` (or `minires train`) runs the loop, writes metrics and checkpoints, and resumes exactly.
# * Deeper plain networks train to a *higher* training error than shallower ones (degradation);
#   residual networks do not degrade. In the paper, with its full schedule, ResNet-56 also ends
#   *below* ResNet-20; in the short CPU runs above the two stay within about a point of each
#   other (ResNet-56 slightly above), so that half of the result still waits for a GPU run.
#
# ## Exercises
#
# **Exercise 1 (write an augmentation).** *Cutout* (DeVries and Taylor, 2017) blanks a random 8x8
# square of every image. Write `cutout(batch, rng)` for a `uint8` batch, without a loop over images,
# combine it with `standard_augment`, and show a few results. A function with the signature
# `augment(batch, rng) -> batch` can be passed to `DataLoader(augment=...)`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
def cutout(batch, rng, size=8):
    """Zero a random size x size square (its centre anywhere in the image, so it may be clipped) per image."""
    n, _, h, w = batch.shape
    cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
    rows, cols = np.arange(h), np.arange(w)
    inside_y = (rows[None, :] >= cy[:, None] - size // 2) & (rows[None, :] < cy[:, None] + size // 2)  # (n, h)
    inside_x = (cols[None, :] >= cx[:, None] - size // 2) & (cols[None, :] < cx[:, None] + size // 2)
    mask = inside_y[:, None, :, None] & inside_x[:, None, None, :]  # (n, 1, h, w), broadcast over channels
    return np.where(mask, 0, batch).astype(batch.dtype)


def augment_with_cutout(batch, rng):
    return cutout(standard_augment(batch, rng), rng)


rng = np.random.default_rng(1)
show_images(augment_with_cutout(data.train_images[picks[:10]], rng), rows=1)
plt.show()
cutout_loader = DataLoader(data.train_images, data.train_labels, batch_size=64, augment=augment_with_cutout)
print("a cutout batch:", next(iter(cutout_loader))[0].shape)

# %% [markdown]
# **Exercise 2 (counting iterations).** With the paper's 45k/5k split (`TrainConfig(val_split=5000)`)
# and batch 128, how many iterations does one epoch have (the last incomplete batch is dropped), and
# how many epochs do 64,000 iterations take? Check the first number with a `DataLoader`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
# 45,000 // 128 = 351 iterations per epoch; 64,000 / 351 = 182.3 epochs.
# (minires's `paper` recipe counts 164 epochs of the full 50,000 images instead: 164 * 390 = 63,960.)
per_epoch = 45000 // 128
print(per_epoch, "iterations per epoch;", round(64000 / per_epoch, 1), "epochs for 64,000 iterations")
if data.train_images.shape[0] >= 45000:
    check = DataLoader(data.train_images[:45000], data.train_labels[:45000], batch_size=128, drop_last=True)
    print("DataLoader over 45,000 images:", len(check), "batches")

# %% [markdown]
# **Exercise 3 (recipes at a tiny budget).** Train the same very small network (`resnet_cifar` with
# depth 8 and width 8) for 2 epochs on 512 images with the `paper` and with the `fast` recipe, and
# compare the test accuracies. Which schedule spends more of this short budget at a high learning
# rate?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# The paper schedule stays at 0.1 for the first half, then drops to 0.01 and 0.001; the fast one warms up
# for 5% of the run and then decays along a cosine, so it spends more time at intermediate rates. With so
# few steps the difference is mostly noise; the point is that both schedules keep their shape at any length.
for recipe_name in ("paper", "fast"):
    small = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 8}, recipe=recipe_name,
                        epochs=2, batch_size=32, limit_train=512, limit_test=500, device="cpu")
    rows = Trainer(small, data, tempfile.mkdtemp(prefix="minires-recipe-"), progress=False, verbose=False).fit()
    print(f"{recipe_name:>5}: after 2 epochs test accuracy {100 * rows[-1]['test_acc']:.1f}%, test loss "
          f"{rows[-1]['test_loss']:.3f}, training loss {rows[-1]['train_loss']:.3f}")
