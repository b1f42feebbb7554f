# %% [markdown]
# # 5. Gradient flow: plain versus residual networks
#
# The ResNet paper starts from an observation: a deeper plain network (conv, BN, ReLU, repeated)
# ends up with a *higher training error* than a shallower one. The deeper network could represent
# everything the shallower one can, so the problem is optimisation: gradient descent struggles to
# train it. This notebook looks at the quantity gradient descent depends on, the gradient reaching
# every layer, and measures it in plain and residual networks of several depths.
#
# **By the end of this notebook you will understand**
#
# * why the gradient reaching an early layer of a plain network is a *product* of one factor per
#   later layer, and why such products explode or vanish with depth;
# * how the identity shortcut turns that product into something that grows only slowly with depth;
# * how to measure per-layer and per-block gradient norms with `minires.diagnostics`
#   (`GradientMonitor`, built on block taps and `Tensor.register_hook`);
# * what plain and residual networks look like at initialisation across depths, with and without
#   batch norm, and what happens to the exploding gradient of a plain network once training starts;
# * two more health checks practitioners use: update-to-weight ratios per layer over the steps,
#   and histograms of each block's activations.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display
from matplotlib.colors import LogNorm

import minires
from minires import models, nn
from minires.data import DataLoader, load_cifar10, resolve_data_dir, standard_augment
from minires.diagnostics import plots
from minires.diagnostics.compare import format_gradflow_table, gradflow
from minires.diagnostics.monitor import GradientMonitor
from minires.diagnostics.sweep import depth_sweep, fixed_batch, without_batch_norm
from minires.nn import functional as F
from minires.optim import SGD

FIGURES = Path(tempfile.mkdtemp(prefix="minires-gradflow-"))  # the library's plot functions write files


def show(paths):
    """Display the PNG among the files a minires.diagnostics.plots function wrote."""
    display(Image(filename=str(next(p for p in paths if p.suffix == ".png"))))

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")


# %% [markdown]
# ## 1. Depth turns the backward pass into a product
#
# A network is a chain of layers $y_k = f_k(y_{k-1})$, and the loss depends on an early activation
# only through everything after it. By the chain rule,
#
# $$\frac{\partial L}{\partial y_0} = J_1^\top J_2^\top \cdots J_K^\top\, \frac{\partial L}{\partial y_K},
#   \qquad J_k = \frac{\partial f_k}{\partial y_{k-1}} .$$
#
# If each factor changes the norm of the gradient by some typical gain $a$, the gradient at the
# bottom of a $K$-layer stack is about $a^K$ times the one at the top: it **vanishes** for $a < 1$
# and **explodes** for $a > 1$, exponentially in depth. Initialisation schemes (He et al., 2015) are
# designed to make $a \approx 1$, but "about one" raised to the 50th power can still be far from one.
#
# A residual block adds its input back. In the *pre-activation* form of He et al. (2016,
# "Identity Mappings in Deep Residual Networks"), $y_k = y_{k-1} + F_k(y_{k-1})$ with every ReLU
# inside the branch $F_k$, the block's Jacobian is exactly $I + \partial F_k/\partial y_{k-1}$.
# Multiplying out the product of $(I + \cdot)$ factors gives a **sum over paths**, and one of the
# paths is the identity all the way down: part of the gradient reaches every block without
# crossing a single weight. The original ResNet, and minires's blocks, apply a ReLU *after* the
# addition, $y_k = \operatorname{relu}\bigl(y_{k-1} + F_k(y_{k-1})\bigr)$, so the Jacobian is
# $D_k\,(I + \partial F_k/\partial y_{k-1})$, where
# $D_k = \operatorname{diag}\bigl(\operatorname{relu}'(y_{k-1} + F_k(y_{k-1}))\bigr)$ is the ReLU's 0/1
# mask. The gradient on the identity path is then not untouched: every block zeroes it where its
# output was negative. But it is never multiplied by a weight, and since a block's input is itself
# the output of a ReLU (non-negative), the mask keeps most of it.
#
# That alone does not prevent growth: with a branch of gain $a$, each block multiplies the norm by
# about $\sqrt{1 + a^2}$, which still compounds over many blocks. What keeps real ResNets healthy is
# batch norm inside the branch. Each branch adds a signal of roughly unit variance to the stream, so
# after $k$ blocks the stream's variance is about $k$, and the BN at the branch's input divides by
# its standard deviation $\sqrt{k}$. The branch's gain therefore falls like $1/\sqrt{k}$, and the
# product $\prod_k \sqrt{1 + c/k}$ grows only like a power of the depth, not exponentially (De and
# Smith, 2020, "Batch normalization biases residual blocks towards the identity function").
#
# A toy model makes the four cases concrete: random $256 \times 256$ matrices stand in for the
# Jacobians (of the pre-activation form, without ReLU masks), and we follow the norm of a gradient
# vector as it travels down from the loss. In the last case the branch of block $k$, counted from
# the **input**, has gain $1/\sqrt{k}$: the gradient first crosses the blocks near the output,
# whose branches are the weakest, and meets the strongest ones, near the input, last.

