"""Model summary: per-layer output shapes, parameters and multiply-accumulates (MACs).

How it works: the shapes are *measured*, not derived. :func:`summary` puts a
temporary forward hook on every leaf module (a module with no children: a
conv, a BN, a ReLU, a shortcut ...), runs one forward pass on a batch of zeros
under ``no_grad()`` in eval mode, and reads each layer's output shape off its
hook. Measuring keeps the summary correct for any model whose layers are
modules, with no shape formula to keep in sync with each layer's padding and
stride rules; the price is one forward pass (cheap for the CIFAR models, a few
seconds for an ImageNet model at 224x224 on the CPU).

MACs follow the paper's convention (its FLOPs are multiply-adds) and count
only the layers with weights:

* conv: ``C_out * (C_in / groups) * kH * kW * H_out * W_out`` per image
  (one multiply-add per weight per output position);
* linear: ``in_features * out_features`` per output row;
* BN, ReLU, pooling, the residual addition, shortcuts: 0.

Mode and state: the model is switched to eval mode for the probe (BN then
uses its running statistics, which the probe does not change, and a batch of
one 1x1 map is legal); afterwards every module's own ``training`` flag and
other attributes are as they were. Hooks are always removed, even if the
forward raises.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import nn
from .kernels.im2col import pair
from .tensor import Tensor, no_grad

__all__ = ["summary", "Summary", "LayerInfo", "layer_macs"]


@dataclass(frozen=True)
class LayerInfo:
    """One row of the summary: one call of a leaf module.

    Attributes:
        name: dotted module name (``"layer1.0.conv1"``).
        type: class name (``"Conv2d"``).
        output_shape: shape of the output, batch axis included.
        params: parameters of the module, counted on its first call only
            (a module called twice, like a block's shared ReLU, owns its
            parameters once).
        macs: multiply-accumulates of this call, per image.
    """

    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int


def layer_macs(module: nn.Module, output_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one call of ``module``, per image (batch axis excluded).

    Args:
        module: any module; only ``Conv2d`` and ``Linear`` cost MACs.
        output_shape: its output shape with the batch axis first,
            ``(N, C_out, H_out, W_out)`` for a conv, ``(N, ..., out_features)`` for a linear.
    """
    if isinstance(module, nn.Conv2d):
        kh, kw = pair("kernel_size", module.kernel_size, 1)
        groups = getattr(module, "groups", 1)
        _, c_out, h_out, w_out = output_shape
        return int(c_out * (module.in_channels // groups) * kh * kw * h_out * w_out)
    if isinstance(module, nn.Linear):
        rows = math.prod(output_shape[1:-1])  # 1 for (N, out); more for (N, T, out)
        return int(module.in_features * module.out_features * rows)
    return 0


class Summary:
    """The result of :func:`summary`; ``str(s)`` is the table.

    Attributes:
        name: the model's name (``model.arch`` if it has one, else its class name).
        input_shape: the probed input shape, batch axis included.
        layers: list of :class:`LayerInfo`, in the order the layers ran.
        total_params: every parameter of the model (leaf or not), counted once.
        trainable_params: those with ``requires_grad``.
        total_macs: sum of the layers' MACs, per image.
    """

    def __init__(self, name: str, input_shape: tuple, layers: list[LayerInfo], total_params: int,
                 trainable_params: int) -> None:
        self.name = name
        self.input_shape = input_shape
        self.layers = layers
        self.total_params = total_params
        self.trainable_params = trainable_params
        self.total_macs = sum(layer.macs for layer in layers)

    def summary_line(self) -> str:
        """One line, e.g. ``"resnet20: 0.27M params, 40.55M MACs/image"``."""
        return f"{self.name}: {self.total_params / 1e6:.2f}M params, {self.total_macs / 1e6:.2f}M MACs/image"

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "Params", "MACs")
        rows = [
            (layer.name, layer.type, str(list(layer.output_shape)), f"{layer.params:,}", f"{layer.macs:,}")
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def fmt(row: Sequence[str]) -> str:
            # Names and types left-aligned, numbers and shapes right-aligned.
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [row[i].rjust(widths[i]) for i in range(2, len(row))]
            return "  ".join(cells)

        rule = "-" * len(fmt(header))
        lines = [f"{self.name}, input {list(self.input_shape)}", rule, fmt(header), rule]
        lines += [fmt(r) for r in rows]
        lines += [
            rule,
            f"Total params: {self.total_params:,} (trainable: {self.trainable_params:,})",
            f"Total MACs per image: {self.total_macs:,} ({self.total_macs / 1e6:.2f}M)",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Summary {self.summary_line()}>"


def summary(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> Summary:
    """Probe ``model`` with one forward pass and tabulate its layers.

    Args:
        model: any :class:`~minires.nn.Module`.
        input_shape: the shape of ONE input without the batch axis, e.g.
            ``(3, 32, 32)``.
        batch_size: batch size of the probe (shown in the output shapes; MACs
            are per image whatever it is).

    Returns:
        a :class:`Summary`; ``print(summary(model, (3, 32, 32)))`` shows the table.
    """
    shape = _check_summary_arguments(model, input_shape, batch_size)
    params = list(model.parameters())
    first = params[0] if params else None
    dtype = first.dtype if first is not None else np.float32
    x = Tensor(np.zeros((int(batch_size), *map(int, shape)), dtype=dtype))
    if first is not None:
        x = x.to(device=first.device)
    layers = _probe(model, x, shape)
    total = sum(p.size for p in params)
    trainable = sum(p.size for p in params if p.requires_grad)
    name = getattr(model, "arch", None) or type(model).__name__
    return Summary(str(name), x.shape, layers, total, trainable)


def _check_summary_arguments(model: Any, input_shape: Any, batch_size: Any) -> tuple:
    """``input_shape`` as a tuple; a clear error for a non-Module or a bad shape or batch size."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects a minires.nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints without the batch axis, got {input_shape!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return shape


def _probe(model: nn.Module, x: Tensor, shape: tuple) -> list[LayerInfo]:
    """One eval-mode forward of ``x`` with a hook on every leaf module: a :class:`LayerInfo` per call."""
    names = {id(m): name for name, m in model.named_modules()}
    layers: list[LayerInfo] = []
    counted: set[int] = set()

    def record(module: nn.Module, inputs: tuple, output: Any) -> None:
        out_shape = tuple(output.shape) if isinstance(output, Tensor) else ()
        own = 0
        if id(module) not in counted:
            counted.add(id(module))
            own = sum(p.size for p in module.parameters())
        layers.append(LayerInfo(names[id(module)], type(module).__name__, out_shape, own,
                                layer_macs(module, out_shape) if out_shape else 0))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    # The probe must leave no trace. A shallow copy of each module's attributes
    # restores its own ``training`` flag and any one-time state a forward sets
    # (a BN that warned "never trained" during the probe must still warn the
    # user later). Parameters and buffers are not copied: eval mode does not
    # write to them.
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        model.eval()
        with no_grad(), warnings.catch_warnings():
            # A fresh model's BN has never seen data; that warning is noise
            # here: the probe only needs shapes.
            warnings.simplefilter("ignore")
            try:
                model(x)
            except (ValueError, TypeError) as exc:
                # The model's own message shows the probe's shape, batch axis added; say where it came from.
                exc.add_note(f"summary() probed the model with shape {x.shape}: batch_size {x.shape[0]} + input_shape "
                             f"{shape}. input_shape is ONE input without the batch axis, e.g. (3, 32, 32).")
                raise
    finally:
        for h in handles:
            h.remove()
        for m, attrs in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)
    return layers
