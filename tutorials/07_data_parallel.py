# %% [markdown]
# # 7. Data-parallel training: one batch, several processes
#
# He et al. trained their CIFAR-10 ResNets "with a mini-batch size of 128 on two GPUs": each GPU
# computed the forward and backward pass of 64 images, and the two halves of the gradient were
# combined before every update. This is **data parallelism**: every process (a *rank*) holds a
# full copy of the model, works on its own slice (*shard*) of the batch, and the ranks talk only
# to combine gradients. This notebook shows why that gives the gradient of the whole batch, where
# batch normalisation breaks the equality and how `SyncBatchNorm` repairs it, and then runs
# `minires train` on two real processes.
#
# **By the end of this notebook you will understand**
#
# * why the average of the gradients of $W$ equal shards is exactly the gradient of the whole
#   batch, so that two processes at batch 64 each take the step of one process at batch 128;
# * where batch norm breaks that equality (each rank normalises with its own statistics), and how
#   large the difference is;
# * what an all-reduce computes, how the ring algorithm does it while each rank sends less than
#   twice its data, and how minires's `DistributedDataParallel` overlaps it with the backward pass;
# * the forward and backward passes of `SyncBatchNorm`: which sums must be shared among the ranks,
#   derived and checked against one-process batch norm;
# * how to start a data-parallel run, `minires train --nproc 2` or `mpiexec -n 2 minires train`,
#   and how it compares with one process.
#
# **Your turn.** In section 4 you write the backward pass of synchronised batch norm, for ranks
# simulated in this one process. The stub is followed by a check cell that fails, saying what is
# wrong, until your function is right; the rest of the notebook uses minires's own implementation,
# so it runs either way. The solution is in `tutorials/solutions/07_data_parallel.py`: try first.
#
# Sections 4 and 5 start real processes with MPI, which needs `pip install mpi4py mpich` (or
# `pip install -e ".[mpi]"`). Without it those cells say so and skip the runs; everything else
# works in a plain Python process.

# %%
import csv
import inspect
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minires
from minires import Tensor, models, nn
from minires import distributed as dist
from minires.data import CIFARError, load_cifar10, resolve_data_dir
from minires.distributed.launch import find_mpiexec
from minires.distributed.sync_batch_norm import SyncBatchNormTrain
from minires.nn import functional as F
from minires.optim import SGD
from minires.train import TrainConfig, build_model, load_checkpoint

# Quick mode (environment variable MINIRES_QUICK=1) shrinks data sizes and step counts so that
# the whole notebook runs in seconds on a laptop CPU; CI runs every notebook that way.
QUICK = os.environ.get("MINIRES_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
print(f"minires {minires.__version__}; quick mode: {QUICK}")

# Several processes need MPI: mpi4py and an mpiexec that belongs to the same MPI library.
CAN_LAUNCH = dist.is_available() and find_mpiexec() is not None
print("MPI:", dist.mpi_status().split(", mpiexec ")[0] if CAN_LAUNCH else
      "not available, so the cells that start processes will skip their runs (pip install mpi4py mpich)")


# %% [markdown]
# ## 1. Averaging the shards' gradients gives the big batch's gradient
#
# Take a global batch of $B$ examples and the usual loss, the mean of the per-example losses
# $\ell_i(\theta)$. Split the batch into $W$ shards $S_1, \dots, S_W$ of $n = B / W$ examples each;
# rank $r$ computes the mean loss of its own shard:
#
# $$L(\theta) = \frac1B \sum_{i=1}^{B} \ell_i(\theta), \qquad
#   L_r(\theta) = \frac1n \sum_{i \in S_r} \ell_i(\theta).$$
#
# Grouping the sum by shard,
#
# $$L = \frac1B \sum_{r=1}^{W} \sum_{i \in S_r} \ell_i = \frac{n}{B} \sum_{r=1}^{W} L_r
#     = \frac1W \sum_{r=1}^{W} L_r
#   \qquad\Longrightarrow\qquad
#   \nabla_\theta L = \frac1W \sum_{r=1}^{W} \nabla_\theta L_r ,$$
#
# because the gradient is linear. So one step of data-parallel training is: every rank computes
# the gradient of its shard's loss, the ranks **average** their gradients (an all-reduce,
# section 3), and every rank applies the same optimiser step to the same parameters. The ranks
# start from identical parameters (rank 0's, broadcast once) and stay identical without ever
# sending parameters again, and the update is exactly the one that a single process would make
# with the whole batch: same gradient, same learning rate, same momentum.
#
# The argument uses one assumption: $\ell_i$ depends on $\theta$ and on example $i$ only, not on
# the other examples of its batch. For convolutions, ReLUs, pooling and linear layers that is
# true. Here it is checked with a small convolutional network in float64, a global batch of 128
# and two shards of 64, as in the paper:

# %%
def small_net(batch_norm, seed=0):
    """Two 3x3 convolutions (optionally each followed by batch norm), ReLUs, global pooling, a linear
    classifier; float64, with the same initial weights for a given seed."""
    nn.init.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1, bias=not batch_norm)]
    layers += [nn.BatchNorm2d(8)] if batch_norm else []
    layers += [nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=not batch_norm)]
    layers += [nn.BatchNorm2d(16)] if batch_norm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers).double()


def flat_gradient(net, images, labels):
    """The gradient of the mean cross-entropy of (images, labels), all parameters as one flat vector."""
    net.zero_grad()
    F.cross_entropy(net(Tensor(images)), Tensor(labels)).backward()
    return np.concatenate([p.grad.ravel() for p in net.parameters()])


rng = np.random.default_rng(0)
B, W = 128, 2
images = rng.standard_normal((B, 3, 8, 8))
labels = rng.integers(0, 10, B)
shards = np.split(np.arange(B), W)  # rank r takes examples shards[r]