# %%
def backprop_norms(depth, residual, gain, width=256, seed=0):
    """Norm of a unit gradient after each of `depth` random layers, from the loss down to the input.

    plain: v <- J^T v; residual: v <- v + J^T v. `gain` is a number, or a function of the layer's
    position k counted from the INPUT (k = 1 is the first layer, k = depth the one next to the loss).
    """
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(width)
    v /= np.linalg.norm(v)
    norms = [1.0]
    for travelled in range(1, depth + 1):
        k = depth + 1 - travelled  # the backward pass meets the layers in reverse order
        a = gain(k) if callable(gain) else gain
        J = rng.standard_normal((width, width)) * a / np.sqrt(width)  # a random Jacobian of gain about a
        v = v + J.T @ v if residual else J.T @ v
        norms.append(np.linalg.norm(v))
    return np.array(norms)


depth = 30 if QUICK else 60
cases = {
    "plain, gain 0.8": (False, 0.8),
    "plain, gain 1.2": (False, 1.2),
    "residual, gain 0.8": (True, 0.8),
    "residual, gain 1/sqrt(k), k from the input (BN in the branch)": (True, lambda k: 1 / np.sqrt(k)),
}
fig, ax = plt.subplots(figsize=(8, 4))
for (label, (residual, gain)), style in zip(cases.items(), ["--", "--", "-", "-"]):
    norms = backprop_norms(depth, residual, gain)
    ax.semilogy(norms, style, label=f"{label}: x{norms[-1]:.1e} after {depth} layers")
ax.set_xlabel("layers travelled from the loss towards the input")
ax.set_ylabel("gradient norm (log scale)")
ax.set_title("Toy model: products of random Jacobians")
ax.legend(fontsize="small", loc="upper left")
ax.grid(True, which="both", alpha=0.3)
plt.show()

# %% [markdown]
# Plain products drift geometrically in either direction; a residual stream with a fixed-gain
# branch drifts geometrically upwards; a residual stream whose branches shrink like $1/\sqrt{k}$
# grows slowly, most of it in the last layers it crosses (the strong branches near the input),
# and ends within a small factor, of the order of $\sqrt{K}$ for $K$ blocks. Now let us measure
# real networks.
#
# ## 2. Measuring the gradient at every layer
#
# After `loss.backward()` each weight holds $\partial L/\partial W$, so per-layer weight-gradient
# norms are easy to read. The gradient with respect to an *activation* (what flows between blocks)
# is never stored, because activations are not leaves. `minires.diagnostics.GradientMonitor` gets it
# anyway: it registers a **tap** on every block (a callback that receives the block's input and
# output tensors during the forward pass) and, from the tap, a `register_hook` on those tensors; the
# hook receives $\partial L/\partial x$ during `backward()` and keeps its norm. Here is the idea in
# five lines, on one block:

# %%
net = models.plain20(seed=0)
block = net.layer2[0]
captured = {}
tap = block.add_tap(lambda blk, name, t: name == "input" and t.register_hook(
    lambda g: captured.__setitem__("dL/dx at layer2.0 input", float(np.linalg.norm(g.numpy())))))
images, labels = fixed_batch(8 if QUICK else 32, 16 if QUICK else 32)
F.cross_entropy(net(images), labels).backward()
tap.remove()
print(captured)

# %% [markdown]
# `GradientMonitor` does this for every block and reads every weight's gradient too. `record(step)`
# stores one row per call; `format_table()` prints the latest one: for each layer
# $\|\partial L/\partial W\|$, $\|W\|$ and their ratio (plain SGD moves $W$ by
# `lr * ratio` relative to its size), then for each block the gradient norm at its input and output.

# %%
net = models.plain20(seed=0)
with GradientMonitor(net) as monitor:  # `with` detaches every hook at the end
    loss = F.cross_entropy(net(images), labels)
    loss.backward()
    monitor.record(0, loss=float(loss.item()))
