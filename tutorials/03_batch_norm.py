# %% [markdown]
# # 3. Batch normalisation: forward, a backward pass derived by hand, train versus eval
#
# Batch normalisation (Ioffe and Szegedy, 2015) rescales every channel of a layer's output to zero
# mean and unit variance over the mini-batch, then lets the network pick its own scale and shift.
# ResNets put one after every convolution. Its backward pass is the most instructive one in the
# network: every output depends on every input of its channel, and the closed-form gradient has a
# structure that also explains a classic testing mistake.
#
# **By the end of this notebook you will understand**
#
# * what batch norm computes in training mode, and over which axes;
# * how to derive its backward pass by hand, and how to check the result numerically;
# * why a gradient check with an all-ones upstream gradient is useless for batch norm (a broken
#   backward pass sails through it, and fails as soon as the upstream gradient is random);
# * the difference between training and evaluation mode, and how the running statistics are
#   collected (momentum, the unbiased variance);
# * what batch norm buys in practice: a deep network that trains whatever the scale of its initial
#   weights.
#
# **Your turn.** In section 2 you write the backward pass yourself. The stub is followed by a check
# cell that fails, saying what is wrong, until your function is right; the rest of the notebook uses
# minires's own batch norm, so it runs either way. The solution is in
# `tutorials/solutions/03_batch_norm.py`: try first.

# %%
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

import minires
from minires import Tensor, nn
from minires.nn import functional as F
from minires.optim import SGD

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")


# %% [markdown]
# ## 1. The forward pass
#
# For a batch $x$ of shape $(N, C, H, W)$, channel $c$ has $m = N H W$ values $x_1, \dots, x_m$
# (all images, all positions). Batch norm in training mode computes, per channel,
#
# $$\mu = \frac1m \sum_i x_i, \qquad
#   \sigma^2 = \frac1m \sum_i (x_i - \mu)^2, \qquad
#   s = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, \qquad
#   \hat x_i = (x_i - \mu)\, s, \qquad
#   y_i = \gamma\, \hat x_i + \beta .$$
#
# $\hat x$ has zero mean and unit variance per channel; the learnt $\gamma$ (`weight`) and $\beta$
# (`bias`) restore whatever scale and shift suit the next layer. Note the **biased** variance
# (divide by $m$): it is the variance of exactly these numbers. Here it is in NumPy, compared with
# minires.