net = small_net(batch_norm=False)
full = flat_gradient(net, images, labels)
per_rank = [flat_gradient(net, images[s], labels[s]) for s in shards]
averaged = sum(per_rank) / W
print(f"{full.size} parameters; gradient of the batch of {B} vs the average of {W} shards of {B // W}:")
print(f"  relative difference {np.linalg.norm(averaged - full) / np.linalg.norm(full):.1e}")
print(f"  while one shard's gradient alone differs by "
      f"{np.linalg.norm(per_rank[0] - full) / np.linalg.norm(full):.2f}")


# %% [markdown]
# The average agrees with the big batch's gradient to float64 rounding (the sums are merely taken
# in another order), although each shard's gradient on its own is far from it. In float32, as in
# real training, the agreement is to about $10^{-7}$: two processes and one process follow the same
# trajectory up to rounding.
#
# ## 2. Where batch norm breaks the equality
#
# Batch norm in training mode normalises every channel with the mean and variance **of the batch
# it sees** (notebook 3). Under data parallelism that batch is the rank's shard: rank $r$
# normalises its 64 images with the statistics of those 64, not of all 128. Every $\ell_i$ now
# depends on the other examples of its shard, the per-rank losses $L_r$ are not the pieces of
# $L$ any more, and the average of their gradients is the gradient of a different function. The
# same experiment with a batch-norm layer after each convolution:

# %%
bn_net = small_net(batch_norm=True)
full_bn = flat_gradient(bn_net, images, labels)
averaged_bn = sum(flat_gradient(bn_net, images[s], labels[s]) for s in shards) / W
print(f"with batch norm: relative difference {np.linalg.norm(averaged_bn - full_bn) / np.linalg.norm(full_bn):.2f} "
      f"between the batch of {B} and the average of {W} shards of {B // W}")

# The smaller each rank's share, the further apart: W = B / n ranks of n examples each.
shard_sizes = [2, 4, 8, 16, 32, 64]
differences = {}
for batch_norm, model in ((False, net), (True, bn_net)):
    reference = full_bn if batch_norm else full
    differences[batch_norm] = []
    for n in shard_sizes:
        mean_of_shards = sum(flat_gradient(model, images[i:i + n], labels[i:i + n]) for i in range(0, B, n)) / (B // n)
        differences[batch_norm].append(np.linalg.norm(mean_of_shards - reference) / np.linalg.norm(reference))

fig, ax = plt.subplots(figsize=(7, 3.8))
ax.loglog(shard_sizes, differences[True], "o-", label="with batch norm (statistics per rank)")
ax.loglog(shard_sizes, np.maximum(differences[False], 1e-17), "s--", label="without batch norm")
for n, d in zip(shard_sizes, differences[True]):
    ax.annotate(f"{d:.2f}", (n, d), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
ax.set_xticks(shard_sizes, [f"{n}\n({B // n} ranks)" for n in shard_sizes])
ax.set_xticks([], minor=True)  # no minor tick labels between the powers of two
ax.set_xlabel(f"examples per rank (global batch {B})")
ax.set_ylabel("relative difference from\nthe batch-128 gradient")
ax.set_title("Average of the per-rank gradients vs the gradient of the whole batch")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize="small")
plt.show()


# %% [markdown]
# Without batch norm the difference is rounding error at every split. With it, the averaged
# gradient is off by about 10% at the paper's split (2 ranks of 64), and by almost half when each
# rank holds 2 examples. (These are random images and random weights, so the exact numbers mean
# little; the trend does.) Two remarks:
#
# * This is not a bug of data parallelism. The averaged gradient is the exact gradient of the
#   average of the per-rank losses, each computed with per-rank statistics: the objective of a
#   network whose batch norm sees batches of 64. Hoffer et al. (2017) even do this on purpose in
#   one process ("ghost batch norm"): with very large batches, normalising small groups of
#   examples generalised better. What changes is that "batch 128 on two GPUs" is, for batch norm,
#   two batches of 64.
# * The paper does not say how its two GPUs computed the statistics. The straightforward
#   implementation, and PyTorch's `DistributedDataParallel` by default, normalise per rank; Goyal
#   et al. (2017) make the per-worker batch size of batch norm an explicit hyperparameter (32 in
#   their large-batch ImageNet runs). The running averages used at test time also come from one
#   rank's shards: minires's `DistributedDataParallel`, like PyTorch's, copies rank 0's buffers to
#   every rank before each training forward pass.
#
# If the statistics must be those of the whole batch, the ranks have to share them in the forward
# pass and the matching sums in the backward pass. That is `SyncBatchNorm` (section 4). First, the
# operation that all of this is built on.
#
# ## 3. The all-reduce
#
# Rank $r$ holds an array $a_r$, all of the same shape; after an **all-reduce** every rank holds
# $\sum_r a_r$ (or the mean, or the maximum). In minires it is
# `minires.distributed.all_reduce(a, op=ReduceOp.SUM)`, in place, with the names and semantics of
# `torch.distributed`; underneath, MPI's `Allreduce`. Its most instructive implementation is the
# **ring**. Place the $W$ ranks on a ring and cut every array into $W$ chunks. Then
#
# * **reduce-scatter**, $W - 1$ steps: in step $s$ each rank sends chunk $(r - s) \bmod W$ to its
#   right neighbour, which adds it to its own copy of that chunk. Every chunk travels once around
#   the ring picking up one contribution per rank, so after $W - 1$ steps rank $r$ holds the
#   complete sum of chunk $(r + 1) \bmod W$;
# * **all-gather**, $W - 1$ more steps: the finished chunks travel around the ring the same way,
#   and each rank overwrites its copy with them.
#
# In every step every rank sends one chunk and receives one, all at the same time. Here is a
# simulation with NumPy arrays in place of processes; the counts record how many ranks' data each
# rank's copy of each chunk contains.

# %%
def ring_all_reduce(arrays):
    """Sum arrays[r] (one per simulated rank) with the ring algorithm.

    Returns (the result on every rank, numbers each rank sent, the contribution counts after each step).
    """
    W = len(arrays)
    chunks = [np.array_split(np.array(a, dtype=np.float64), W) for a in arrays]  # chunks[rank][chunk]
    counts = np.ones((W, W), dtype=int)  # counts[rank, chunk]: how many ranks' data that copy holds
    history, sent = [counts.copy()], np.zeros(W, dtype=int)

    def step(chunk_of, combine):
        # Every rank sends at once: collect the messages first, then deliver them to the right neighbour.
        messages = [(r, chunk_of(r), chunks[r][chunk_of(r)].copy(), counts[r, chunk_of(r)]) for r in range(W)]
        for r, c, data, count in messages:
            right = (r + 1) % W
            if combine:
                chunks[right][c] += data
                counts[right, c] += count
            else:
                chunks[right][c] = data
                counts[right, c] = count
            sent[r] += data.size
        history.append(counts.copy())

    for s in range(W - 1):  # reduce-scatter
        step(lambda r: (r - s) % W, combine=True)
    for s in range(W - 1):  # all-gather: rank r starts with the chunk it completed, (r + 1) % W
        step(lambda r: (r + 1 - s) % W, combine=False)
    return [np.concatenate(c) for c in chunks], sent, history


rng = np.random.default_rng(1)
for W_ring in (2, 3, 4, 8):
    arrays = [rng.standard_normal(1000) for _ in range(W_ring)]
    results, sent, history = ring_all_reduce(arrays)
    total = np.sum(arrays, axis=0)
    identical = all(np.array_equal(results[0], other) for other in results[1:])
    print(f"W = {W_ring}: max |ring - sum| = {max(np.abs(res - total).max() for res in results):.1e}, "
          f"bitwise identical on every rank: {identical}; each rank sent {sent.min()}-{sent.max()} numbers "
          f"of 1000 (2(W-1)/W x 1000 = {2 * (W_ring - 1) / W_ring * 1000:.0f})")

_, _, history = ring_all_reduce([np.zeros(8) for _ in range(4)])
fig, axes = plt.subplots(1, len(history), figsize=(15, 2.6))
for k, (ax, counts) in enumerate(zip(axes, history)):
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=4)
    for (r, c), value in np.ndenumerate(counts):
        ax.text(c, r, value, ha="center", va="center", color="white" if value > 2 else "black")
    ax.set_xticks(range(4))
    ax.set_yticks(range(4))
    ax.set_xlabel("chunk")
    phase = "start" if k == 0 else (f"reduce-scatter {k}" if k < 4 else f"all-gather {k - 3}")
    ax.set_title(phase, fontsize=9)
