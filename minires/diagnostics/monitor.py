"""GradientMonitor: watch the gradient flow through every layer and block while a network trains.

The ResNet paper's argument is about gradients: in a deep *plain* network the
gradient reaching an early layer is a product of one Jacobian per later layer,
and such products drift geometrically with depth; a residual block adds an
identity path (``dy/dx = D (dF/dx + I)``), so part of the gradient reaches
every block without crossing any weight. The monitor measures this directly,
at the two places where it shows:

* **layers** -- for every layer with a weight (conv and fc by default, batch
  norm with ``include_bn=True``), named by its module (``"layer1.0.conv1"``):
  ``||dL/dW||`` and ``||W||``. These rows come from
  :func:`minires.diagnostics.grad_norms.grad_norm_rows`, the same code that
  ``minires train --grad-norms N`` uses, so the two always agree.
* **blocks** -- for every :class:`~minires.models.Block` (``"layer1.0"``):
  ``||dL/dx||``, the gradient the block passes down to its input, and
  ``||dL/dy||``, the gradient arriving at its output from the layers above.
  A gradient at an intermediate tensor is never stored by the engine, so the
  monitor asks each block for its live ``input``/``output`` tensors through
  the block *taps* (:meth:`Block.add_tap`) and registers a
  :meth:`Tensor.register_hook` on them; the hook sees the gradient during
  ``backward()`` and keeps its norm. Consecutive blocks share a tensor (block
  ``k``'s output *is* block ``k + 1``'s input), so ``grad_out[k] == grad_in[k + 1]``.

All norms are Frobenius (L2) norms over every element, batch axis included.

Typical use::

    monitor = GradientMonitor(model)
    for step, (x, y) in enumerate(loader, start=1):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward()
        monitor.record(step, loss=loss.item())   # before or after optimizer.step()
        optimizer.step()
        monitor.record_update()                  # optional: ||dW|| of this step, for ||dW|| / ||W||
    monitor.detach()                             # every hook removed
    save_history(monitor.history, "gradients.json")

With the Trainer, pass ``monitor.callback(every=N)`` in its ``callbacks``: it
records steps 1, N, 2N, ... and switches the hooks off in between. Step 1's
gradient was computed at the *initial* weights, so it is the "at
initialisation" profile. (Recorded from a callback, the weight norm is read
just after that step's update, which moves ``W`` by about ``lr * ||dL/dW||``.)
The callback also records each recorded step's update-to-weight ratio.

Update-to-weight ratio. ``||W_after - W_before|| / ||W||`` is the relative
size of the step the optimiser actually took (momentum and weight decay
included): around 1e-3 per step is the usual healthy value, far smaller means
a layer barely learns, far larger that it is thrown around. The monitor keeps
a copy of the weights when each (enabled) forward pass begins, the weights
before that step's update; :meth:`GradientMonitor.record_update` compares.

Cost. The block hooks cost one norm per block per backward; the layer norms
are computed only in :meth:`GradientMonitor.record`. ``monitor.enabled = False``
turns the taps into an early return (nothing is hooked); :meth:`detach`
unregisters everything, after which the model runs exactly as if it had never
been monitored. The hooks return ``None``, so they never change a gradient:
training with a monitor attached gives bit-for-bit the same parameters.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .. import nn
from ..atomic import atomic_write_bytes
from ..backend import get_array_module
from ..models.blocks import Block
from ..tensor import RemovableHandle, Tensor, is_grad_enabled
from .grad_norms import GradNormRow, format_table, grad_norm_rows

__all__ = ["GradientMonitor", "GradientHistory", "MonitorCallback", "save_history", "load_history"]

HISTORY_FORMAT = "minires-gradient-history"
HISTORY_VERSION = 1

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


# ---------------------------------------------------------------------------
# The recorded history
# ---------------------------------------------------------------------------


@dataclass
class GradientHistory:
    """Everything a :class:`GradientMonitor` recorded, one entry per recorded step.

    Attributes:
        model: the model's name (``model.arch``, e.g. ``"plain56"``).
        layers: layer (module) names, input side first (``"conv1"``, ...,
            ``"fc"``); index ``i`` is the ``i``-th column of the layer arrays.
        layer_types: class names of those modules (``"Conv2d"``, ``"Linear"``, ...).
        layer_shapes: shapes of their weights.
        blocks: block names, input side first (``"layer1.0"``, ...).
        steps: the step number of each record.
        losses: the loss passed to ``record`` (``None`` if not given).
        layer_grad: ``[record][layer]`` ``||dL/dW||``; ``nan`` if the weight had no gradient.
        layer_weight: ``[record][layer]`` ``||W||``.
        layer_update: ``[record][layer]`` ``||W_after - W_before||`` of the
            optimiser step of that record (:meth:`GradientMonitor.record_update`);
            ``nan`` when not measured.
        block_grad_in: ``[record][block]`` ``||dL/dx||`` at the block's input;
            ``nan`` if no backward went through the block since the last record.
        block_grad_out: ``[record][block]`` ``||dL/dy||`` at the block's output.
        meta: free-form JSON-able notes (batch size, data, ...).
    """

    model: str
    layers: list[str]
    layer_types: list[str]
    layer_shapes: list[tuple[int, ...]]
    blocks: list[str]
    steps: list[int] = field(default_factory=list)
    losses: list[float | None] = field(default_factory=list)
    layer_grad: list[list[float]] = field(default_factory=list)
    layer_weight: list[list[float]] = field(default_factory=list)
    layer_update: list[list[float]] = field(default_factory=list)
    block_grad_in: list[list[float]] = field(default_factory=list)
    block_grad_out: list[list[float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def index_of(self, step: int) -> int:
        """The record index of ``step`` (``ValueError`` listing the recorded steps if absent)."""
        try:
            return self.steps.index(int(step))
        except ValueError:
            raise ValueError(f"step {step} was not recorded for {self.model}; recorded steps: {self.steps}") from None

    def grad_array(self, kind: str = "layer") -> np.ndarray:
        """The gradient norms as a float64 array ``(records, layers)`` or ``(records, blocks)``.

        ``kind``: ``"layer"`` (``||dL/dW||``), ``"weight"`` (``||W||``),
        ``"update"`` (``||dW||`` of the step), ``"update_ratio"`` (``||dW|| / ||W||``),
        ``"block_in"`` (``||dL/dx||``) or ``"block_out"`` (``||dL/dy||``).
        Missing values are ``nan``.
        """
        if kind == "update_ratio":
            return self.grad_array("update") / self.grad_array("weight")
        table = {"layer": (self.layer_grad, self.layers), "weight": (self.layer_weight, self.layers),
                 "update": (self.layer_update, self.layers),
                 "block_in": (self.block_grad_in, self.blocks), "block_out": (self.block_grad_out, self.blocks)}
        if kind not in table:
            raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}")
        values, names = table[kind]
        return np.array(values, dtype=np.float64).reshape(len(values), len(names))

    def layer_rows(self, index: int = -1) -> list[GradNormRow]:
        """Record ``index`` (default: the last) as :class:`GradNormRow` s, for :func:`grad_norms.format_table`."""
        if not self.steps:
            raise ValueError(f"nothing recorded yet for {self.model}")
        return [GradNormRow(name, tuple(shape), g, w, u) for name, shape, g, w, u in
                zip(self.layers, self.layer_shapes, self.layer_grad[index], self.layer_weight[index],
                    self.layer_update[index])]

    # -- (de)serialisation ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict (``nan``/``inf`` become ``None``)."""

        def clean(values: Iterable[float]) -> list[float | None]:
            return [v if v is not None and math.isfinite(v) else None for v in values]

        return {
            "format": HISTORY_FORMAT,
            "version": HISTORY_VERSION,
            "model": self.model,
            "layers": [{"name": n, "type": t, "shape": list(s)}
                       for n, t, s in zip(self.layers, self.layer_types, self.layer_shapes)],
            "blocks": list(self.blocks),
            "records": [
                {"step": s, "loss": None if loss is None or not math.isfinite(loss) else loss,
                 "layer_grad": clean(g), "layer_weight": clean(w), "layer_update": clean(u),
                 "block_grad_in": clean(bi), "block_grad_out": clean(bo)}
                for s, loss, g, w, u, bi, bo in zip(self.steps, self.losses, self.layer_grad, self.layer_weight,
                                                    self.layer_update, self.block_grad_in, self.block_grad_out)
            ],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "GradientHistory":
        """Rebuild a history from :meth:`to_dict` output; ``ValueError`` naming ``source`` if malformed."""
        if not isinstance(data, dict) or data.get("format") != HISTORY_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source} is not a gradient history (format {found!r}, expected {HISTORY_FORMAT!r})")
        if data.get("version") != HISTORY_VERSION:
            raise ValueError(f"{source}: unsupported gradient-history version {data.get('version')!r} "
                             f"(this minires reads version {HISTORY_VERSION})")
        try:
            layers = data["layers"]
            hist = cls(
                model=str(data["model"]),
                layers=[str(entry["name"]) for entry in layers],
                layer_types=[str(entry["type"]) for entry in layers],
                layer_shapes=[tuple(int(d) for d in entry["shape"]) for entry in layers],
                blocks=[str(b) for b in data["blocks"]],
                meta=dict(data.get("meta") or {}),
            )
            n_layers, n_blocks = len(hist.layers), len(hist.blocks)
            for i, rec in enumerate(data["records"]):
                rec = {"layer_update": [None] * n_layers, **rec}  # histories saved before update ratios existed
                arrays = {key: [math.nan if v is None else float(v) for v in rec[key]]
                          for key in ("layer_grad", "layer_weight", "layer_update", "block_grad_in", "block_grad_out")}
                for key, expected in (("layer_grad", n_layers), ("layer_weight", n_layers), ("layer_update", n_layers),
                                      ("block_grad_in", n_blocks), ("block_grad_out", n_blocks)):
                    if len(arrays[key]) != expected:
                        raise ValueError(f"record {i} has {len(arrays[key])} values in {key!r}, expected {expected}")
                hist.steps.append(int(rec["step"]))
                hist.losses.append(None if rec.get("loss") is None else float(rec["loss"]))
                hist.layer_grad.append(arrays["layer_grad"])
                hist.layer_weight.append(arrays["layer_weight"])
                hist.layer_update.append(arrays["layer_update"])
                hist.block_grad_in.append(arrays["block_grad_in"])
                hist.block_grad_out.append(arrays["block_grad_out"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed gradient history ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{source}: malformed gradient history: {exc}") from None
        return hist


def save_history(history: GradientHistory, path: str | os.PathLike) -> None:
    """Write ``history`` as JSON to ``path``, atomically (readers never see half a file)."""
    text = json.dumps(history.to_dict(), indent=1, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def load_history(path: str | os.PathLike) -> GradientHistory:
    """Read a history written by :func:`save_history`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid JSON or not a gradient history (the message names the file).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    return GradientHistory.from_dict(data, source=str(path))


# ---------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------


def _norm_on_device(array: Any) -> Any:
    """``||array||_2`` left on its device (a 0-d array); read back only in ``record``.

    Converting with ``float()`` here would force a GPU synchronisation in the
    middle of every backward pass.
    """
    xp = get_array_module(array)
    return xp.linalg.norm(array.ravel())


class GradientMonitor:
    """Record per-layer and per-block gradient norms of ``model`` (see the module docstring).

    Args:
        model: a :class:`~minires.nn.Module`. Layers are its ``Conv2d`` and
            ``Linear`` modules (plus ``BatchNorm`` with ``include_bn``), in
            ``named_modules()`` order, i.e. input side first; blocks are its
            :class:`~minires.models.Block` submodules. A model without blocks
            gets layer rows only.
        include_bn: also record batch-norm layers (the norm of gamma and of its gradient).
        enabled: start enabled (hooks active); settable later via ``monitor.enabled``.

    Attributes:
        history: the :class:`GradientHistory` being filled.
        enabled: when False, the taps return at once and nothing is hooked.
    """

    def __init__(self, model: nn.Module, include_bn: bool = False, enabled: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"GradientMonitor expects a minires.nn.Module, got {type(model).__name__}")
        kinds = _WEIGHTED + (_NORMS if include_bn else ())
        self._layers: list[tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules()
            if isinstance(m, kinds) and getattr(m, "weight", None) is not None
        ]
        if not self._layers:
            raise ValueError(f"{type(model).__name__} has no conv, linear{' or batch-norm' if include_bn else ''} "
                             "layer with a weight to monitor")
        blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, Block)]
        self._block_index = {id(m): i for i, (_, m) in enumerate(blocks)}
        self.history = GradientHistory(
            model=str(getattr(model, "arch", type(model).__name__.lower())),
            layers=[name for name, _ in self._layers],
            layer_types=[type(m).__name__ for _, m in self._layers],
            layer_shapes=[tuple(m.weight.shape) for _, m in self._layers],
            blocks=[name for name, _ in blocks],
        )
        self.enabled = bool(enabled)
        self._grad_in: list[Any] = [None] * len(blocks)
        self._grad_out: list[Any] = [None] * len(blocks)
        # Hooks on the tensors of the forward passes since the last record:
        # kept so that detach() can remove those too, even before their backward.
        self._tensor_hooks: list[RemovableHandle] = []
        self._before: list[Any] | None = None  # the weights when the current step began (record_update)
        self._taps = [block.add_tap(self._tap) for _, block in blocks]
        self.attached = True

    # -- hooks ---------------------------------------------------------------------

    def _tap(self, block: Block, name: str, tensor: Tensor) -> None:
        if not self.enabled or name not in ("input", "output"):
            return
        if not (tensor.requires_grad and is_grad_enabled()):
            return  # evaluation under no_grad(): no backward will come
        i = self._block_index[id(block)]
        if i == 0 and name == "input":
            # A new forward pass starts: hooks left from a forward that had no
            # backward (its graph is garbage now) need not be tracked any more,
            # and the weights are still those before this step's update.
            self._tensor_hooks.clear()
            self._before = self._weights()
        store = self._grad_in if name == "input" else self._grad_out

        def hook(grad: Tensor) -> None:
            store[i] = _norm_on_device(grad.data)
            return None  # never replace the gradient: monitoring must not change training

        self._tensor_hooks.append(tensor.register_hook(hook))

    def detach(self) -> None:
        """Remove every tap and tensor hook; the monitor records nothing after this."""
        for handle in self._taps:
            handle.remove()
        for handle in self._tensor_hooks:
            handle.remove()
        self._taps, self._tensor_hooks = [], []
        self.attached = False

    remove = detach

    def __enter__(self) -> "GradientMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # -- recording -------------------------------------------------------------------

    def record(self, step: int, loss: float | None = None) -> None:
        """Append the current gradients as the record of ``step``.

        Call after ``loss.backward()`` and before the next ``zero_grad()``.
        Layer values are read from each weight's ``.grad`` now; block values
        are those captured by the hooks during the last backward (``nan`` for
        a block no backward has reached since the previous record).
        """
        if not self.attached:
            raise RuntimeError("this GradientMonitor was detached; create a new one to record again")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an integer, got {step!r}")
        rows = grad_norm_rows([(name, m.weight) for name, m in self._layers], weights_only=False)
        h = self.history
        h.steps.append(int(step))
        h.losses.append(None if loss is None else float(loss))
        h.layer_grad.append([r.grad_norm for r in rows])
        h.layer_weight.append([r.weight_norm for r in rows])
        h.layer_update.append([math.nan] * len(rows))  # filled in by record_update()
        if self._before is None:  # no forward pass through a block seen: the weights are as they are now
            self._before = self._weights()
        h.block_grad_in.append([math.nan if v is None else float(v) for v in self._grad_in])
        h.block_grad_out.append([math.nan if v is None else float(v) for v in self._grad_out])
        self._grad_in = [None] * len(self._grad_in)
        self._grad_out = [None] * len(self._grad_out)
        self._tensor_hooks.clear()

    def record_update(self) -> None:
        """Add to the last record the size of the optimiser step just taken: ``||W_after - W_before||`` per layer.

        Call after ``optimizer.step()``. ``W_before`` is the weights when the
        step's forward pass began (or, for a model without blocks, when
        :meth:`record` ran, so call that before the step).
        ``history.grad_array("update_ratio")`` then gives ``||dW|| / ||W||``.
        """
        if not self.history.steps or self._before is None:
            raise RuntimeError("record_update() needs a record() of this step first")
        self.history.layer_update[-1] = [
            float(_norm_on_device(m.weight.data - before)) for (_, m), before in zip(self._layers, self._before)
        ]
        self._before = None

    def _weights(self) -> list[Any]:
        return [m.weight.data.copy() for _, m in self._layers]

    def callback(self, every: int) -> "MonitorCallback":
        """A Trainer callback recording steps 1, ``every``, 2 ``every``, ..."""
        return MonitorCallback(self, every)

    # -- printing ----------------------------------------------------------------------

    def format_table(self, index: int = -1) -> str:
        """Record ``index`` (default the last) as aligned text: one row per layer, then one per block."""
        return format_history_table(self.history, index)


def format_history_table(history: GradientHistory, index: int = -1) -> str:
    """Layer table (:func:`grad_norms.format_table`) followed by the block table, for one record."""
    if not history.steps:
        raise ValueError(f"nothing recorded yet for {history.model}")
    step = history.steps[index]
    text = format_table(history.layer_rows(index), title=f"{history.model}: step {step}")
    if history.blocks:
        width = max(len("block"), *(len(b) for b in history.blocks))
        lines = [f"{'block':<{width}}  {'||dL/dx in||':>12}  {'||dL/dy out||':>13}"]
        for name, gi, go in zip(history.blocks, history.block_grad_in[index], history.block_grad_out[index]):
            lines.append(f"{name:<{width}}  {gi:>12.3e}  {go:>13.3e}")
        text += "\n\n" + "\n".join(lines)
    return text


class MonitorCallback:
    """Records a :class:`GradientMonitor` from inside the Trainer's ``fit()``.

    ``on_step_end`` runs after ``optimizer.step()``; the optimiser never
    modifies ``.grad``, so the weights' gradients are still those of the step
    (the pure loss gradient: weight decay is added to a copy). Between recorded
    steps the monitor is disabled, so unrecorded steps pay nothing.

    (Not a subclass of the train package's ``Callback``: diagnostics sits
    below training and never imports it; the trainer only needs the two methods.)
    """

    def __init__(self, monitor: GradientMonitor, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.monitor = monitor
        self.every = int(every)
        monitor.enabled = self.wants(1)

    def wants(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) is recorded: the first step and every ``every``-th."""
        return step == 1 or step % self.every == 0

    def on_step_end(self, trainer: Any) -> None:
        step = int(trainer.global_step)
        if self.wants(step):
            self.monitor.record(step)
            self.monitor.record_update()
        self.monitor.enabled = self.wants(step + 1)

    def on_epoch_end(self, trainer: Any, row: dict) -> None:
        pass


def layer_depths(history: GradientHistory, kinds: Sequence[str] = ("Conv2d",)) -> list[int]:
    """Indices into ``history.layers`` of the layers of the given types (default: convolutions)."""
    return [i for i, t in enumerate(history.layer_types) if t in kinds]