# %%
def bn_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch norm of x (N, C, H, W); returns y, xhat and s = 1/sqrt(var + eps) per channel."""
    axes = (0, 2, 3)  # everything except the channel axis
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased: divides by m
    s = 1 / np.sqrt(var + eps)
    xhat = (x - mu) * s
    return gamma.reshape(1, -1, 1, 1) * xhat + beta.reshape(1, -1, 1, 1), xhat, s


rng = np.random.default_rng(0)
shift, scale = np.array([3.0, -1.0, 0.0]), np.array([2.0, 0.5, 1.0])
x = shift.reshape(1, 3, 1, 1) + scale.reshape(1, 3, 1, 1) * rng.standard_normal((16, 3, 8, 8))
gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])

y_np, xhat_np, s_np = bn_forward(x, gamma, beta)
y_mr = F.batch_norm(Tensor(x), None, None, Tensor(gamma), Tensor(beta), training=True).numpy()
print("max |NumPy - minires|:", np.abs(y_np - y_mr).max())
print("per-channel mean of x   :", x.mean(axis=(0, 2, 3)).round(3), " std:", x.std(axis=(0, 2, 3)).round(3))
print("per-channel mean of xhat:", xhat_np.mean(axis=(0, 2, 3)).round(12) + 0,
      " std:", xhat_np.std(axis=(0, 2, 3)).round(5))
print("per-channel mean of y   :", y_np.mean(axis=(0, 2, 3)).round(6) + 0, " std:", y_np.std(axis=(0, 2, 3)).round(5))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for c in range(3):
    axes[0].hist(x[:, c].ravel(), bins=60, alpha=0.6, label=f"channel {c}")
    axes[1].hist(xhat_np[:, c].ravel(), bins=60, alpha=0.6, label=f"channel {c}")
axes[0].set_title("input x: each channel has its own mean and scale")
axes[1].set_title(r"normalised $\hat x$: every channel has mean 0, std 1")
axes[0].legend()
plt.show()


# %% [markdown]
# ## 2. The backward pass, derived by hand
#
# Write $g_i = \partial L / \partial y_i$ for the upstream gradient of one channel. The parameter
# gradients are immediate, since $y_i = \gamma \hat x_i + \beta$:
#
# $$\frac{\partial L}{\partial \beta} = \sum_i g_i, \qquad
#   \frac{\partial L}{\partial \gamma} = \sum_i g_i\, \hat x_i .$$
#
# The input gradient is the interesting one: $\hat x_j$ depends on $x_i$ **directly** (if $i = j$)
# and **through the statistics** $\mu$ and $\sigma^2$, which every $x_i$ feeds. The derivatives of
# the statistics are
#
# $$\frac{\partial \mu}{\partial x_i} = \frac1m, \qquad
#   \frac{\partial \sigma^2}{\partial x_i} = \frac2m (x_i - \mu)
#   \quad\text{(the path through } \mu \text{ drops out, because } \textstyle\sum_j (x_j - \mu) = 0\text{)},$$
#
# so $\dfrac{\partial s}{\partial x_i} = -\tfrac12 (\sigma^2 + \varepsilon)^{-3/2}\,\dfrac2m (x_i - \mu)
# = -\dfrac{s^2}{m}\, \hat x_i$. With the product rule on $\hat x_j = (x_j - \mu)\, s$:
#
# $$\frac{\partial \hat x_j}{\partial x_i}
#   = s\Bigl(\delta_{ij} - \frac1m\Bigr) + (x_j - \mu)\,\frac{\partial s}{\partial x_i}
#   = \frac{s}{m}\bigl(m\,\delta_{ij} - 1 - \hat x_i \hat x_j\bigr).$$
#
# Finally the chain rule, with $\partial L / \partial \hat x_j = \gamma g_j$, sums over all $j$:
#
# $$\boxed{\;\frac{\partial L}{\partial x_i}
#   = \sum_j \gamma g_j \frac{\partial \hat x_j}{\partial x_i}
#   = \frac{\gamma s}{m}\Bigl(m\, g_i - \sum_j g_j - \hat x_i \sum_j g_j \hat x_j\Bigr)
#   = \frac{\gamma s}{m}\Bigl(m\, g_i - \frac{\partial L}{\partial \beta}
#     - \hat x_i\, \frac{\partial L}{\partial \gamma}\Bigr)\;}$$
#
# Read it as: take the upstream gradient, **remove its mean and its component along $\hat x$**,
# and scale by $\gamma s$. Two consequences, for every $g$ and every channel:
# $\sum_i \partial L/\partial x_i = 0$ exactly, and $\sum_i \hat x_i\, \partial L/\partial x_i \approx 0$.
# Shifting a channel of $x$ cannot change $\hat x$, and neither can scaling it (up to the small
# $\varepsilon$ under the square root, which is why the second sum is
# $\gamma s \frac{\partial L}{\partial \gamma} \frac{\varepsilon}{\sigma^2 + \varepsilon}$ rather than
# exactly zero), so the gradient has no component in those directions. Computing the two sums
# once and then the elementwise formula costs two passes over the data, which is what minires's
# batch-norm kernel does.
#
# **Your turn: the batch-norm backward pass.** Turn the boxed formula and the two parameter
# gradients into NumPy: complete `bn_backward` below. It receives the upstream gradient `g` and
# what the forward pass saved, `xhat` (both of shape $(N, C, H, W)$), `s` $= 1/\sqrt{\sigma^2 +
# \varepsilon}$ (shape $(1, C, 1, 1)$) and `gamma` (shape $(C,)$), and returns
# `(dx, dgamma, dbeta)`. Every sum runs over the axes $(0, 2, 3)$, everything but the channel. The
# check cell compares your three gradients with minires's (autograd through `F.batch_norm`) for a
# random upstream gradient, on two shapes.

# %% tags=["stub"]
def bn_backward(g, xhat, s, gamma):
    """Closed-form gradient of training-mode batch norm; g, xhat (N, C, H, W), s (1, C, 1, 1), gamma (C,)."""
    axes = (0, 2, 3)  # noqa: F841 (every axis but the channel; unused until you write your code)
    m = g.size // g.shape[1]  # noqa: F841 (values per channel: N * H * W)
    # Your code: dbeta and dgamma (shape (C,)), then dx (the shape of g) from the boxed formula.
    # gamma.reshape(1, -1, 1, 1) broadcasts a per-channel vector over N, H and W.
    raise NotImplementedError("implement bn_backward above: return (dx, dgamma, dbeta)")


# %% tags=["check", "raises-exception"]
def check_bn_backward():
    """bn_backward against minires's batch-norm backward, with a random upstream gradient (float64)."""
    rng = np.random.default_rng(5)
    for shape in [(4, 3, 2, 2), (8, 2, 5, 3)]:
        x = rng.standard_normal(shape) * 2 + 1
        g = rng.standard_normal(shape)  # random: an all-ones g would hide bugs (section 3)
        gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
        mu, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
        s = 1 / np.sqrt(var + 1e-5)
        try:
            mine = bn_backward(g, (x - mu) * s, s, gamma)
        except NotImplementedError as err:
            raise AssertionError(f"{err}, then run this cell again") from None
        assert isinstance(mine, tuple) and len(mine) == 3, "bn_backward must return (dx, dgamma, dbeta)"
        xt, gt, bt = (Tensor(a, requires_grad=True) for a in (x, gamma, beta))
        F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5).backward(g)
        for label, got, expected in zip(("dx", "dgamma", "dbeta"), mine, (xt.grad, gt.grad, bt.grad)):
            got = np.asarray(got)
            assert got.shape == expected.shape, (
                f"{label} from bn_backward has shape {got.shape} for an input of shape {shape}; expected "
                f"{expected.shape}")
            error = np.abs(got - expected).max() / np.abs(expected).max()
            assert error < 1e-8, (
                f"{label} from bn_backward is wrong for an input of shape {shape}: relative error {error:.1e} "
                f"against minires" + (". Does it subtract both the mean of g and its component along xhat?"
                                      if label == "dx" else ""))
    print("check passed: dx, dgamma and dbeta agree with minires for a random upstream gradient")