axes[0].set_ylabel("rank")
fig.suptitle("Ring all-reduce on 4 ranks: how many ranks' data each copy of each chunk holds", y=1.04)
plt.show()


# %% [markdown]
# After three reduce-scatter steps every rank owns one complete chunk (a 4 on the diagonal
# shifted by one); after three all-gather steps everyone has everything. Every rank ends with the
# same bits, because each chunk was summed once, on one rank, and then copied: that matters,
# since bitwise-equal gradients keep the parameters bitwise equal.
#
# **The cost.** Each rank sends $2(W-1)$ chunks of $n/W$ numbers, $2\frac{W-1}{W}\,n < 2n$,
# whatever the number of ranks: adding GPUs does not add traffic per link. The naive scheme,
# everybody sends to rank 0 which adds up and sends the sum back, makes rank 0 receive and send
# $(W-1)\,n$ numbers each way, which grows with $W$. The ring's price is $2(W-1)$ sequential steps,
# each paying the network's latency, so for small arrays other schemes win, and MPI libraries
# choose an algorithm by message size and number of ranks. For ResNet-20 on two GPUs the arithmetic
# is small: 0.27 M parameters, about 1 MB of float32 gradients, each rank sending about 1 MB per step.
#
# **Buckets and overlap.** minires's `DistributedDataParallel` (`minires/distributed/ddp.py`, with
# `bucket.py`) does not wait for the whole backward pass. The gradients are packed into flat
# *buckets* of about 0.25 MB, in the order in which backward produces them (last layer first). A
# hook on each parameter copies its gradient into its bucket as soon as the engine has it; when a
# bucket is complete its all-reduce starts, non-blocking (MPI's `Iallreduce`), while backward goes
# on computing the earlier layers' gradients. The hook of the last parameter waits for every bucket
# and writes the averaged gradients into `.grad`, so the training loop is unchanged:
# `forward, zero_grad, backward, step`. One all-reduce per parameter tensor would pay the latency
# 59 times per step for ResNet-20's 59 parameter tensors; one for everything could only start
# after backward; buckets are the compromise (PyTorch's default is 25 MB, which for ResNet-20
# would be a single bucket). In this notebook's process, a world of one rank that needs no MPI, a
# wrapped ResNet-20 shows its buckets:

# %%
resnet = models.resnet20()
wrapped = dist.DistributedDataParallel(resnet)  # alone: rank 0 of 1, every collective is a no-op
names = {id(p): name for name, p in resnet.named_parameters()}
print(wrapped.extra_repr())
for k, bucket in enumerate(wrapped.buckets):
    print(f"bucket {k}: {len(bucket.params):2d} tensors, {bucket.numel:7,d} numbers ({bucket.nbytes / 2**20:.2f} MB), "
          f"from {names[id(bucket.params[0])]} to {names[id(bucket.params[-1])]}")
