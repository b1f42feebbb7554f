# %% [markdown]
# # 4. Residual and bottleneck blocks
#
# A ResNet is a stack of **blocks**. Each block computes a *residual* $F(x)$ with two or three
# convolutions and adds its input back: $y = \operatorname{relu}(F(x) + x)$. This notebook builds
# the blocks of He et al. (2016) from minires's model code, compares them with their *plain* twins
# (the same layers without the addition), and counts what they cost.
#
# **By the end of this notebook you will understand**
#
# * the basic block and the bottleneck block, and how a plain twin differs (only by the addition);
# * the three shortcut options A, B and C for blocks that change the shape, and what each costs;
# * how to count parameters and multiply-accumulates (MACs) of a layer, and why the bottleneck
#   design is cheap;
# * the layout of the CIFAR-10 ResNets (depth $6n + 2$), as `minires.summary` prints it.
#
# **Your turn.** In section 1 you write the forward pass of the basic block yourself. The stub is
# followed by a check cell that fails, saying what is wrong, until your block computes what
# minires's does; the rest of the notebook uses minires's own blocks, so it runs either way. The
# solution is in `tutorials/solutions/04_residual_blocks.py`: try first.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import minires
from minires import Tensor, models, nn
from minires.models import BasicBlock, Bottleneck, PlainBlock, PlainBottleneck, blocks
from minires.summary import summary

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")

# %% [markdown]
# ## 1. The basic block
#
# Two 3x3 convolutions, each followed by batch norm, a ReLU in between, and the input added before
# the final ReLU:
#
# $$F(x) = \mathrm{BN}_2\bigl(\mathrm{conv}_2(\operatorname{relu}(\mathrm{BN}_1(\mathrm{conv}_1(x))))\bigr),
#   \qquad y = \operatorname{relu}\bigl(F(x) + s(x)\bigr),$$
#
# where the shortcut $s$ is the identity whenever $F$ keeps the shape. The convolutions have no
# bias: the batch norm right after each one subtracts the channel mean, which would cancel any bias.

# %%
nn.init.manual_seed(0)  # standalone layers draw their initial weights from minires.nn.init's generator
block = BasicBlock(16, 16)
print(block)
x = Tensor(np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32))
print("\ninput", x.shape, "-> output", block(x).shape)

# %% [markdown]
# **Your turn: the forward pass of a basic block.** `MyBasicBlock` below inherits every layer of
# `BasicBlock` (`self.conv1`, `self.bn1`, `self.relu`, `self.conv2`, `self.bn2`, and the shortcut
# module `self.downsample`, which is `Identity()` here but subsamples and pads, or projects, when
# the block changes the shape). Only its `forward` is missing: complete it so that it returns
# $y = \operatorname{relu}\bigl(F(x) + s(x)\bigr)$ as defined above. The check cell copies the
# weights of a minires `BasicBlock` into yours and compares outputs and gradients (for a random
# upstream gradient), for a block that keeps the shape and for two that halve it (shortcut options
# A and B, section 3).

# %% tags=["stub"]
class MyBasicBlock(BasicBlock):
    """A BasicBlock whose forward pass you write: relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))."""

    def forward(self, x):
        # Your code: the branch F(x) with the layers above, the shortcut s(x) = self.downsample(x),
        # then the final ReLU of their sum.
        raise NotImplementedError("implement MyBasicBlock.forward above")