check_bn_backward()


# %% [markdown]
# minires's own backward pass is the same closed form. Here it is against finite differences of
# $\langle \mathrm{BN}(x), g\rangle$, on a small float64 problem so that they are cheap and exact
# enough, together with the two sums that must vanish:

# %%
rng = np.random.default_rng(1)
xs = rng.standard_normal((4, 3, 2, 2)) * 2 + 1
gs = rng.standard_normal(xs.shape)  # a RANDOM upstream gradient
gam, bet = rng.standard_normal(3), rng.standard_normal(3)
_, xhat_s, s_s = bn_forward(xs, gam, bet)

# minires: autograd through F.batch_norm, seeded with gs
xt, gt, bt = (Tensor(a, requires_grad=True) for a in (xs, gam, bet))
F.batch_norm(xt, None, None, gt, bt, training=True).backward(gs)
dx_lib = xt.grad

# Finite differences of <batch_norm(x), g> with respect to x
bn_of_x = lambda t: F.batch_norm(t, None, None, Tensor(gam), Tensor(bet), training=True)  # noqa: E731
dx_numeric = minires.numerical_gradient(bn_of_x, [Tensor(xs.copy())], 0, gs)

print("max |dx minires - finite diff.|:", np.abs(dx_lib - dx_numeric).max())
print("sum of dx per channel          :", dx_lib.sum(axis=(0, 2, 3)))
print("sum of dx * xhat per channel   :", (dx_lib * xhat_s).sum(axis=(0, 2, 3)))