del resnet, wrapped


# %% [markdown]
# ## 4. SyncBatchNorm: batch norm over the global batch
#
# **Forward.** Channel $c$ has $m_r = n_r H W$ values on rank $r$ and $M = \sum_r m_r$ in all (the
# ranks may hold different numbers of images, so the counts are shared too). Batch norm over the
# global batch needs the global mean and variance,
#
# $$\mu = \frac1M \sum_{\text{all ranks}} x_i, \qquad \sigma^2 = \frac1M \sum_{\text{all ranks}} (x_i - \mu)^2,$$
#
# and each rank can compute its part of each sum locally. One all-reduce of $(m_r, \sum x, \sum x^2)$
# per channel would do, with $\sigma^2 = \frac{1}{M}\sum x^2 - \mu^2$; but that formula subtracts two
# numbers of size $\mu^2$, and a channel whose mean is large compared with its spread loses its
# digits. minires (`minires/distributed/sync_batch_norm.py`) spends a second, equally tiny,
# all-reduce instead: first $(m_r, \sum x)$ for $\mu$, then $\sum (x - \mu)^2$ for $\sigma^2$. With
# every rank holding the same $\mu$ and $s = 1/\sqrt{\sigma^2 + \varepsilon}$, the rest is local:
# $\hat x_i = (x_i - \mu)s$, $y_i = \gamma\hat x_i + \beta$. What the one-pass shortcut costs, for
# a channel with mean 1000 and standard deviation 0.1 in float32:

# %%
rng = np.random.default_rng(2)
x_shards = [(1000 + 0.1 * rng.standard_normal(n)).astype(np.float32) for n in (300, 500)]  # two ranks
count = sum(len(xs) for xs in x_shards)                 # all-reduced counts
total = sum(xs.sum(dtype=np.float32) for xs in x_shards)  # all-reduced sums (float32, as on a GPU)
squares = sum((xs * xs).sum(dtype=np.float32) for xs in x_shards)
mean = total / count
one_pass = squares / count - mean * mean
two_pass = sum(((xs - mean) ** 2).sum(dtype=np.float32) for xs in x_shards) / count
exact = np.concatenate(x_shards).astype(np.float64).var()
print(f"variance: exact {exact:.6f}, two passes {two_pass:.6f}, one pass (sum of squares) {one_pass:.6f}")


# %% [markdown]
# (minires also accumulates the sums in float64, which helps both, but does not save the one-pass
# formula when the mean is large enough.)
#
# **Backward.** In notebook 3 the gradient of batch norm was derived for one batch of $m$ values
# per channel. Nothing in that derivation cares where the values live: every $\hat x_j$ on every
# rank depends on every $x_i$ on every rank, through the global $\mu$ and $\sigma^2$, exactly as
# before with $m$ replaced by $M$. With $g_i = \partial L / \partial y_i$,
#
# $$\boxed{\;\frac{\partial L}{\partial x_i}
#   = \frac{\gamma s}{M}\Bigl(M g_i - \sum_{\text{all ranks}} g_j
#     - \hat x_i \sum_{\text{all ranks}} g_j \hat x_j\Bigr)\;}$$
#
# So in the backward pass each rank computes, per channel, the two sums $\sum g_j$ and
# $\sum g_j \hat x_j$ over **its own** values, one all-reduce adds them up over the ranks, and then
# each rank applies the elementwise formula to its own $g_i$ and $\hat x_i$. The communication is
# $2C$ numbers per layer, nothing of the size of the activations. The gradients of $\gamma$ and
# $\beta$ are the same two sums; minires's `SyncBatchNorm` leaves them as the rank's local sums,
# and `DistributedDataParallel` combines them over the ranks like any other parameter's gradient.
# (Under data parallelism rank $r$'s upstream gradient comes from its own loss $L_r$; since
# $L = \frac1W \sum_r L_r$, it is $W\,\partial L/\partial y_i$ on every rank, the formula gives
# $W\,\partial L/\partial x_i$, and the average over the ranks that `DistributedDataParallel`
# takes divides the $W$ out again.)
#
# **Your turn: the backward pass of SyncBatchNorm.** Complete `sync_bn_backward` below, written as
# the $W$ ranks would run it, simulated in this process. Rank $r$'s upstream gradient and
# normalised input are `g_shards[r]` and `xhat_shards[r]`, each of shape $(n_r, C, H, W)$, where
# $n_r$ may differ between ranks; `gamma` has shape $(C,)$ and `s` $= 1/\sqrt{\sigma^2+\varepsilon}$
# of the global batch has shape $(1, C, 1, 1)$ (every rank knows both). A rank may compute anything
# from its own shard, but the only thing it learns about the other ranks is what `all_reduce`
# returns: `all_reduce(arrays)` takes a list with one array per rank, all of the same shape, and
# returns a list in which every rank's entry is the sum over the ranks. (Pack what you need into
# one array per rank and call it once; the count $M$ has to come from it too.) Return the list of
# every rank's $\partial L / \partial x$, each of the shape of its shard. The check cell compares
# your answer with minires's one-process batch norm of the concatenated batch, for a random
# upstream gradient and ranks holding different numbers of images.

# %% tags=["stub"]
def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    """dL/dx of every rank for batch norm with global statistics: a list of one (n_r, C, H, W) array per rank."""
    axes = (0, 2, 3)  # noqa: F841 (every axis but the channel; unused until you write your code)
    # Your code: on every rank, the local count m_r = g.size // C and the per-channel sums of g and of g * xhat;
    # all_reduce them (one array per rank); then every rank's dx from the boxed formula, with the global sums and M.
    raise NotImplementedError("implement sync_bn_backward above: return the list of every rank's dx")