# %% tags=["check", "raises-exception"]
def check_my_basic_block():
    """MyBasicBlock against minires's BasicBlock: same weights, same input, same upstream gradient."""
    rng = np.random.default_rng(3)
    for in_planes, planes, stride, shortcut in [(16, 16, 1, "A"), (16, 32, 2, "A"), (16, 32, 2, "B")]:
        setting = f"MyBasicBlock({in_planes}, {planes}, stride={stride}, shortcut={shortcut!r})"
        reference = BasicBlock(in_planes, planes, stride=stride, shortcut=shortcut)
        mine = MyBasicBlock(in_planes, planes, stride=stride, shortcut=shortcut)
        mine.load_state_dict(reference.state_dict())
        data = rng.standard_normal((4, in_planes, 8, 8)).astype(np.float32)
        x_ref, x_mine = Tensor(data, requires_grad=True), Tensor(data.copy(), requires_grad=True)
        parts = {}
        handle = reference.add_tap(lambda blk, name, t: parts.__setitem__(name, t.numpy().copy()))
        y_ref = reference(x_ref)
        handle.remove()
        try:
            y_mine = mine(x_mine)
        except NotImplementedError as err:
            raise AssertionError(f"{err}, then run this cell again") from None
        except Exception as err:
            raise AssertionError(f"{setting} raised {type(err).__name__}: {err}") from err
        assert isinstance(y_mine, Tensor) and y_mine.shape == y_ref.shape, (
            f"{setting} must return a Tensor of shape {y_ref.shape}, got {getattr(y_mine, 'shape', y_mine)!r}")
        out, expected = y_mine.numpy(), y_ref.numpy()
        if not np.allclose(out, expected, rtol=1e-4, atol=1e-5):
            f, sx = parts["residual"], parts["shortcut"]
            hint = ""
            if np.allclose(out, np.maximum(f, 0), rtol=1e-4, atol=1e-5):
                hint = " It returns relu(F(x)): the shortcut is missing (that is the plain block)."
            elif np.allclose(out, f + sx, rtol=1e-4, atol=1e-5):
                hint = " It returns F(x) + s(x): the final ReLU is missing."
            elif np.allclose(out, np.maximum(f, 0) + sx, rtol=1e-4, atol=1e-5):
                hint = " It returns relu(F(x)) + s(x): the ReLU must come after the addition."
            raise AssertionError(f"{setting} computes the wrong output (max difference "
                                 f"{np.abs(out - expected).max():.2e} from BasicBlock).{hint}")
        g = rng.standard_normal(y_ref.shape).astype(np.float32)
        y_ref.backward(g)
        y_mine.backward(g)
        grads = [("the input", x_mine.grad, x_ref.grad)] + [
            (name, p.grad, q.grad) for (name, p), q in zip(mine.named_parameters(), reference.parameters())]
        for name, got, want in grads:
            assert got is not None, f"{setting}: no gradient reached {name}; is every layer in the graph?"
            error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
            assert error < 1e-3, f"{setting}: the gradient of {name} is wrong (relative error {error:.1e})"
    print("check passed: MyBasicBlock computes BasicBlock's output and gradients, with and without a shape change")


check_my_basic_block()

# %% [markdown]
# Blocks have **taps**: at fixed points of their forward pass they report the tensors they compute
# (`"input"`, `"residual"` $= F(x)$, `"shortcut"` $= s(x)$, `"output"`) to any function registered
# with `add_tap`. The diagnostics of notebook 5 are built on them; here we use one to confirm that
# the output really is $\operatorname{relu}(F(x) + x)$.

# %%
seen = {}
handle = block.add_tap(lambda blk, name, tensor: seen.__setitem__(name, tensor.numpy().copy()))
y = block(x).numpy()
handle.remove()  # taps cost nothing once removed
print("taps reported:", list(seen))
print("max |y - relu(F(x) + x)|:", np.abs(y - np.maximum(seen["residual"] + x.numpy(), 0)).max())


# %% [markdown]
# ## 2. The plain twin
#
# `PlainBlock` has exactly the layers of `BasicBlock` and computes $y = \operatorname{relu}(F(x))$.
# Same parameters, same names, same initialisation: the only difference is the addition. That is
# what makes the paper's plain-versus-residual comparison a controlled experiment.

# %%
def parameter_table(module):
    return [(name, tuple(p.shape)) for name, p in module.named_parameters()]


nn.init.manual_seed(0)
twin = PlainBlock(16, 16)
print("same parameter names and shapes:", parameter_table(twin) == parameter_table(block))
print("same initial weights:",
      all(np.array_equal(a.data, b.data) for a, b in zip(twin.parameters(), block.parameters())))
y_plain = twin(x).numpy()
print("outputs differ by the shortcut: max |residual - plain| =", float(np.abs(y - y_plain).max()))

# %% [markdown]
# ### The three blocks, drawn
#
# The plain block, the basic block and the bottleneck block of section 4, as data flows through
# them (top to bottom), in the style of the paper's figures 2 and 5. $C$ is the block's width; the
# bottleneck's 3x3 convolution runs on $C/4$ channels. Only the residual blocks have the shortcut
# (red), and their last ReLU comes after the addition.