# %% [markdown]
# The closed form agrees with finite differences to rounding error, and both sums vanish. We
# could also have let autograd differentiate a batch norm **built from primitive operations**
# (mean, subtract, multiply, square root, divide). The result is the same, but the graph then has
# about ten nodes, each storing a full-size intermediate array for its backward pass; the
# hand-derived formula stores only $x$ and two numbers per channel.

# %%
def bn_from_primitives(x, gamma, beta, eps=1e-5):
    """Batch norm out of minires's elementary operations: autograd derives the backward pass."""
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    centred = x - mu
    var = (centred * centred).mean(axis=(0, 2, 3), keepdims=True)
    return gamma.reshape(1, 3, 1, 1) * centred / (var + eps).sqrt() + beta.reshape(1, 3, 1, 1)


xp_ = Tensor(xs, requires_grad=True)
bn_from_primitives(xp_, Tensor(gam), Tensor(bet)).backward(gs)
print("max |autograd of primitives - closed form (minires)|:", np.abs(xp_.grad - dx_lib).max())

try:
    import torch
except ImportError:
    torch = None
    print("(PyTorch not installed: skipping the optional cross-check)")
if torch is not None:
    tx = torch.tensor(xs, requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx, None, None, torch.tensor(gam), torch.tensor(bet), training=True)
    ty.backward(torch.tensor(gs))
    print("max |torch - closed form (minires)|:", np.abs(tx.grad.numpy() - dx_lib).max())


# %% [markdown]
# ## 3. Why an all-ones upstream gradient proves nothing here
#
# It is tempting to test a backward pass with `y.sum().backward()`, i.e. with $g_i = 1$ for every
# element. For batch norm that test is **vacuous**: per channel,
# $\sum_i y_i = \gamma \sum_i \hat x_i + m\beta = m\beta$, whatever $x$ is. The function being
# differentiated is constant in $x$, so its true gradient is zero, and the finite differences say
# zero too. Any backward pass that happens to return zero for $g = 1$ passes.
#
# A realistic bug of exactly that kind: forgetting the last term of the boxed formula,
# $-\hat x_i\, \partial L/\partial \gamma$. For $g = 1$ the remaining part,
# $m\,g_i - \sum_j g_j$, is zero, so the bug is invisible. Below, three backward passes for a
# 2-D input $(m, C)$ (the same mathematics with the channel in the second axis) are checked against
# finite differences, first with $g = 1$, then with a random $g$.

# %%
class BatchNormManual(minires.Function):
    """Training-mode batch norm of an (m, C) array with gamma, beta (C,); the correct closed-form backward."""

    @staticmethod
    def forward(ctx, x, gamma, beta):
        s = 1 / np.sqrt(x.var(axis=0) + 1e-5)
        xhat = (x - x.mean(axis=0)) * s
        ctx.save_for_backward(xhat, s, gamma)
        return gamma * xhat + beta

    @staticmethod
    def backward(ctx, grad):
        xhat, s, gamma = ctx.saved_tensors
        m = grad.shape[0]
        dbeta, dgamma = grad.sum(axis=0), (grad * xhat).sum(axis=0)
        return gamma * s / m * (m * grad - dbeta - xhat * dgamma), dgamma, dbeta


class BatchNormForgetsTerm(BatchNormManual):
    @staticmethod
    def backward(ctx, grad):
        xhat, s, gamma = ctx.saved_tensors
        m = grad.shape[0]
        dbeta, dgamma = grad.sum(axis=0), (grad * xhat).sum(axis=0)
        return gamma * s / m * (m * grad - dbeta), dgamma, dbeta  # BUG: "- xhat * dgamma" is missing