print(monitor.format_table())

# %% [markdown]
# ## 3. Plain versus residual at initialisation
#
# `minires.diagnostics.compare.gradflow` runs one forward and backward pass of several freshly
# initialised models on the same batch (standard-normal images: normalised CIFAR images have the
# same scale, and no data is needed) and returns one monitor history per model. The plain and
# residual twins of a given depth start from identical convolution weights. The table lists
# $\|\partial L/\partial W\|$ layer by layer, input side first; the figure draws the same numbers.

# %%
batch, size = (8, 16) if QUICK else (64, 32)
images, labels = fixed_batch(batch, size)
histories = gradflow(["plain20", "resnet20", "plain56", "resnet56"], images=images, labels=labels)
print(f"batch of {batch} standard-normal {size}x{size} images\n")
print(format_gradflow_table(histories))
show(plots.plot_depth_profile(histories, FIGURES / "profile_init",
                              title="Weight-gradient norm per layer: plain (dashed) vs residual (solid)"))

# %%
fig, ax = plt.subplots(figsize=(8, 3.8))
for label, history in histories.items():
    dl_dx = history.grad_array("block_in")[0]  # ||dL/dx|| at the input of every block
    ax.semilogy(np.arange(1, len(dl_dx) + 1), dl_dx, "--" if label.startswith("plain") else "-",
                marker=".", label=label)
ax.set_xlabel("block (1 = nearest the input)")
ax.set_ylabel(r"$\|\partial L / \partial x\|$ at the block input")
ax.set_title("Gradient reaching each block at initialisation")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
plt.show()

# The growth per layer implied by the table: first/last = gain^(number of layers between them).
for label, history in histories.items():
    convs = [i for i, t in enumerate(history.layer_types) if t == "Conv2d"]
    grads = history.grad_array("layer")[0, convs]
    gain = (grads[0] / grads[-1]) ** (1 / (len(convs) - 1))
    print(f"{label}: first conv / last conv = {grads[0] / grads[-1]:.3g} over {len(convs) - 1} layers, "
          f"i.e. x{gain:.3f} per layer on average")

# %% [markdown]
# Read the plain networks from right (output) to left (input): the gradient **grows** at almost
# every layer on its way down, and the growth compounds. For plain-56 the first convolution receives
# a gradient hundreds to thousands of times larger than the last one. The residual twins stay within
# a small factor over the whole depth. (The last point of each curve is the fully connected layer,
# whose gradient comes straight from the softmax.)
#
# Why does the plain stack *explode* rather than vanish? Each conv-BN-ReLU layer's backward map has
# a gain above one: batch norm divides by the batch's standard deviation and removes its mean, and
# together with the ReLU that amplifies the gradient on average (the mean-field analysis of Yang et
# al., 2019, "A mean field theory of batch normalization", shows that this explosion at
# initialisation is a property of batch norm itself, which no choice of the initial weight scale
# removes). How much per layer? The lines printed under the figure answer it: in the full run,
# plain-56's first convolution gets a gradient about $3 \times 10^3$ times the last one's, 54 layers
# below it, i.e. a gain of about $1.16$ per layer ($1.16^{54} \approx 3 \times 10^3$). Not a few
# percent, but about 15% per layer, and compounded over 54 layers that is more than three orders of
# magnitude. The depth sweep below gives the same rate: a ratio of about $2 \times 10^3$ over the 54
# layers of plain-56 and about $3 \times 10^6$ over the 108 of plain-110 are both about 15% per
# layer ($1.15^{54} \approx 2 \times 10^3$, $1.15^{108} \approx 4 \times 10^6$).
#
# ## 4. A depth sweep, with and without batch norm
#
# `depth_sweep` repeats the measurement for several depths and reports the ratio of the first to
# the last convolution's gradient norm, the spread (largest over smallest) across all convolutions,
# and the standard deviation of the logits, which exposes a blow-up of the *forward* pass. Running it
# a second time with every batch norm removed (`without_batch_norm` replaces them by identities; the
# convolution weights stay the same) separates the two effects.

# %%
depths = [20, 32, 44, 56] if QUICK else [20, 32, 44, 56, 110]
sweep_batch, sweep_size = (8, 16) if QUICK else (32, 32)
with_bn = depth_sweep(depths, batch_size=sweep_batch, image_size=sweep_size)
without_bn = depth_sweep(depths, batch_size=sweep_batch, image_size=sweep_size, batch_norm=False)
print(with_bn.format_table())
print()
print(without_bn.format_table())
print("\nplain networks with batch norm, average growth per layer (first/last ratio over depth - 2 layers):")
for depth in depths:
    row = with_bn.row("plain", depth)
    per_layer = row.ratio ** (1 / (depth - 2))
    print(f"  plain{depth}: ratio {row.ratio:.3g} over {depth - 2} layers -> x{per_layer:.3f} per layer")