# %%
STYLE = {"conv": "#a8d1f0", "bn": "#fdd9a0", "relu": "#b9e4b0", "io": "white"}


def draw_block(ax, layers, residual, title):
    """Draw a block top to bottom: x, then `layers` as (label, kind) boxes, the addition and last ReLU."""
    items = [("x", "io")] + layers + ([("+", "add")] if residual else []) + [("relu", "relu"), ("y", "io")]
    ys = -np.arange(len(items), dtype=float)
    for (label, kind), y in zip(items, ys):
        if kind == "add":
            ax.text(0, y, "+", ha="center", va="center", fontsize=13, zorder=3,
                    bbox=dict(boxstyle="circle,pad=0.1", fc="white", ec="0.2", lw=1.5))
        else:
            ax.text(0, y, label, ha="center", va="center", fontsize=9, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.3", fc=STYLE[kind], ec="0.3" if kind != "io" else "white"))
    for y0, y1 in zip(ys[:-1], ys[1:]):
        ax.annotate("", xy=(0, y1 + 0.3), xytext=(0, y0 - 0.3), arrowprops=dict(arrowstyle="->", color="0.3"))
    if residual:  # the shortcut: from x, around the branch, into the addition
        y_add = ys[len(items) - 3]
        ax.plot([0.25, 1.3, 1.3], [0, 0, y_add], color="C3", lw=2)
        ax.annotate("", xy=(0.3, y_add), xytext=(1.3, y_add), arrowprops=dict(arrowstyle="->", color="C3", lw=2))
        ax.text(1.4, y_add / 2, "identity\n(or s(x) when\nthe shape\nchanges)", color="C3", fontsize=8, va="center")
    ax.set_xlim(-1.6, 2.6)
    ax.set_ylim(-11.6, 0.5)
    ax.set_title(title, fontsize=11)
    ax.axis("off")


conv3 = ("3x3 conv, C -> C", "conv")
bn, relu = ("batch norm", "bn"), ("relu", "relu")
fig, axes = plt.subplots(1, 3, figsize=(12, 5.6))
draw_block(axes[0], [conv3, bn, relu, conv3, bn], residual=False, title="PlainBlock\nrelu(F(x))")
draw_block(axes[1], [conv3, bn, relu, conv3, bn], residual=True, title="BasicBlock\nrelu(F(x) + x)")
draw_block(axes[2], [("1x1 conv, C -> C/4", "conv"), bn, relu, ("3x3 conv, C/4 -> C/4", "conv"), bn, relu,
                     ("1x1 conv, C/4 -> C", "conv"), bn], residual=True, title="Bottleneck\nrelu(F(x) + x)")
plt.show()

# %% [markdown]
# And here is the same thing as code: minires's own (every block is a subclass of `Block`; the
# layers of the branch are shared by a residual block and its plain twin), exactly as it is in
# `minires/models/blocks.py`. The `_tap` calls report tensors to the taps and compute nothing; the
# other lines are the whole definition. (On the CPU, minires's fast kernels may run a training
# block with each batch norm fused with its ReLU and the addition, computing the same numbers: see
# the `Block` docstring.)

# %%
for function in (blocks._BasicBranch._branch, BasicBlock.forward, PlainBlock.forward,
                 blocks._BottleneckBranch._branch):
    print(f"# {function.__qualname__}")
    print(inspect.getsource(function))

# %% [markdown]
# For comparison, the same two residual blocks as they are usually written in PyTorch, in the style
# of torchvision's ResNet (this is text, not run here; torchvision names the shortcut `downsample`
# and uses `None` where minires has an `Identity`, so the parameter names match):
#
# ```python
# import torch.nn as nn
#
#
# class BasicBlock(nn.Module):
#     expansion = 1
#
#     def __init__(self, in_planes, planes, stride=1, downsample=None):
#         super().__init__()
#         self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
#         self.bn1 = nn.BatchNorm2d(planes)
#         self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
#         self.bn2 = nn.BatchNorm2d(planes)
#         self.relu = nn.ReLU(inplace=True)
#         self.downsample = downsample  # e.g. nn.Sequential(1x1 conv with stride, BatchNorm2d)
#
#     def forward(self, x):
#         identity = x if self.downsample is None else self.downsample(x)
#         out = self.relu(self.bn1(self.conv1(x)))
#         out = self.bn2(self.conv2(out))
#         return self.relu(out + identity)
#
#
# class Bottleneck(nn.Module):
#     expansion = 4
#
#     def __init__(self, in_planes, planes, stride=1, downsample=None):
#         super().__init__()
#         self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)  # reduce
#         self.bn1 = nn.BatchNorm2d(planes)
#         self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
#         self.bn2 = nn.BatchNorm2d(planes)
#         self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)  # restore
#         self.bn3 = nn.BatchNorm2d(planes * 4)
#         self.relu = nn.ReLU(inplace=True)
#         self.downsample = downsample
#
#     def forward(self, x):
#         identity = x if self.downsample is None else self.downsample(x)
#         out = self.relu(self.bn1(self.conv1(x)))
#         out = self.relu(self.bn2(self.conv2(out)))
#         out = self.bn3(self.conv3(out))
#         return self.relu(out + identity)
# ```
#
# A plain twin is the same `forward` without `+ identity`.


# %% [markdown]
# ## 3. Shortcuts when the shape changes: options A, B and C
#
# The first block of each stage halves the height and width (stride 2 in its first convolution) and
# doubles the channels, so $x$ no longer has the shape of $F(x)$. The paper compares three fixes:
#
# * **option A**: keep the shortcut parameter-free. Subsample the grid (`x[:, :, ::2, ::2]`) and
#   append zero channels. The paper's CIFAR networks use it, so a ResNet has exactly as many
#   parameters as its plain twin. minires pads the new channels evenly on both sides, as common
#   PyTorch reproductions do.
# * **option B**: a 1x1 convolution with stride 2, followed by batch norm (a *projection*), only
#   where the shape changes; identity elsewhere. torchvision's ImageNet models use it.
# * **option C**: a projection on *every* shortcut, even where the identity would do.

# %%
def count(module):
    return sum(p.size for p in module.parameters())


print(f"{'':>6} {'16 -> 32 channels, stride 2':^36} | {'32 -> 32 channels, stride 1':^36}")
print(f"{'option':>6} {'shortcut':>18} {'params':>8} {'(block)':>8} | {'shortcut':>18} {'params':>8} {'(block)':>8}")
for option in "ABC":
    down, same = BasicBlock(16, 32, stride=2, shortcut=option), BasicBlock(32, 32, shortcut=option)
    print(f"{option:>6} " + " | ".join(
        f"{type(b.shortcut).__name__:>18} {count(b.shortcut):>8,} {count(b):>8,}" for b in (down, same)))
print(f"{'plain':>6} {'-':>18} {0:>8} {count(PlainBlock(16, 32, stride=2)):>8,} | "
      f"{'-':>18} {0:>8} {count(PlainBlock(32, 32)):>8,}")

# %% [markdown]
# B and C differ only on blocks that keep the shape, where C still projects. What option A does to
# a tensor: below, channel $c$ of the input holds the constant $c + 1$ and
# the spatial grid holds $0, 1, 2, \dots$ (times a small factor) so that the subsampling is visible.

# %%
shortcut_a = BasicBlock(16, 32, stride=2, shortcut="A").shortcut
grid = np.arange(64, dtype=np.float32).reshape(8, 8) / 1000
xa = Tensor((np.arange(1, 17, dtype=np.float32).reshape(1, 16, 1, 1) + grid).astype(np.float32))
sa = shortcut_a(xa).numpy()
print("input", xa.shape, "-> shortcut", sa.shape)
print("channel 8 of the shortcut (= input channel 0, every second row and column), times 1000:")
print(np.round((sa[0, 8] - 1) * 1000).astype(int))

fig, ax = plt.subplots(figsize=(9, 2.6))
ax.bar(range(32), sa[0].mean(axis=(1, 2)), color=["0.7" if v == 0 else "C0" for v in sa[0].mean(axis=(1, 2))])
ax.set_xlabel("output channel of the option-A shortcut")
ax.set_ylabel("mean value")
ax.set_title("Option A: the 16 input channels in the middle, 8 zero channels on each side")
plt.show()

# %% [markdown]
# Over a whole network the choice adds up. ResNet-20 has only two shape-changing blocks, so option
# B adds little; option C puts a projection into all nine blocks:

# %%
for option in "ABC":
    net = models.resnet20(shortcut=option, seed=0)
    print(f"resnet20, option {option}: {count(net):>7,} parameters")
print(f"plain20            : {count(models.plain20(seed=0)):>7,} parameters")

# %% [markdown]
# ## 4. The bottleneck block, and why it is cheap
#
# Deeper ImageNet ResNets (50, 101, 152 layers) replace the two 3x3 convolutions by three layers:
# a 1x1 convolution that **reduces** the width ($C \to C/4$), a 3x3 convolution on the narrow
# representation, and a 1x1 convolution that **restores** the width ($C/4 \to C$), each with batch
# norm. The expensive 3x3 only ever sees a quarter of the channels.
#
# **Counting.** A convolution with $C_{in}$ input and $C_{out}$ output channels and a $k \times k$
# kernel has $C_{out} C_{in} k^2$ weights, and performs one multiply-accumulate per weight per output
# position: $\text{MACs} = C_{out} C_{in} k^2 H_{out} W_{out}$. Batch norm, ReLU and the addition are
# negligible in comparison and are not counted (the paper's "FLOPs" are these MACs).
# `minires.summary` measures the output shapes with one forward pass and applies this formula.
#
# The first two blocks below are the two of the paper's figure 5, on 56x56 maps: the basic block
# of ResNet-34's first stage (64 channels) and the bottleneck of ResNet-50's first stage (256
# channels in and out, 64 inside), which the paper describes as having similar time complexity.
# Next to them: what two 3x3 convolutions would cost at 256 channels, and the same bottleneck with
# a projection (option C) on its shortcut. The numbers are minires's count, not the paper's.

# %%
nn.init.manual_seed(0)
candidates = {
    "basic, 64 ch": (BasicBlock(64, 64), (64, 56, 56)),
    "bottleneck, 256 ch (64 inside)": (Bottleneck(256, 64), (256, 56, 56)),
    "basic, 256 ch": (BasicBlock(256, 256), (256, 56, 56)),
    "bottleneck + projection (C)": (Bottleneck(256, 64, shortcut="C"), (256, 56, 56)),
}
costs = {}
print(f"{'block':<32} {'params':>10} {'MACs (56x56)':>14}")
for label, (blk, shape) in candidates.items():
    s = summary(blk, shape)
    costs[label] = (s.total_params, s.total_macs)
    print(f"{label:<32} {s.total_params:>10,} {s.total_macs / 1e6:>12.0f} M")

print("\nper-layer view of the bottleneck:")
print(summary(candidates["bottleneck, 256 ch (64 inside)"][0], (256, 56, 56)))

fig, axes = plt.subplots(1, 2, figsize=(11, 2.8), sharey=True)
labels = list(costs)
panels = [(axes[0], 0, "parameters", "k", 1e3), (axes[1], 1, "MACs per image (56x56 maps)", "M", 1e6)]
for ax, k, title, unit, scale in panels:
    values = [costs[lab][k] / scale for lab in labels]
    ax.barh(labels, values, color=["C0", "C2", "C3", "C1"])
    for row, v in enumerate(values):
        ax.text(v, row, f" {v:,.0f}{unit}", va="center")
    ax.set_xlim(0, max(values) * 1.25)
    ax.set_title(title)
axes[0].invert_yaxis()
plt.show()

# %% [markdown]
# The bottleneck processes a representation **four times wider** than the 64-channel basic block at
# about the same cost, and costs about 17 times less than two 3x3 convolutions at that width. It
# also shows why identity shortcuts matter most here: a projection between the two wide ends is a
# $256 \times 256$ 1x1 convolution, which almost doubles the block's parameters and compute.
#
# `PlainBottleneck` is its plain twin, as before: the same three layers and names, seeded the same,
# without the addition. The check of section 2 again, for the bottleneck (the taps of a residual
# block report its branch $F(x)$, so the plain twin's output must be exactly
# $\operatorname{relu}(F(x))$ and the residual block's $\operatorname{relu}(F(x) + x)$):

# %%
nn.init.manual_seed(0)
bottleneck = Bottleneck(64, 16)  # 64 -> 16 -> 16 -> 64 channels
nn.init.manual_seed(0)
plain_bottleneck = PlainBottleneck(64, 16)
print("same parameter names and shapes:", parameter_table(plain_bottleneck) == parameter_table(bottleneck))
print("same initial weights:", all(np.array_equal(a.data, b.data)
                                   for a, b in zip(plain_bottleneck.parameters(), bottleneck.parameters())))
xb = Tensor(np.random.default_rng(1).standard_normal((2, 64, 8, 8)).astype(np.float32))
branch = {}
handle = bottleneck.add_tap(lambda blk, name, tensor: branch.__setitem__(name, tensor.numpy().copy()))
y_res = bottleneck(xb).numpy()
handle.remove()
y_plain = plain_bottleneck(xb).numpy()
print("max |plain - relu(F(x))|     :", float(np.abs(y_plain - np.maximum(branch["residual"], 0)).max()))
print("max |residual - relu(F(x)+x)|:", float(np.abs(y_res - np.maximum(branch["residual"] + xb.numpy(), 0)).max()))

# %% [markdown]
# ## 5. The CIFAR-10 ResNets
#
# For CIFAR-10 (32x32 images) the paper uses a compact family (section 4.2): a 3x3 convolution with
# 16 filters, then three stages of $n$ basic blocks ($2n$ layers each) with 16, 32 and 64 filters on
# 32x32, 16x16 and 8x8 maps, then global average pooling and a 10-way fully connected layer.
# Counting the layers with weights: $1 + 3 \cdot 2n + 1 = 6n + 2$. $n = 3, 5, 7, 9, 18$ gives
# ResNet-20, 32, 44, 56 and 110. Here is ResNet-20, layer by layer:

# %%
net = models.resnet20(seed=0)
s20 = summary(net, (3, 32, 32))
print(s20)

# %%
convs = [layer for layer in s20.layers if layer.type in ("Conv2d", "Linear")]
fig, ax1 = plt.subplots(figsize=(10, 3.2))
depth = np.arange(1, len(convs) + 1)
ax1.step(depth, [layer.output_shape[1] for layer in convs], where="mid", color="C0", label="channels")
ax1.set_ylabel("output channels", color="C0")
ax2 = ax1.twinx()
sizes = [layer.output_shape[2] if len(layer.output_shape) == 4 else 1 for layer in convs]
ax2.step(depth, sizes, where="mid", color="C3", label="height = width")
ax2.set_ylabel("map size (H = W)", color="C3")
ax1.set_xlabel("weighted layer (1 = first conv, 20 = fc)")
ax1.set_title("ResNet-20: every stage halves the map and doubles the channels")
plt.show()

# %% [markdown]
# How do these counts compare with the paper's? For the CIFAR models its table 6 gives only the
# parameter counts, rounded (it does not list their MACs; the MAC column below is minires's own
# computation). For the ImageNet models its table 1 gives the "FLOPs" (multiply-adds) at 224x224:
# 1.8, 3.6 and 3.8 billion for ResNet-18, 34 and 50. One detail matters for ResNet-50: the paper
# puts the stride of a downsampling bottleneck in its first 1x1 convolution, while torchvision
# (and minires by default, `stride_in_1x1=False`) puts it in the 3x3, which costs about 0.2
# billion MACs more. Parameter counts can also be compared with torchvision's, since minires
# builds these models with the same layers.

# %%
paper_params = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}  # millions, table 6 of the paper
print(f"{'model':<10} {'params':>10} {'paper (table 6)':>16} {'MACs/image (minires)':>21}")
for depth, p_params in paper_params.items():
    s = summary(models.create(f"resnet{depth}", seed=0), (3, 32, 32))
    print(f"resnet{depth:<4} {s.total_params:>10,} {p_params:>14.2f} M {s.total_macs / 1e6:>19.2f} M")

