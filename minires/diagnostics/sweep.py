"""Depth sweep: how the gradient's spread across layers grows with depth, plain versus residual.

:func:`depth_sweep` builds, for each depth and kind, a freshly initialised
CIFAR network, runs ONE forward and backward pass on one fixed batch (the same
batch for every model), and reports the gradient norm of the first
convolution (the stem, ``conv1``) against that of the last one (the last
block's ``conv2``), together with the largest over the smallest conv-gradient
norm. The fc layer is left out: its gradient comes straight from the softmax
and has no depth to cross.

What it shows (measured on the CPU, seed 0; batch 32 of 32x32 Gaussian images,
``docs/results/gradflow/`` has the full table; the tests use batch 8 of 16x16):

* with batch norm, the plain network's EARLY gradients grow: first/last is
  about 11 at depth 20, 110 at 32, 450 at 44, 2e3 at 56 and 3e6 at 110, i.e. a
  factor of about 1.15 per layer. Each BN divides by the batch standard
  deviation of its input and removes the batch mean; with ReLU after it, the
  backward map of one conv-BN-ReLU layer has a gain above one in expectation
  (the mean-field analysis of Yang et al., ICLR 2019, "A mean field theory of
  batch normalization"), and a plain stack multiplies one such gain per layer.
  The residual twin stays within a small factor (4 at 20, 14 at 56, 29 at
  110): the identity shortcut carries the gradient past every branch, so the
  gradients of successive blocks ADD (a sum grows slowly with depth) instead
  of MULTIPLYING.
* without batch norm (He initialisation with ``fan_out`` is designed to keep
  the backward signal's variance), the plain network's first conv gets about
  a tenth of the last one's gradient at EVERY depth (first/last 0.05-0.14,
  spread 7-36 from 20 to 110 layers): no growth with depth at this init (the
  classic vanishing needs a worse initialisation, or shows during training).
  The residual network without BN, however, blows up in the FORWARD pass: each
  block adds a branch about as large as its input, so the signal's variance
  roughly doubles per block (logit std 5 at 20 layers, 1.2e4 at 56, 8e8 at
  110) and every gradient grows with it. That is why the paper puts BN in
  every residual branch.

The models have no ``batch_norm=False`` option, so :func:`without_batch_norm`
builds the variant after construction by swapping every ``BatchNorm`` module
for an :class:`~minires.nn.Identity`. Every other layer, and the He
initialisation of every weight, is untouched, so the BN and no-BN models of a
seed start from the same convolution weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .. import models, nn
from ..nn import functional as F
from ..tensor import Tensor
from .grad_norms import grad_norm_rows

__all__ = ["SweepRow", "SweepResult", "depth_sweep", "without_batch_norm", "fixed_batch", "build_cifar_model",
           "KINDS"]

# "residual" is the spec's name; "resnet" the model-name prefix; both accepted.
KINDS = {"plain": "plain", "residual": "resnet", "resnet": "resnet"}


def without_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm module of ``model`` by ``Identity``, in place; returns ``model``.

    The state dict loses the BN keys; everything else (weights, names of the
    other layers, the blocks and their taps) stays as it was.
    """
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, child_name, nn.Identity())
    return model


def build_cifar_model(kind: str, depth: int, batch_norm: bool = True, seed: int = 0, width: int = 16) -> nn.Module:
    """``plain_cifar(depth)`` or ``resnet_cifar(depth)`` initialised with ``seed``, optionally without BN.

    ``kind``: "plain", "residual" (or "resnet"). Plain and residual twins with
    the same seed get identical convolution weights (same layers, same order).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    builder = models.plain_cifar if KINDS[kind] == "plain" else models.resnet_cifar
    model = builder(depth, width=width, seed=seed)
    if not batch_norm:
        without_batch_norm(model)
        model.arch = f"{model.arch}-nobn"
    return model


def fixed_batch(batch_size: int, image_size: int = 32, seed: int = 0, num_classes: int = 10) -> tuple[Tensor, Tensor]:
    """A reproducible batch: standard-normal images ``(B, 3, S, S)`` float32 and labels ``(B,)`` int64.

    Normalised CIFAR images have about zero mean and unit variance per channel,
    so at initialisation Gaussian images give the same gradient *scales*
    (pass real images to :func:`depth_sweep` to use those instead).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 (batch norm needs 2 examples), got {batch_size!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, 3, image_size, image_size)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch_size).astype(np.int64)
    return Tensor(images), Tensor(labels)


@dataclass(frozen=True)
class SweepRow:
    """One model of a sweep, measured at initialisation on the sweep's batch.

    Attributes:
        depth, kind, model, batch_norm: which network ("plain", 56, "plain56", True).
        first: ``||dL/dW||`` of the first conv (the stem).
        last: ``||dL/dW||`` of the last conv.
        ratio: ``first / last`` (above 1: early layers get LARGER gradients).
        spread: max over min of the conv gradient norms (>= 1).
        loss: the cross-entropy of the batch.
        logit_std: standard deviation of the logits (shows a forward blow-up).
    """

    depth: int
    kind: str
    model: str
    batch_norm: bool
    first: float
    last: float
    ratio: float
    spread: float
    loss: float
    logit_std: float