# %% tags=["check", "raises-exception"]
def check_sync_bn_backward():
    """sync_bn_backward against minires's batch norm of the whole (concatenated) batch, float64, random g."""
    rng = np.random.default_rng(7)
    calls = []

    def all_reduce(arrays):
        """Simulated all-reduce: arrays[r] is rank r's array; every rank gets the sum (its own copy)."""
        arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
        assert len(arrays) == len(sizes), f"all_reduce needs one array per rank ({len(sizes)}), got {len(arrays)}"
        assert len({a.shape for a in arrays}) == 1, (
            f"all_reduce needs arrays of the same shape on every rank, got {[a.shape for a in arrays]}")
        calls.append(arrays[0].shape)
        total = np.sum(arrays, axis=0)
        return [total.copy() for _ in arrays]

    for sizes, (channels, height, width) in [((2, 3, 5), (3, 2, 2)), ((4, 4), (2, 3, 3)), ((1, 6), (4, 1, 2))]:
        x_shards = [rng.standard_normal((n, channels, height, width)) * 2 + 1 for n in sizes]
        g_shards = [rng.standard_normal(x.shape) for x in x_shards]  # random: all-ones would hide bugs
        gamma, beta = rng.standard_normal(channels), rng.standard_normal(channels)
        x, g = np.concatenate(x_shards), np.concatenate(g_shards)
        mu, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)  # global
        s = 1 / np.sqrt(var + 1e-5)
        calls.clear()
        try:
            mine = sync_bn_backward(g_shards, [(xs - mu) * s for xs in x_shards], gamma, s, all_reduce)
        except NotImplementedError as err:
            raise AssertionError(f"{err}, then run this cell again") from None
        assert isinstance(mine, (list, tuple)) and len(mine) == len(sizes), (
            f"sync_bn_backward must return a list with one dx per rank ({len(sizes)} ranks), got "
            f"{type(mine).__name__}" + (f" of length {len(mine)}" if isinstance(mine, (list, tuple)) else ""))
        xt = Tensor(x, requires_grad=True)
        F.batch_norm(xt, None, None, Tensor(gamma), Tensor(beta), training=True, eps=1e-5).backward(g)
        expected = np.split(xt.grad, np.cumsum(sizes)[:-1])
        for rank, (got, want) in enumerate(zip(mine, expected)):
            got = np.asarray(got)
            assert got.shape == want.shape, (
                f"dx of rank {rank} from sync_bn_backward has shape {got.shape}; expected {want.shape}, the shape "
                f"of that rank's shard (ranks holding {sizes} images)")
            error = np.abs(got - want).max() / np.abs(want).max()
            assert error < 1e-10, (
                f"dx of rank {rank} from sync_bn_backward is wrong (ranks holding {list(sizes)} images of shape "
                f"{(channels, height, width)}): relative error {error:.1e} against batch norm of the whole batch. "
                "Are the count M and both sums those of ALL ranks (from all_reduce), not of the rank's own shard?")
        assert calls, ("sync_bn_backward never called all_reduce: a rank sees only its own shard, so the global "
                       "sums and the count must come from all_reduce")
    print("check passed: every rank's dx agrees with one-process batch norm of the whole batch")


check_sync_bn_backward()


# %% [markdown]
# minires's version of the same backward pass, `SyncBatchNormTrain.backward`, is below. It
# recomputes $\hat x$ from the saved input instead of storing it, takes the global count $M$ from
# the forward pass (where it was all-reduced with the sums), sends the two sums in one float64
# all-reduce, and builds $\partial L/\partial x$ in place:

# %%
print(inspect.getsource(SyncBatchNormTrain.backward))


# %% [markdown]
# **On two real processes.** The program below is what each of two MPI processes runs. Both draw
# the same global batch from the same seed; rank 0 keeps 3 images and rank 1 keeps 5. Each passes
# its shard through a `SyncBatchNorm` and back with its part of a random upstream gradient. To
# compare, the ranks then assemble the full `dx` with one more all-reduce (each fills its own rows
# of a zero array; the sum is the whole), and rank 0 computes one-process batch norm of the whole
# batch. `mpiexec -n 2 python program.py` starts the two processes.

# %%
SPMD_PROGRAM = '''
import numpy as np
from minires import Tensor, distributed as dist
from minires.nn import functional as F

rank, world = dist.get_rank(), dist.get_world_size()
rng = np.random.default_rng(0)  # the same seed on every rank: the same global batch
x_all = rng.standard_normal((8, 3, 4, 4)) * 2 + 1
g_all = rng.standard_normal(x_all.shape)
mine = [slice(0, 3), slice(3, 8)][rank]  # rank 0: 3 images, rank 1: 5

bn = dist.SyncBatchNorm(3).double()
x = Tensor(x_all[mine], requires_grad=True)
y = bn(x)
y.backward(g_all[mine])

y_all, dx_all = np.zeros_like(x_all), np.zeros_like(x_all)
y_all[mine], dx_all[mine] = y.numpy(), x.grad
dist.all_reduce(y_all)   # each rank filled its rows: the sums are the whole batch's y and dx
dist.all_reduce(dx_all)
if rank == 0:
    reference = Tensor(x_all, requires_grad=True)
    F.batch_norm(reference, None, None, training=True).backward(g_all)
    for name, got, want in (("y", y_all, F.batch_norm(Tensor(x_all), None, None, training=True).numpy()),
                            ("dx", dx_all, reference.grad)):
        print(f"{name:>2}: max relative difference from one-process batch norm "
              f"{np.abs(got - want).max() / np.abs(want).max():.1e}")
print(f"rank {rank} of {world}: {x.shape[0]} images, running_mean {np.round(bn.running_mean, 4)}")
'''

if not CAN_LAUNCH:
    print("MPI is not available: skipping the 2-process run (pip install mpi4py mpich)")