paper_gmacs = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8}  # billions at 224x224, table 1 of the paper
torchvision = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
print(f"\n{'model':<25} {'params':>11} {'torchvision':>12} {'GMACs (minires)':>16} {'paper (table 1)':>16}")
variants = [("resnet18", {}), ("resnet34", {}), ("resnet50", {}), ("resnet50", {"stride_in_1x1": True})]
for name, kwargs in variants:
    model = models.create(name, seed=0, **kwargs)
    label = name + (" (stride in 1x1)" if kwargs else "")
    n_params, macs = count(model), summary(model, (3, 224, 224)).total_macs
    same = "same" if n_params == torchvision[name] else "DIFFERENT"
    print(f"{label:<25} {n_params:>11,} {same:>12} {macs / 1e9:>16.2f} {paper_gmacs[name]:>16.1f}")

# %% [markdown]
# ## Summary
#
# * A residual block computes $\operatorname{relu}(F(x) + s(x))$; its plain twin has the same layers
#   and computes $\operatorname{relu}(F(x))$.
# * When a block changes the shape, the shortcut is either parameter-free (A: subsample and pad with
#   zero channels) or a strided 1x1 projection with batch norm (B: only there; C: everywhere).
# * A convolution costs $C_{out} C_{in} k^2$ parameters and that many MACs per output position. The
#   bottleneck puts its 3x3 on a quarter of the width, so it can afford wide representations.
# * CIFAR ResNets have $6n + 2$ layers in three stages (16, 32, 64 channels); ResNet-20 has 0.27 M
#   parameters (as in the paper's table 6) and, by minires's count, 40.55 M MACs per image.
#
# ## Exercises
#
# **Exercise 1.** Count by hand the parameters of `BasicBlock(32, 64, stride=2, shortcut="B")`
# (remember that each batch norm has a $\gamma$ and a $\beta$ per channel) and check with minires.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
# conv1 3x3, 32 -> 64: 9 * 32 * 64 = 18,432;  bn1: 2 * 64 = 128
# conv2 3x3, 64 -> 64: 9 * 64 * 64 = 36,864;  bn2: 128
# shortcut (option B): 1x1 conv 32 -> 64: 2,048; its bn: 128
by_hand = 18_432 + 128 + 36_864 + 128 + 2_048 + 128
blk = BasicBlock(32, 64, stride=2, shortcut="B")
print(f"by hand {by_hand:,}, minires {count(blk):,}")
for name, p in blk.named_parameters():
    print(f"  {name:<22} {str(tuple(p.shape)):<16} {p.size:>7,}")