class BatchNormReturnsZero(BatchNormManual):
    @staticmethod
    def backward(ctx, grad):
        xhat, s, gamma = ctx.saved_tensors
        return np.zeros_like(grad), (grad * xhat).sum(axis=0), grad.sum(axis=0)  # BUG: no input gradient at all


rng = np.random.default_rng(2)
x2 = rng.standard_normal((8, 3)) * 3 + 1
gamma2, beta2 = Tensor(rng.standard_normal(3)), Tensor(rng.standard_normal(3))


def input_grad_error(cls, g):
    """max |backward seeded with g - central differences of <f(x), g>| for the input x."""
    xt = Tensor(x2.copy(), requires_grad=True)
    f = lambda t: cls.apply(t, gamma2, beta2)  # noqa: E731
    f(xt).backward(g)
    return np.abs(xt.grad - minires.numerical_gradient(f, [xt], 0, g)).max()


g_ones, g_random = np.ones((8, 3)), rng.standard_normal((8, 3))
print(f"{'backward pass':<22} {'error with g = 1':>17} {'error with random g':>20}")
for cls in (BatchNormManual, BatchNormForgetsTerm, BatchNormReturnsZero):
    print(f"{cls.__name__:<22} {input_grad_error(cls, g_ones):>17.1e} {input_grad_error(cls, g_random):>20.1e}")

# %% [markdown]
# With $g = 1$ all three look perfect; with a random $g$ the two broken ones are off by order one.
# `minires.gradcheck` always draws a random $g$, so it catches the bug:

# %%
x2t = Tensor(x2.copy(), requires_grad=True)
try:
    minires.gradcheck(lambda t: BatchNormForgetsTerm.apply(t, gamma2, beta2), [x2t], seed=0)
except minires.GradcheckError as err:
    print("gradcheck:", err)
print("and the correct one:", minires.gradcheck(lambda t: BatchNormManual.apply(t, gamma2, beta2), [x2t], seed=0))

# %% [markdown]
# The same trap exists for softmax (each row sums to 1, so an all-ones check of a softmax layer is
# just as blind). The rule: **always seed gradient checks with a random upstream gradient.**
#
# ## 4. Training mode versus evaluation mode
#
# In training mode the statistics come from the current batch, so an example's output depends on
# which other examples share its batch. That is fine for learning (it even acts as a mild
# regulariser), but a trained model must give one answer per image. So `BatchNorm2d` also keeps
# **running averages** of the batch statistics, updated by every training-mode forward pass:
#
# $$\text{running} \leftarrow (1 - \text{momentum})\,\text{running} + \text{momentum}\cdot\text{batch statistic},
#   \qquad \text{momentum} = 0.1 \text{ (PyTorch's convention)},$$
#
# and in evaluation mode (`model.eval()`) it normalises with those instead. One detail: the running
# **variance** uses the *unbiased* batch variance (divide by $m - 1$), because it estimates the
# variance of the data distribution, not of the batch. We feed a `BatchNorm2d` batches from a fixed
# distribution and watch the running statistics converge:

# %%
bn = nn.BatchNorm2d(3)
true_mean, true_std = np.array([2.0, -1.0, 0.5]), np.array([3.0, 0.5, 1.0])
rng = np.random.default_rng(3)


def sample_batch(n=16):
    noise = rng.standard_normal((n, 3, 4, 4))
    return Tensor((true_mean.reshape(1, 3, 1, 1) + true_std.reshape(1, 3, 1, 1) * noise).astype(np.float32))


# One step, checked by hand: running_var moves towards the UNBIASED batch variance.
first = sample_batch()
bn(first)
unbiased = first.numpy().var(axis=(0, 2, 3), ddof=1)
print("running_var after one step:", bn.running_var, " 0.9 * 1 + 0.1 * unbiased:", 0.9 + 0.1 * unbiased)