show(plots.plot_depth_sweep([with_bn, without_bn], FIGURES / "depth_sweep"))


# %% [markdown]
# Four regimes, matching the toy model:
#
# * **Plain with batch norm** (the paper's plain networks): the first/last ratio grows
#   exponentially with depth. The early layers get enormous gradients relative to the late ones.
# * **Plain without batch norm**: with He initialisation the backward signal keeps its scale (the
#   ratio hardly changes with depth; the first layer gets a somewhat smaller gradient than the last
#   at every depth). That is what the initialisation was designed for. A slightly different scale
#   would make it vanish or explode geometrically (exercise 1).
# * **Residual without batch norm**: the *forward* signal explodes (look at the logit standard
#   deviation): every block adds a branch about as large as its input, so the variance roughly
#   doubles per block, and every gradient grows with it. Shortcuts alone are not enough.
# * **Residual with batch norm**: the ratio stays within a small factor at every depth. The BN in
#   each branch shrinks the branch relative to the growing stream, exactly the $1/\sqrt{k}$ case
#   of the toy model.
#
# ## 5. During training
#
# Measurements at initialisation are a starting point; what matters is what gradient descent does
# with them. We train plain-56 and ResNet-56 for a few dozen SGD steps on CIFAR-10 (or on a
# synthetic stand-in when the data set is not available), with identical initial convolution
# weights and the identical sequence of augmented batches, and record every step with a
# `GradientMonitor`.