# %% [markdown]
# **Exercise 2.** `models.resnet20(zero_init_residual=True)` sets $\gamma = 0$ in the last batch norm
# of every residual branch (Goyal et al., 2017). What does each block compute at initialisation?
# Verify it with taps on every block (`model.blocks()` yields `(name, block)` pairs).

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
# With gamma = 0 (and beta = 0) the branch outputs F(x) = 0, so y = relu(s(x)). The input of every
# block is the output of a ReLU (non-negative), so an identity-shortcut block returns its input
# unchanged, and an option-A block returns the subsampled, zero-padded input: each block starts as
# its shortcut, and the network starts as a shallow one (stem, pooling, fc).
model = models.resnet20(zero_init_residual=True, seed=0)
records = {}
for name, blk in model.blocks():
    blk.add_tap(lambda b, tap, t, name=name: records.setdefault(name, {}).__setitem__(tap, t.numpy().copy()))
model.train()
model(Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)))
for name, r in records.items():
    print(f"{name}: max|F(x)| = {np.abs(r['residual']).max():.1e}, "
          f"max|y - s(x)| = {np.abs(r['output'] - r['shortcut']).max():.1e}")

# %% [markdown]
# **Exercise 3.** Show that `plain20` and `resnet20` have exactly the same parameter count and the
# same `state_dict` keys (so the same weights can be loaded into both), and that this stops being
# true with option-B shortcuts.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
plain, resnet_a, resnet_b = models.plain20(seed=0), models.resnet20(seed=0), models.resnet20(shortcut="B", seed=0)
print(f"parameters: plain20 {count(plain):,} | resnet20 (A) {count(resnet_a):,} | resnet20 (B) {count(resnet_b):,}")
print("same state_dict keys, plain20 vs resnet20 (A):", list(plain.state_dict()) == list(resnet_a.state_dict()))
extra = sorted(set(resnet_b.state_dict()) - set(plain.state_dict()))
print("keys only in resnet20 (B):", extra)