else:
    program_dir = Path(tempfile.mkdtemp(prefix="minires-spmd-"))
    (program_dir / "program.py").write_text(SPMD_PROGRAM)
    result = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "program.py"], cwd=program_dir,
                            capture_output=True, text=True, timeout=300)
    print(result.stdout + result.stderr)
    shutil.rmtree(program_dir)
    assert result.returncode == 0, f"the 2-process program failed with exit status {result.returncode}"


# %% [markdown]
# Forward and backward agree with one process to float64 rounding, with unequal shards, and both
# ranks hold the same running statistics (those of all 8 images), because they were updated from
# the global mean and variance. The lines of the two ranks may come out in either order: they are
# separate processes.
#
# ## 5. Running it for real: `minires train --nproc 2`
#
# `minires train` trains data-parallel when it is started as several MPI processes. Two ways, the
# same run either way:
#
# ```
# minires train --model resnet20 --out runs/dp --nproc 2       # minires starts itself under mpiexec
# mpiexec -n 2 minires train --model resnet20 --out runs/dp    # the MPI launcher starts 2 ranks
# ```
#
# Every rank runs the same `Trainer`; what differs from one process (`minires/train/distributed.py`,
# `minires/cli/data_parallel.py`) is that
#
# * each rank takes its share of every global batch, `--batch-size 128` meaning 64 on each of 2
#   ranks (`DistributedSampler`: one shared random order per epoch, rank $r$ taking every $W$-th
#   example from position $r$ on), and evaluates on half of the test images;
# * the model is wrapped in `DistributedDataParallel` (section 3), optionally after
#   `SyncBatchNorm.convert_sync_batchnorm` (`--sync-bn`, section 4);
# * losses, accuracies and counts are all-reduced before they are printed or saved, and only rank
#   0 prints and writes files; each rank gets half of the machine's cores for its threads.
#
# Below, the notebook starts such a run as a subprocess (`sys.executable -m minires` is the
# `minires` command of this Python) on CIFAR-10 from `$MINIRES_DATA` or, without it, on a small
# synthetic stand-in written for the occasion. Paths of this machine are replaced by placeholders
# in what is printed.

# %%
def synthetic_cifar_dir(root, per_file=600, seed=0):
    """Write a small learnable stand-in for CIFAR-10 (one colour pattern per class plus noise) under root,
    in the official layout that `minires train` reads: cifar-10-batches-py/ with 5 training files, a test
    file and batches.meta, each a pickled dict."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def write(name, contents):
        with open(folder / name, "wb") as f:
            pickle.dump(contents, f, protocol=2)

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=per_file)
        noisy = 0.6 * patterns[labels] + 51 + rng.normal(0, 40, size=(per_file, 3, 32, 32))
        write(name, {b"batch_label": name.encode(), b"labels": labels.tolist(),
                     b"data": np.clip(noisy, 0, 255).astype(np.uint8).reshape(per_file, -1),
                     b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)]})
    write("batches.meta", {b"num_cases_per_batch": per_file, b"num_vis": 3072,
                           b"label_names": [f"pattern {i}".encode() for i in range(10)]})
    return Path(root)


work_dir = Path(tempfile.mkdtemp(prefix="minires-dp-"))  # run directories (and synthetic data) go here
try:
    cifar = load_cifar10(resolve_data_dir(), download=False)  # $MINIRES_DATA, else ~/.cache/minires
    data_dir, n_train, n_test = resolve_data_dir(), len(cifar.train_labels), len(cifar.test_labels)
    data_label = "$MINIRES_DATA" if os.environ.get("MINIRES_DATA") else "<data dir>"
    print(f"CIFAR-10 found: {n_train:,} training and {n_test:,} test images")
    del cifar
except CIFARError:
    data_dir = synthetic_cifar_dir(work_dir / "data")
    n_train, n_test, data_label = 5 * 600, 600, "<synthetic data>"
    print("NOTE: CIFAR-10 is not available here, so the runs below train on SYNTHETIC images (3,000 training and "
          "600 test images, one colour pattern per class). Set MINIRES_DATA to a directory containing "
          "cifar-10-batches-py to use the real data.")


def shown(text):
    """Text with this machine's paths replaced by placeholders."""
    for path, label in ((work_dir, "<tmp>"), (data_dir, data_label), (Path(sys.executable).parent, "<venv>/bin")):
        text = text.replace(str(Path(path).resolve()), label).replace(str(path), label)
    return text