# %%
def synthetic_cifar(n, seed=0):
    """A learnable stand-in for CIFAR-10 training images: each class is a smooth colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    labels = rng.integers(0, 10, size=n)
    noisy = 0.6 * patterns[labels] + 51 + rng.normal(0, 40, size=(n, 3, 32, 32))
    return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)


n_train = 256 if QUICK else 2048
try:
    cifar = load_cifar10(resolve_data_dir(), download=False)  # $MINIRES_DATA, else ~/.cache/minires
    train_images, train_labels = cifar.train_images[:n_train], cifar.train_labels[:n_train]
    print(f"CIFAR-10 ({Path(cifar.source).name}): using the first {n_train} training images")
except minires.data.CIFARError as err:
    train_images, train_labels = synthetic_cifar(n_train)
    print("NOTE: CIFAR-10 is not available here, so this section trains on SYNTHETIC images (set "
          "MINIRES_DATA to a directory containing cifar-10-batches-py to use the real data).\n  "
          + str(err).split(". ")[0])


# %%
def train_and_monitor(name, steps, batch_size, lr):
    """SGD with momentum on `name` for `steps` steps; returns the GradientMonitor history (every step) and the model."""
    model = models.create(name, seed=0)
    model.train()
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(train_images, train_labels, batch_size=batch_size, shuffle=True, drop_last=True,
                        seed=0, augment=standard_augment)  # same seed: both models see the same batches
    monitor = GradientMonitor(model)
    step = 0
    while step < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            step += 1
            monitor.record(step, loss=float(loss.item()))  # the gradient of this step, before the update
            optimizer.step()
            monitor.record_update()  # and the size of the step the optimiser took: ||W_after - W_before||
            if step == steps:
                break
    monitor.detach()
    return monitor.history, model


steps, batch_size = (8, 8) if QUICK else (40, 32)
lr = 0.1 * batch_size / 128  # the paper's 0.1 at batch 128, scaled linearly to our batch size
trained = {name: train_and_monitor(name, steps, batch_size, lr) for name in ("plain56", "resnet56")}
runs = {name: history for name, (history, _) in trained.items()}
for name, h in runs.items():
    print(f"{name}: loss at step 1 {h.losses[0]:.3f}, at step {h.steps[-1]} {h.losses[-1]:.3f}; "
          f"mean of the last 5 steps {np.mean(h.losses[-5:]):.3f}")

# %% [markdown]
# Look at the losses before the gradients. After 40 steps (the full mode of this notebook; quick
# mode runs 8) plain-56's loss is **lower** than ResNet-56's, which seems to contradict everything
# that follows. It does not, for three reasons. ResNet-56 *starts* higher: its residual stream
# adds up 27 branches, so its initial logits are several times larger than plain-56's (the
# depth sweep's logit standard deviations: about 1.5 against 0.25) and its first loss is well
# above the $\ln 10 \approx 2.30$ of a uniform guess; in 40 steps it lowers its loss by several
# times more than plain-56 does. Each printed loss is one batch of 32 images, and 40 such batches
# are less than one pass over these 2,048 images: the numbers are noisy and the race has barely
# started. And the degradation result is a statement about training error after *long*
# training: in the runs of notebook 6 (640 steps of batch 128), plain-56 ends at about 74%
# training error and ResNet-56 at about 41%. What 40 steps can show is the *mechanism*, in the
# gradients.

# %%
colours = {"plain56": "C0", "resnet56": "C1"}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for name, h in runs.items():
    grads, weights = h.grad_array("layer"), h.grad_array("weight")
    convs = [i for i, t in enumerate(h.layer_types) if t == "Conv2d"]
    c = colours[name]
    axes[0].semilogy(h.steps, grads[:, convs[0]], "-", color=c, label=f"{name}: first conv")
    axes[0].semilogy(h.steps, grads[:, convs[-1]], ":", color=c, label=f"{name}: last conv")
    axes[1].semilogy(h.steps, grads[:, convs[0]] / grads[:, convs[-1]], color=c, label=name)
    axes[2].plot(h.steps, weights[:, convs[0]], color=c, label=f"{name}: first conv")
axes[0].set_title(r"$\|\partial L/\partial W\|$")
axes[1].set_title("first conv / last conv gradient")
axes[1].axhline(1, color="0.5", lw=0.8)
axes[2].set_title(r"$\|W\|$ of the first conv")
for ax in axes:
    ax.set_xlabel("SGD step")
    ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
plt.show()

# The gradient of every layer at the first and at the last step, one colour per network.
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
for ax, index in zip(axes, (0, -1)):
    for name, h in runs.items():
        grads = h.grad_array("layer")[index]
        ax.semilogy(np.arange(1, len(grads) + 1), grads, marker=".", color=colours[name], label=name)
    ax.set_title(f"gradient of step {runs['plain56'].steps[index]}")
    ax.set_xlabel("layer (1 = first conv, input side; last = fc)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
axes[0].set_ylabel(r"$\|\partial L/\partial W\|$")
fig.suptitle("Weight-gradient norm per layer, at the first step and at the last")
plt.show()

# Every layer at every step, on ONE colour scale shared by both networks, so colours compare.
tables = {name: h.grad_array("layer").T for name, h in runs.items()}  # (layers, steps)
finite = np.concatenate([t[np.isfinite(t) & (t > 0)] for t in tables.values()])
norm = LogNorm(vmin=finite.min(), vmax=finite.max())
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True, constrained_layout=True)
for ax, (name, table) in zip(axes, tables.items()):
    steps_ = runs[name].steps
    mesh = ax.pcolormesh(steps_, np.arange(1, table.shape[0] + 1), table, norm=norm, cmap="viridis",
                         shading="nearest")
    ax.set_title(name)
    ax.set_xlabel("SGD step")
axes[0].set_ylabel("layer (1 = first conv)")
fig.colorbar(mesh, ax=axes, label=r"$\|\partial L/\partial W\|$ (log scale, shared)")
fig.suptitle("Weight-gradient norm of every layer at every step")
plt.show()

for name, h in runs.items():
    grads, weights = h.grad_array("layer")[-1], h.grad_array("weight")
    convs = [i for i, t in enumerate(h.layer_types) if t == "Conv2d"]
    smallest = sorted(convs, key=lambda i: grads[i])[:5]
    relative = grads[convs] / weights[-1, convs]  # ||dL/dW|| / ||W||: the relative size of an SGD step
    stage = len(convs) // 3  # 18 convolutions per stage after the stem
    print(f"{name}, step {h.steps[-1]}: the five smallest conv gradients are at layers "
          f"{sorted(i + 1 for i in smallest)} ({grads[smallest[0]]:.1e} at the least); "
          f"||W|| of the first conv grew from {weights[0, convs[0]]:.2f} to {weights[-1, convs[0]]:.2f}; "
          f"median ||dW||/||W|| of the first stage {np.median(relative[1:1 + stage]):.1e}, "
          f"of the last stage {np.median(relative[-stage:]):.1e}")

# %% [markdown]
# What happens to the plain network's exploding gradient: the huge first gradient (carried on by
# momentum for the next steps) makes the early weights **grow** many times over, while in ResNet-56
# they barely change (right panel of the first figure). Because every convolution is followed by
# batch norm, its output does not depend on the *scale* of its weights; such a layer's gradient is
# orthogonal to $W$ and shrinks like $1/\|W\|$, and the relative size of its updates like
# $1/\|W\|^2$. So once the early weights of plain-56 have grown, their gradients collapse. Given a
# few dozen steps (the full mode of this notebook runs 40; quick mode stops much earlier) the
# picture flips (right panel of the per-layer figure, and the lines printed under the heatmaps):
# the layers that got the largest gradients at the first step now get the *smallest*. In the
# full-mode run, plain-56's whole lower half (layers 1 to about 30, its first two stages) sits on a
# low plateau, around $10^{-2}$: about ten times below its last stage, and ten to thirty times below
# ResNet-56 at the same depth. The very smallest values are scattered over that plateau (the
# printed line lists the five smallest; in this run the first convolution and layer 20 are the
# lowest), so the point is not one layer but a whole stack. Measured against the size of their
# weights, the first stage's gradients are about ten times smaller than the last stage's (median
# $\|\partial L/\partial W\| / \|W\|$, also printed): the current loss hardly reaches those
# layers any more. Their actual steps are not small yet (the update ratios further down show the
# first stage still moving the most), but that is momentum carrying on the huge first gradients,
# which only makes the weights grow further. So those layers have all but **stopped learning**
# from the data, and the deep plain network trains like a shallower one carrying a stack of layers
# at its bottom that no longer adapt to the loss. ResNet-56 keeps gradients
# of a similar size at every depth throughout, and all of its layers keep learning. (The two
# heatmaps share one colour scale, so their colours compare directly.)
#
# That is the optimisation difficulty behind the degradation result (notebook 6), and the identity
# shortcut is what removes it.

# %% [markdown]
# ### Two more health checks: update-to-weight ratios and activation histograms
#
# Practitioners judge a network's health with two more pictures. The **update-to-weight ratio**
# $\|\Delta W\| / \|W\|$ is the relative size of the step the optimiser actually took
# (momentum and weight decay included), per layer and step; a common rule of thumb puts healthy
# values around $10^{-3}$: much smaller and a layer barely learns, much larger and it is thrown
# around. `GradientMonitor.record_update()` measured it above after every `optimizer.step()`, and
# `minires train --grad-norms N` prints it as the last column of its table. The **activation
# histograms** show what each block passes on: values piling up at zero (dead ReLUs), or a spread
# that grows or shrinks block after block, are what the gradients' ups and downs are made of. We
# take them from the block taps (`Block.add_tap`, the same hook points the monitor uses) on one
# fixed batch, for the networks at initialisation and after the steps above.

# %%
def median_update_ratio(history, stage):
    """Median ||dW||/||W|| over the convolutions of one stage (0, 1, 2) at every recorded step."""
    convs = [i for i, t in enumerate(history.layer_types) if t == "Conv2d"][1:]  # the stem conv left out
    per_stage = len(convs) // 3
    ratios = history.grad_array("update_ratio")[:, convs[stage * per_stage:(stage + 1) * per_stage]]
    return np.median(ratios, axis=1)


fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
for ax, (name, h) in zip(axes, runs.items()):
    for stage, style in zip(range(3), ("-", "--", ":")):
        ax.semilogy(h.steps, median_update_ratio(h, stage), style, color=colours[name], label=f"stage {stage + 1}")
    ax.axhline(1e-3, color="0.5", lw=0.8)
    ax.set_title(name)
    ax.set_xlabel("SGD step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
axes[0].set_ylabel(r"median $\|\Delta W\| / \|W\|$ per stage")
fig.suptitle("Update-to-weight ratio of each stage's convolutions (grey line: the usual 1e-3)")
plt.show()
for name, h in runs.items():
    print(f"{name}: median update/weight ratio at step {h.steps[-1]}: "
          + ", ".join(f"stage {s + 1} {median_update_ratio(h, s)[-1]:.1e}" for s in range(3)))


# %%
def block_outputs(model, images):
    """The output of every block of `model` on `images` (a training-mode forward, no gradient), in order."""
    outputs, handles = [], []

    def keep(block, name, tensor):
        if name == "output":
            outputs.append(np.asarray(tensor.data).ravel())

    handles = [block.add_tap(keep) for _, block in model.blocks()]
    with minires.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return outputs


probe = next(iter(DataLoader(train_images, train_labels, batch_size=64, shuffle=False, seed=0)))[0]
picked = [0, 8, 9, 17, 18, 26]  # the first and last block of each stage of the 27
fig, axes = plt.subplots(2, 2, figsize=(13, 6.5), sharex=True)
for row, name in enumerate(runs):
    for col, (label, model) in enumerate((("at initialisation", models.create(name, seed=0)),
                                          (f"after {steps} steps", trained[name][1]))):
        outputs = block_outputs(model.train(), probe)
        ax = axes[row, col]
        for k, i in enumerate(picked):
            ax.hist(outputs[i], bins=np.linspace(0, 6, 61), histtype="step", density=True, log=True,
                    color=plt.cm.viridis(k / (len(picked) - 1)), label=f"block {i + 1}")
        zero = np.mean([np.mean(outputs[i] == 0) for i in picked])
        ax.set_title(f"{name}, {label}: {zero:.0%} of outputs are exactly 0")
        ax.grid(True, alpha=0.3)
    axes[row, 0].set_ylabel("density (log)")
axes[0, 1].legend(fontsize="small", ncol=2)
for ax in axes[1]:
    ax.set_xlabel("block output value (after the final ReLU)")
fig.suptitle("Histograms of block outputs on one batch of 64 images")
plt.show()
for name in runs:
    for label, model in (("at initialisation", models.create(name, seed=0)),
                         (f"after {steps} steps", trained[name][1])):
        outputs = block_outputs(model.train(), probe)
        print(f"{name} {label}: standard deviation of the outputs of blocks {', '.join(str(i + 1) for i in picked)}: "
              + " ".join(f"{outputs[i].std():.2f}" for i in picked))

# %% [markdown]
# How to read them. At initialisation plain-56's blocks all look alike: each ends in batch norm
# and a ReLU, so half of every output is exactly zero and the rest is the positive side of a
# unit-variance bell. ResNet-56's blocks end in $\mathrm{relu}(F(x) + x)$, where the shortcut
# carries the previous block's non-negative output, so far fewer outputs are zero, and the spread
# grows block after block as the residual stream adds up the branches: the forward-pass face of
# the sums that keep its gradients alive. After the steps above, plain-56's first block, whose
# weights grew the most, spreads much wider than the blocks above it; ResNet-56 keeps the pattern
# it started with, a narrow first block and a stream two to four times wider above it, only its
# last block narrowing (the standard deviations printed under the figure). Values above 6 are
# left out of the histograms to keep the plain net's shapes readable; ResNet-56's outputs reach
# well beyond, as its standard deviations say.
#
# The update ratios tell the story of the gradient heatmaps in one number per stage. Plain-56's
# first stage starts with steps far above the usual $10^{-3}$, the exploding first gradients at
# work, and its ratio then falls steadily as those weights grow (steps shrink like
# $1/\|W\|^2$, as explained above); ResNet-56's three stages stay together, within a few times
# $10^{-3}$, from the first step to the last. The printed values are those of this run (full
# mode: 40 steps; quick mode: 8, where the picture has barely formed).
#
# ## Summary
#
# * The gradient at an early layer is a product of one Jacobian per later layer; products of many
#   factors explode or vanish exponentially with depth.
# * In plain networks with batch norm the gradient *grows* towards the input: first/last ratios of
#   $10^3$ or more at 56 layers. A first SGD step then inflates the early weights, which batch norm
#   turns into frozen layers.
# * A residual block's Jacobian is $D\,(I + \partial F/\partial x)$, with $D$ the 0/1 mask of the
#   ReLU after the addition (exactly $I + \partial F/\partial x$ in pre-activation ResNets): part of
#   the gradient reaches every block without crossing a weight. With batch norm in the branch the
#   branches shrink relative to the stream, and the gradient stays within a small factor at every
#   depth.
# * `GradientMonitor` measures per-layer $\|\partial L/\partial W\|$ and per-block
#   $\|\partial L/\partial x\|$; `depth_sweep`, `gradflow` and `minires.diagnostics.plots` turn that
#   into tables and figures (the command-line versions: `minires gradflow`, `minires compare`).
#
# ## Exercises
#
# **Exercise 1 (initialisation decides).** Build plain-56 without batch norm, multiply every
# convolution weight by 0.8 (then by 1.25), run one forward and backward pass with a
# `GradientMonitor`, and look at $\|\partial L/\partial x\|$ at the block inputs. Estimate the gain per
# block. What do you expect it to be, given that a block has two convolutions?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
# Scaling every conv by s scales each layer's backward gain by about s, so each two-conv block
# multiplies the gradient by about s^2 on its way down: 0.64 (vanishing) or 1.56 (exploding).
images1, labels1 = fixed_batch(8 if QUICK else 16, 32)
for scale in (0.8, 1.0, 1.25):
    model = without_batch_norm(models.plain56(seed=0))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data *= scale
    with GradientMonitor(model) as mon:
        F.cross_entropy(model(images1), labels1).backward()
        mon.record(0)
    dl_dx = mon.history.grad_array("block_in")[0]
    per_block = (dl_dx[0] / dl_dx[-1]) ** (1 / (len(dl_dx) - 1))
    print(f"scale {scale}: ||dL/dx|| at block 1 {dl_dx[0]:.2e}, at block {len(dl_dx)} {dl_dx[-1]:.2e}; "
          f"gain per block {per_block:.3f} (s^2 = {scale**2:.3f})")

# %% [markdown]
# **Exercise 2 (hooks by hand).** Without `GradientMonitor`, measure $\|\partial L/\partial x\|$ at
# the input of each of the three stages of ResNet-56 (`model.layer1`, `layer2`, `layer3`). Use
# `Module.register_forward_hook(hook)` (the hook is called as `hook(module, inputs, output)`) to
# reach the input tensor, and `Tensor.register_hook` on it. Compare with the monitor's values for
# blocks `layer1.0`, `layer2.0` and `layer3.0`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
model = models.resnet56(seed=0)
norms, handles = {}, []
for stage in ("layer1", "layer2", "layer3"):
    def forward_hook(module, inputs, output, stage=stage):
        inputs[0].register_hook(lambda g: norms.__setitem__(stage, float(np.linalg.norm(g.numpy()))))
    handles.append(getattr(model, stage).register_forward_hook(forward_hook))
with GradientMonitor(model) as mon:
    F.cross_entropy(model(images), labels).backward()
    mon.record(0)
for h in handles:
    h.remove()
blocks = mon.history.blocks
for stage in ("layer1", "layer2", "layer3"):
    monitor_value = mon.history.block_grad_in[0][blocks.index(f"{stage}.0")]
    print(f"{stage}: by hand {norms[stage]:.6e}, GradientMonitor {monitor_value:.6e}")

# %% [markdown]
# **Exercise 3 (blocks that start as the identity).** Build ResNet-56 with
# `zero_init_residual=True` (every residual branch ends with a batch norm whose $\gamma$ is 0) and
# compare its block-input gradient norms at initialisation with the default ResNet-56. Explain the
# result. Which convolutions receive no gradient at all in the first step, and why?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# With gamma = 0 (and beta = 0) every branch outputs 0, so each block is y = relu(s(x)) = s(x) (its
# input comes out of a ReLU, so it is non-negative): the gradient passes through every block
# unchanged, and ||dL/dx|| is the same at every block input (option A drops positions and adds zero
# channels, but the dropped positions had no influence on the loss, so no gradient is lost).
# Inside a branch, everything BEFORE the zeroed gamma gets a zero gradient, because whatever it does
# is multiplied by gamma = 0: both convolutions (conv1, conv2) and the first batch norm (bn1's
# gamma and beta). Only the last batch norm of each branch (bn2: its gamma, through
# dL/dgamma = sum(g * xhat), and its beta) receives a gradient, together with everything outside
# the branches: the stem conv and its batch norm, and the fc layer. After the first step the
# gammas are no longer 0, and the rest of each branch starts to learn.
for zero_init in (False, True):
    model = models.resnet56(seed=0, zero_init_residual=zero_init)
    with GradientMonitor(model) as mon:
        F.cross_entropy(model(images), labels).backward()
        mon.record(0)
    dl_dx = mon.history.grad_array("block_in")[0]
    print(f"zero_init_residual={zero_init}: ||dL/dx|| from block 1 to 27 spans {dl_dx.min():.3e} .. {dl_dx.max():.3e}")
    groups = {}  # role in the network -> [number of parameter tensors, how many have an all-zero gradient]
    for name, param in model.named_parameters():
        parts = name.split(".")  # e.g. layer2.3.bn1.weight, or conv1.weight for the stem
        role = (f"branch {parts[2]}.{parts[3]}" if name.startswith("layer") else f"{parts[0]}.{parts[1]} (outside)")
        count = groups.setdefault(role, [0, 0])
        count[0] += 1
        count[1] += int(not np.any(param.grad))
    for role, (total, zero) in groups.items():
        print(f"    {role:<24} {zero:>2} of {total:>2} with an all-zero gradient")