@dataclass
class SweepResult:
    """The rows of :func:`depth_sweep` and how they were measured."""

    rows: list[SweepRow]
    batch_size: int
    image_size: int
    seed: int
    batch_norm: bool
    seconds: float

    def row(self, kind: str, depth: int) -> SweepRow:
        """The row of ``kind`` ("plain"/"residual") at ``depth``."""
        want = KINDS.get(kind, kind)
        for r in self.rows:
            if r.depth == depth and KINDS[r.kind] == want:
                return r
        raise KeyError(f"no {kind} row at depth {depth} in this sweep")

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {"batch_size": self.batch_size, "image_size": self.image_size, "seed": self.seed,
                "batch_norm": self.batch_norm, "seconds": self.seconds,
                "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows]}

    def format_table(self) -> str:
        """Aligned text: one line per model, the ratio and spread in scientific notation."""
        bn = "with" if self.batch_norm else "without"
        lines = [f"gradient spread at initialisation ({bn} batch norm; batch {self.batch_size} of "
                 f"{self.image_size}x{self.image_size}, seed {self.seed})",
                 f"{'model':<14}  {'depth':>5}  {'||dW first||':>12}  {'||dW last||':>12}  {'first/last':>10}  "
                 f"{'max/min':>9}  {'logit std':>9}"]
        for r in self.rows:
            lines.append(f"{r.model:<14}  {r.depth:>5}  {r.first:>12.3e}  {r.last:>12.3e}  {r.ratio:>10.2e}  "
                         f"{r.spread:>9.2e}  {r.logit_std:>9.2e}")
        return "\n".join(lines)


def conv_grad_norms(model: nn.Module) -> np.ndarray:
    """``||dL/dW||`` of every Conv2d weight of ``model``, input side first, as float64 ``(n_convs,)``."""
    convs = [(name, m.weight) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return np.array([r.grad_norm for r in grad_norm_rows(convs, weights_only=False)], dtype=np.float64)


def measure_at_init(model: nn.Module, images: Tensor, labels: Tensor) -> tuple[np.ndarray, float, float]:
    """One forward/backward in training mode; returns ``(conv grad norms, loss, logit std)``.

    Training mode because that is what the first SGD step sees (BN normalises
    with the batch's statistics). The model's BN running statistics are
    updated by the pass, as they would be by a training step.
    """
    model.train()
    model.zero_grad()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    std = float(np.asarray(logits.numpy(), dtype=np.float64).std())
    return conv_grad_norms(model), float(loss.item()), std


def depth_sweep(
    depths: Sequence[int],
    kinds: Sequence[str] = ("plain", "residual"),
    batch_norm: bool = True,
    batch_size: int = 32,
    image_size: int = 32,
    seed: int = 0,
    width: int = 16,
    images: Tensor | None = None,
    labels: Tensor | None = None,
) -> SweepResult:
    """First-to-last conv gradient ratio at initialisation, for each depth and kind.

    Args:
        depths: CIFAR depths ``6n + 2`` (20, 32, 44, 56, 110, ...).
        kinds: any of "plain", "residual" (alias "resnet").
        batch_norm: False strips every BN (:func:`without_batch_norm`).
        batch_size, image_size, seed: the fixed Gaussian batch
            (:func:`fixed_batch`); ``seed`` also initialises every model.
        width: filters of the first stage (16 in the paper).
        images, labels: your own batch ``(B, 3, H, W)`` float32 and ``(B,)``
            int64 instead of the Gaussian one.

    Returns:
        A :class:`SweepResult`, rows in the order depth-major, kinds as given.
    """
    if not depths:
        raise ValueError("depths must name at least one depth, e.g. [20, 56]")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; kinds are {sorted(KINDS)}")
    if (images is None) != (labels is None):
        raise ValueError("pass both images and labels, or neither")
    if images is None:
        images, labels = fixed_batch(batch_size, image_size, seed)
    elif images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {images.shape}")
    start = time.perf_counter()
    rows = []
    for depth in depths:
        for kind in kinds:
            model = build_cifar_model(kind, depth, batch_norm=batch_norm, seed=seed, width=width)
            norms, loss, std = measure_at_init(model, images, labels)
            first, last = float(norms[0]), float(norms[-1])
            ratio = first / last if last > 0 else math.inf
            spread = float(norms.max() / norms.min()) if norms.min() > 0 else math.inf
            rows.append(SweepRow(int(depth), kind, model.arch, bool(batch_norm), first, last, ratio, spread, loss,
                                 std))
    return SweepResult(rows, int(images.shape[0]), int(images.shape[2]), int(seed), bool(batch_norm),
                       time.perf_counter() - start)