def minires_train(args, nproc=None, mpiexec=None):
    """Run `minires train ARGS` (--nproc NPROC, or under `mpiexec -n MPIEXEC`); returns its output and exit status."""
    command = [sys.executable, "-m", "minires", "train", *args, "--data-dir", str(data_dir), "--no-download"]
    command += ["--nproc", str(nproc)] if nproc else []
    if mpiexec:
        command = [find_mpiexec(), "-n", str(mpiexec), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    words = ["mpiexec", "-n", str(mpiexec)] * bool(mpiexec) + ["minires"] + command[command.index("train"):]
    return shown(" ".join(words)), shown(result.stdout + result.stderr), result.returncode


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# %%
if QUICK:
    run_args = ["--model", "resnet20", "--recipe", "fast", "--epochs", "1", "--batch-size", "64",
                "--limit-train", "256", "--limit-test", "128"]
else:  # still minutes, not hours: 3 epochs of 2,560 images at the paper's batch 128 (64 per process)
    run_args = ["--model", "resnet20", "--recipe", "paper", "--epochs", "3", "--batch-size", "128",
                "--limit-train", str(min(2560, n_train)), "--limit-test", str(min(1000, n_test))]

if not CAN_LAUNCH:
    print("MPI is not available: skipping the 2-process training run. Install it with\n"
          "    pip install mpi4py mpich\nthen run this cell again.")
else:
    command, output, status = minires_train(run_args + ["--out", str(work_dir / "run")], nproc=2)
    print(f"$ {command}\n{output}")
    assert status == 0, f"minires train failed with exit status {status}"
    rows = read_metrics(work_dir / "run")
    print("metrics.csv:")
    columns = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_sec"]
    print("".join(f"{c:>15}" for c in columns))
    for row in rows:
        print("".join(f"{float(row[c]):>15.4g}" for c in columns))


# %% [markdown]
# One line per epoch, written by rank 0 alone, with the training loss and accuracy summed over both
# ranks' images. (On a 2-core machine the two processes share the cores, so the speed is that of
# one process at best: data parallelism pays off when each rank has its own GPU or its own cores.)
#
# **One process, two processes, and SyncBatchNorm.** How close is a 2-process run to a 1-process
# run at the same global batch? Four short runs with identical settings: one process; two processes
# started with `--nproc 2`; the same started by `mpiexec -n 2` directly; and two processes with
# `--sync-bn`. Augmentation is off (`--no-augment`: its random crops are drawn per rank, so they
# differ), and 64 training images with batch 64 make one step per epoch, so the training loss of
# epoch $k$ is the loss of step $k$. Each run's final parameters (running statistics included) are
# compared with the one-process run's, relative to how far that run moved them from their
# (seeded, shared) initial values.

# %%
compare_args = ["--model", "resnet20", "--recipe", "fast", "--epochs", "3", "--batch-size", "64",
                "--limit-train", "64", "--limit-test", "128", "--no-augment", "--seed", "0", "--quiet"]
variants = {"1 process": ({}, []), "2 processes (--nproc 2)": ({"nproc": 2}, []),
            "2 processes (mpiexec -n 2)": ({"mpiexec": 2}, []), "2 processes, --sync-bn": ({"nproc": 2}, ["--sync-bn"])}


def parameters_of(state):
    return np.concatenate([np.asarray(value, dtype=np.float64).ravel() for _, value in sorted(state.items())
                           if np.issubdtype(np.asarray(value).dtype, np.floating)])


if not CAN_LAUNCH:
    print("MPI is not available: skipping the comparison (pip install mpi4py mpich)")
else:
    losses, finals = {}, {}
    for k, (label, (launch, extra)) in enumerate(variants.items()):
        run_dir = work_dir / f"compare{k}"
        command, output, status = minires_train(compare_args + ["--out", str(run_dir)] + extra, **launch)
        print("$", command)
        assert status == 0, f"minires train failed with exit status {status}:\n{output}"
        losses[label] = [float(row["train_loss"]) for row in read_metrics(run_dir)]
        finals[label] = load_checkpoint(run_dir / "checkpoint.npz")["model"]
    start = build_model(TrainConfig(model="resnet20", seed=0)).state_dict()
    start = {name: getattr(value, "data", value) for name, value in start.items()}
    reference = parameters_of(finals["1 process"])
    moved = np.linalg.norm(reference - parameters_of(start))
    print(f"\n{'':28}{'loss, step 1':>15}{'step 2':>12}{'step 3':>12}   parameters vs 1 process")
    for label in variants:
        distance = np.linalg.norm(parameters_of(finals[label]) - reference) / moved
        print(f"{label:28}" + "".join(f"{v:>{w}.7f}" for v, w in zip(losses[label], (15, 12, 12)))
              + f"   {100 * distance:6.2f}% of the distance moved")
    same = all(np.array_equal(finals["2 processes (--nproc 2)"][n], finals["2 processes (mpiexec -n 2)"][n])
               for n in finals["1 process"])
    print("\n--nproc 2 and mpiexec -n 2 end with bitwise identical parameters:", same)
shutil.rmtree(work_dir)


# %% [markdown]
# Read the table from left to right.
#
# * **Step 1** is the loss of the initial network on the first batch. With SyncBatchNorm, two
#   processes compute the same number as one process, to the digits shown; with per-rank batch
#   norm they do not, because each rank normalises its 32 images with their own statistics
#   (section 2) and so evaluates a slightly different function.
# * **Steps 2 and 3** follow one update each. With `--sync-bn` the two-process run stays close to
#   the one-process run: what separates them is float32 rounding (the sums are taken in another
#   order), which the first steps of a ResNet amplify a little. Per-rank batch norm ends much
#   further away, because its gradients are those of another objective.
# * `--nproc 2` and `mpiexec -n 2` are the same run, to the last bit: `--nproc` re-executes the
#   same command line under `mpiexec`, and either way each rank limits its threads to its share of
#   the cores.
#
# Per-rank batch norm is not wrong: it is the usual practice, and with a few dozen images per rank
# its statistics are good enough. SyncBatchNorm adds three small all-reduces per batch-norm layer
# and step (two in the forward pass, one in the backward pass), and the forward pass cannot go on
# until its statistics have arrived, so their latency is not hidden behind computation. It earns
# its keep where each rank holds only a few images, as in detection and segmentation networks
# trained on large images.
#
# ## Summary
#
# * With equal shards, the mean of the per-shard mean losses is the mean loss of the whole batch,
#   so averaging the ranks' gradients gives the big batch's gradient exactly (up to rounding); the
#   ranks then take identical steps from identical parameters.
# * Batch norm in training mode couples the examples of a batch; with per-rank statistics, $W$
#   ranks of $n$ examples train a network whose batch norm sees batches of $n$, not $Wn$. The
#   smaller $n$, the larger the difference.
# * An all-reduce leaves the sum on every rank. The ring algorithm does it in $2(W-1)$ steps, each
#   rank sending $2\frac{W-1}{W}$ times its data; minires's `DistributedDataParallel` packs gradients
#   into buckets and starts their all-reduces during the backward pass.
# * SyncBatchNorm all-reduces the per-channel counts and sums in the forward pass and
#   $(\sum g, \sum g \hat x)$ in the backward pass; with those, the one-process formulas hold on
#   the global batch, and two processes compute what one does.
# * `minires train --nproc 2` and `mpiexec -n 2 minires train` start the same data-parallel run;
#   `--sync-bn` switches to global batch statistics.
#
# ## Exercises
#
# **Exercise 1.** Going from one process at batch 128 to two processes at 64 each, why does the
# learning rate not need to change? Check it: take one SGD step (momentum 0.9, learning rate 0.1)
# with `small_net(batch_norm=False)` on the batch of 128 of section 1, and one step where the
# gradient is the average of the two shards' gradients, and compare the parameters. What would
# you change if each of the two processes kept a batch of 128 (a global batch of 256)?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 1
# The averaged gradient IS the gradient of the batch of 128 (section 1), so the same learning rate gives
# the same update: the optimiser cannot tell the difference. Had the ranks kept 128 each, the update would be
# that of a batch of 256: its gradient is less noisy, and the usual remedy (Goyal et al., 2017, "linear scaling")
# is to double the learning rate, with a warm-up, to take the same distance per epoch in half as many steps.
def one_step(gradient_of):
    model = small_net(batch_norm=False)  # same seed, same initial weights every time
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    gradient = gradient_of(model)
    offset = 0
    for p in model.parameters():  # put the flat gradient back into .grad, parameter by parameter
        p.grad = gradient[offset:offset + p.size].reshape(p.shape)
        offset += p.size
    optimizer.step()
    return np.concatenate([p.data.ravel() for p in model.parameters()])


one_process = one_step(lambda m: flat_gradient(m, images, labels))
two_processes = one_step(lambda m: sum(flat_gradient(m, images[s], labels[s]) for s in shards) / len(shards))
moved = np.linalg.norm(one_process - np.concatenate([p.data.ravel() for p in small_net(False).parameters()]))
print(f"parameters after one step: 1 process vs 2 processes differ by "
      f"{np.linalg.norm(one_process - two_processes):.1e}; the step itself moved them by {moved:.3f}")

# %% [markdown]
# **Exercise 2.** With per-rank batch norm, what happens when each rank's batch becomes tiny? Pass
# batches of 2 examples of 16 features through `nn.BatchNorm1d(16)` in training mode: what are the
# normalised outputs, whatever the inputs? What happens with 1 example? Then redo the measurement
# of section 2 for `bn_net` with 2 examples per rank, and say what SyncBatchNorm would give.

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 2
# Two values a, b have mean (a+b)/2 and biased variance ((a-b)/2)^2, so (up to eps) they normalise to -1 and +1,
# whatever a and b are: the layer keeps only which of the two is larger, and the per-rank loss is a different
# and much noisier function. One value has variance 0 and no batch norm is possible (minires refuses it).
# SyncBatchNorm normalises with the statistics of the global batch whatever each rank holds, so its gradient
# is the batch-128 gradient at any split (section 4).
bn1d = nn.BatchNorm1d(16)
pair = Tensor(np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32) * 5 + 3)
print("normalised pair (first 6 features):\n", bn1d(pair).numpy()[:, :6].round(3))
try:
    bn1d(Tensor(np.ones((1, 16), dtype=np.float32)))