steps = 40 if QUICK else 100
means, variances = [bn.running_mean.copy()], [bn.running_var.copy()]
for _ in range(steps - 1):
    bn(sample_batch())
    means.append(bn.running_mean.copy())
    variances.append(bn.running_var.copy())
means, variances = np.array(means), np.array(variances)

t = np.arange(1, steps + 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for c in range(3):
    axes[0].plot(t, means[:, c], color=f"C{c}", label=f"channel {c}")
    axes[0].plot(t, true_mean[c] * (1 - 0.9**t), ":", color=f"C{c}")
    axes[0].axhline(true_mean[c], color=f"C{c}", ls="--", lw=0.8)
    axes[1].plot(t, variances[:, c], color=f"C{c}", label=f"channel {c}")
    axes[1].axhline(true_std[c] ** 2, color=f"C{c}", ls="--", lw=0.8)
axes[0].set_title(r"running_mean (dotted: $\mu\,(1 - 0.9^t)$, dashed: true mean)")
axes[1].set_title("running_var (dashed: true variance)")
for ax in axes:
    ax.set_xlabel("training steps")
    ax.legend(fontsize="small")
plt.show()

# %% [markdown]
# The running mean approaches the true mean like $1 - 0.9^t$: after 20 steps it has covered 88% of
# the way, after 44 steps 99%. The running variance is noisier (each batch's variance is itself an
# estimate) but settles around the true variance.
#
# Now the point of having two modes. The same image is placed in two different batches: in training
# mode its output differs between the two, in evaluation mode it does not.

# %%
probe = sample_batch(1)
batch_a = Tensor(np.concatenate([probe.numpy(), sample_batch(7).numpy()]))
batch_b = Tensor(np.concatenate([probe.numpy(), sample_batch(7).numpy()]))

bn.train()  # (each training-mode call also nudges the running statistics)
diff_train = np.abs(bn(batch_a).numpy()[0] - bn(batch_b).numpy()[0]).max()
bn.eval()
diff_eval = np.abs(bn(batch_a).numpy()[0] - bn(batch_b).numpy()[0]).max()
print(f"same image, two batches: max output difference in train mode {diff_train:.3f}, in eval mode {diff_eval:.3f}")

# A classic mistake: evaluating a network whose running statistics were never trained.
fresh = nn.BatchNorm2d(3).eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fresh(probe)
print("\nwarning from a fresh BatchNorm2d in eval mode:\n ", caught[0].message)

# %% [markdown]
# ## 5. What batch norm buys: training that does not depend on the initial scale
#
# The initialisation of notebook 5 (He et al., 2015) picks the scale of the initial weights so
# that the signal keeps its size through a ReLU network. A scale a little off is multiplied once
# per layer: by $0.5^8 \approx 0.004$ after eight layers at half the right scale, by
# $2^8 = 256$ at twice. Batch norm divides every layer's output by its own standard deviation, so
# a multiple of the weights no longer changes what the next layer sees.
#
# Here is that difference in a training run. The network is a stack of eight fully connected
# layers of width 64 (with or without a `BatchNorm1d` before each ReLU), the data a synthetic
# 10-class problem (noisy clusters in 32 dimensions), and the initial weights are He's times a
# scale of 0.5, 1 or 2. Everything else is identical: the same data, the same batches, SGD with
# momentum at the same learning rate.

# %%
rng = np.random.default_rng(0)
n_points, n_inputs, n_classes = 2048, 32, 10
centres = rng.standard_normal((n_classes, n_inputs))
point_labels = rng.integers(0, n_classes, n_points)
points = (centres[point_labels] + 1.5 * rng.standard_normal((n_points, n_inputs))).astype(np.float32)


def make_mlp(scale, batch_norm, depth=8, width=64, seed=0):
    """depth x (Linear [-> BatchNorm1d] -> ReLU), then a Linear classifier; He-initialised weights times `scale`."""
    generator = np.random.default_rng(seed)  # the same initial weights with and without batch norm
    layers, fan_in = [], n_inputs
    for _ in range(depth):
        linear = nn.Linear(fan_in, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu", generator=generator)
        linear.weight.data *= scale
        nn.init.zeros_(linear.bias)
        layers += [linear] + ([nn.BatchNorm1d(width)] if batch_norm else []) + [nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def training_losses(model, steps, lr=0.05, batch_size=128):
    """The loss at every SGD step; stops early when it is no longer finite (the run diverged)."""
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9)
    batches = np.random.default_rng(1)  # the same batches for every run
    losses = []
    for _ in range(steps):
        index = batches.integers(0, n_points, batch_size)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run overflows: we record it below
            loss = F.cross_entropy(model(Tensor(points[index])), Tensor(point_labels[index]))
        losses.append(float(loss.item()))
        if not np.isfinite(losses[-1]):
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return np.array(losses)


steps = 40 if QUICK else 200
scales = (0.5, 1.0, 2.0)
curves = {(bn, scale): training_losses(make_mlp(scale, bn), steps) for bn in (False, True) for scale in scales}

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, bn in zip(axes, (False, True)):
    for colour, scale in zip(("C0", "C2", "C3"), scales):
        losses = curves[bn, scale]
        finite = losses[np.isfinite(losses)]
        label = f"He x {scale}"
        if len(finite) < len(losses):  # the loss left the axis (1e30 and more), then overflowed: mark where
            label += f": diverged at step {len(losses)}"
            ax.plot(len(losses), 20, "x", color=colour, ms=10, mew=2)
        ax.plot(np.arange(1, len(finite) + 1), finite, color=colour, label=label)
    ax.set_yscale("log")
    ax.set_ylim(0.02, 30)
    ax.set_title("with batch norm" if bn else "without batch norm")
    ax.set_xlabel("SGD step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
axes[0].set_ylabel("training loss (one batch)")
fig.suptitle("An 8-layer ReLU network, initial weights at three scales")
plt.show()
for (bn, scale), losses in curves.items():
    ending = f"loss {losses[-10:].mean():.3f} over the last 10 steps" if np.isfinite(losses[-1]) else (
        f"diverged at step {len(losses)}")
    print(f"{'with' if bn else 'without'} batch norm, He x {scale}: {ending}")

# %% [markdown]
# Without batch norm only the right scale trains well: at half of it the signal (and the
# gradient) shrinks layer after layer and learning is slow; at twice it grows so much that the
# first updates overshoot and the loss overflows within a few steps. With batch norm the three
# runs are nearly the same. They are not exactly the same, because a BN layer's output does not
# depend on the scale of the weights before it but its gradient does (it shrinks like
# $1/\text{scale}$; notebook 5 comes back to this): larger weights take smaller steps relative to
# their size. (In quick mode the runs are too short for the slow ones to fall behind clearly.)

# %% [markdown]
# ## Summary
#
# * Batch norm normalises each channel over the batch and spatial axes, then applies a learnt
#   $\gamma$ and $\beta$.
# * Its input gradient is the upstream gradient with its mean and its component along $\hat x$
#   removed, scaled by $\gamma s$; it sums to zero per channel.
# * Because $\sum_i y_i = m\beta$ for any input, an all-ones gradient check cannot see mistakes:
#   check with a random upstream gradient.
# * Training mode uses batch statistics and updates running averages (unbiased variance, momentum
#   0.1); evaluation mode uses the running averages, so each output depends only on its own input.
# * Batch norm makes each layer's output independent of the scale of the weights before it, so a
#   deep network trains from initial weights that would make it stall or diverge without it.
#
# ## Exercises
#
# **Exercise 1.** Use minires (not the NumPy formula) to compute the input gradient of
# `F.batch_norm` in training mode for a random $(8, 3, 4, 4)$ input and a random upstream gradient.
# Check that per channel $\sum_i \partial L/\partial x_i = 0$ and
# $\sum_i \hat x_i\, \partial L/\partial x_i \approx 0$. Why does the second identity hold, and why
# only approximately? Check your explanation by setting `eps=0`.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
# Adding a constant to a channel changes nothing after normalisation: the gradient sums to zero.
# Adding a * xhat to x (small a) rescales each channel about its mean, and normalisation undoes a
# rescaling, so the loss cannot change along xhat: the gradient is orthogonal to xhat. With eps > 0
# the normalisation does not undo a rescaling completely (x / sqrt(var + eps) still depends a
# little on the scale), hence the small remainder, which vanishes for eps = 0.
rng = np.random.default_rng(4)
x_data, upstream = rng.standard_normal((8, 3, 4, 4)) * 2 - 1, rng.standard_normal((8, 3, 4, 4))
for eps in (1e-5, 0.0):
    xe = Tensor(x_data, requires_grad=True)
    F.batch_norm(xe, None, None, training=True, eps=eps).backward(upstream)
    xhat_e = (x_data - x_data.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x_data.var(axis=(0, 2, 3), keepdims=True) + eps)
    print(f"eps = {eps}: sum of dx per channel {xe.grad.sum(axis=(0, 2, 3))}, "
          f"sum of dx * xhat {(xe.grad * xhat_e).sum(axis=(0, 2, 3))}")

# %% [markdown]
# **Exercise 2.** Derive the backward pass of batch norm in **evaluation** mode (the statistics are
# now constants), then verify it against `F.batch_norm(..., training=False)` and run `gradcheck` on
# the input, $\gamma$ and $\beta$.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
# y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta is affine per channel, so
# dx = gamma * g / sqrt(running_var + eps); dgamma and dbeta have the same formulas as in training.
rng = np.random.default_rng(5)
rmean, rvar = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
xe = Tensor(rng.standard_normal((4, 3, 2, 2)), requires_grad=True)
ge = Tensor(rng.standard_normal(3), requires_grad=True)
be = Tensor(rng.standard_normal(3), requires_grad=True)
up = rng.standard_normal(xe.shape)
F.batch_norm(xe, rmean, rvar, ge, be, training=False).backward(up)
by_hand = ge.data.reshape(1, 3, 1, 1) * up / np.sqrt(rvar.reshape(1, 3, 1, 1) + 1e-5)
print("max |dx by hand - minires|:", np.abs(by_hand - xe.grad).max())
print("gradcheck:", minires.gradcheck(lambda a, g_, b_: F.batch_norm(a, rmean, rvar, g_, b_, training=False),
                                      [xe, ge, be], seed=0))

# %% [markdown]
# **Exercise 3.** A `BatchNorm1d` starts with `running_mean = 0` and sees batches whose mean is
# exactly $\mu$ every time. Show that after $t$ steps `running_mean` $= \mu\,(1 - 0.9^t)$, find how
# many steps it takes to get within 1% of $\mu$, and check both with minires.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# r_t = 0.9 r_{t-1} + 0.1 mu with r_0 = 0 gives r_t = mu (1 - 0.9^t) (geometric series).
# Within 1%: 0.9^t <= 0.01, t >= log(0.01) / log(0.9) = 43.7, so 44 steps.
mu_e = 5.0
bn1 = nn.BatchNorm1d(1)
rng = np.random.default_rng(6)
for step in range(1, 45):
    noise = rng.standard_normal((32, 1))
    bn1(Tensor((mu_e + noise - noise.mean()).astype(np.float32)))  # batch mean exactly mu_e
    if step in (1, 10, 43, 44):
        print(f"t = {step:2d}: running_mean {bn1.running_mean[0]:.4f}, formula {mu_e * (1 - 0.9**step):.4f}")
print("steps needed:", int(np.ceil(np.log(0.01) / np.log(0.9))))