except ValueError as err:
    print("one example:", err)
two_each = sum(flat_gradient(bn_net, images[i:i + 2], labels[i:i + 2]) for i in range(0, B, 2)) / (B // 2)
print(f"64 ranks of 2 examples, per-rank batch norm: relative difference from the batch-128 gradient "
      f"{np.linalg.norm(two_each - full_bn) / np.linalg.norm(full_bn):.2f}")

# %% [markdown]
# **Exercise 3.** The derivation of section 1 assumed equal shards. Suppose the last batch of an
# epoch has 96 examples and rank 0 gets 64 of them, rank 1 gets 32. Show that the plain average of
# the two ranks' gradients is no longer the gradient of the batch of 96, find the weights that
# make it right, and check both with `small_net(batch_norm=False)`. How do minires's
# `DistributedSampler` and `per_rank_batch_size` avoid the problem altogether?

# %% [markdown]
# **Solution** (the next cell is hidden: click it to expand it).

# %% jupyter={"source_hidden": true} tags=["solution"]
# Solution to exercise 3
# L = (1/B) sum_i l_i = sum_r (n_r / B) L_r, so the weights are n_r / B (here 2/3 and 1/3), not 1/W.
# DistributedSampler gives every rank the same number of examples per epoch (padding with repeats, or
# drop_last), and per_rank_batch_size refuses a global batch that the number of ranks does not divide:
# every all-reduce then averages equal shards, and a plain average (ReduceOp.AVG) is right.
first, second = np.arange(0, 64), np.arange(64, 96)
whole = flat_gradient(net, images[:96], labels[:96])
g0, g1 = flat_gradient(net, images[first], labels[first]), flat_gradient(net, images[second], labels[second])
for name, combined in (("plain average", (g0 + g1) / 2), ("weighted 64/96 and 32/96", (64 * g0 + 32 * g1) / 96)):
    print(f"{name:>24}: relative difference {np.linalg.norm(combined - whole) / np.linalg.norm(whole):.1e}")
print(dist.DistributedSampler(100, num_replicas=3, rank=0), "->", len(dist.DistributedSampler(100, 3, 0)),
      "indices on each of 3 ranks (2 repeats pad the 100 examples to 102)")
try:
    dist.per_rank_batch_size(100, 3)
except ValueError as err:
    print("per_rank_batch_size(100, 3):", err)
