"""Stochastic gradient descent with momentum, weight decay and Nesterov (PyTorch's rule).

For each parameter ``p`` with gradient ``g`` (``p.grad``), one ``step()`` does::

    g = g + weight_decay * p                      # L2 penalty (weight_decay/2)*|p|^2
    if momentum != 0:
        buf = g                                   # first step: the buffer starts AT g
        buf = momentum * buf + (1 - dampening) * g   # later steps
        g = g + momentum * buf  if nesterov  else  buf
    p = p - lr * g

This is exactly ``torch.optim.SGD``. Note it differs from the textbook
``v = mu*v - lr*g; p += v`` (Sutskever et al.): here lr multiplies the whole
velocity, which only matters when lr changes mid-training -- as it does at
the paper's /10 steps, where torch's form makes the step shrink at once.

The paper trains CIFAR ResNets with ``SGD(model.parameters(), lr=0.1,
momentum=0.9, weight_decay=1e-4)``.

This file also holds :class:`Optimizer`, the small base class that manages
parameter groups, per-parameter state, ``zero_grad`` and saving/loading; it
lives here because SGD is minires's only optimiser.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np

from .. import backend
from ..tensor import Tensor, no_grad

__all__ = ["Optimizer", "SGD"]


class Optimizer:
    """Parameter groups, per-parameter state and (de)serialisation shared by optimisers.

    Args:
        params: an iterable of Tensors (one group), or of dicts
            ``{"params": [...], "lr": ..., ...}`` (one group each; missing
            hyperparameters take the values in ``defaults``).
        defaults: the default hyperparameters of each group.

    Attributes:
        param_groups: list of dicts; each has ``"params"`` (a list of Tensors)
            and its hyperparameters. Schedulers change ``group["lr"]`` here.
        state: ``{param: {name: array}}``, e.g. SGD's ``momentum_buffer``.
    """

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or of dicts, not a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group ``{"params": [...], **hyperparameters}`` (e.g. a new head to fine-tune)."""
        if not isinstance(group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError("a parameter group needs a 'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        where = f"group {len(self.param_groups)}"
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"parameter {i} of {where} is a {type(p).__name__}, not a Tensor")
            if not p.is_leaf:
                raise ValueError(f"parameter {i} of {where} is not a leaf tensor (it has a grad_fn)")
            if p.dtype.kind != "f":
                raise TypeError(f"parameter {i} of {where} has non-floating dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError(f"parameter {i} of {where} appears in more than one group or twice")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._check_group(full)
        self.param_groups.append(full)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (subclasses override)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (``None`` by default, as in PyTorch)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self) -> None:
        raise NotImplementedError

    # -- saving and loading ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: ndarray}}, "param_groups": [{..., "params": [index, ...]}]}``.

        Parameters are referred to by their position across all groups (0, 1,
        ...), as in PyTorch, so the dict can be loaded into an optimiser built
        over a fresh copy of the model. Arrays are NumPy copies.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = ids
            groups.append(saved)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {
                        name: _host_copy(value) for name, value in self.state[p].items()
                    }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state saved by :meth:`state_dict`.

        Checks that the groups and their sizes match and that every state
        array has its parameter's shape; one ``ValueError`` names all
        problems, and nothing is changed unless everything matches. Arrays
        are copied to each parameter's device and dtype.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"an optimizer state_dict has exactly the keys 'state' and 'param_groups', got {keys}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state_dict has {len(saved_groups)} parameter group(s), the optimizer has {len(self.param_groups)}"
            )
        problems: list[str] = []
        params: dict[int, Tensor] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                problems.append(f"group {gi} of the state_dict is not a dict with a 'params' entry")
                continue
            if len(saved["params"]) != len(group["params"]):
                problems.append(
                    f"group {gi} has {len(saved['params'])} parameters in the state_dict, "
                    f"{len(group['params'])} in the optimizer"
                )
                continue
            unknown = set(saved) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                problems.append(f"group {gi} has unknown hyperparameter(s) {sorted(unknown)}")
            for idx, p in zip(saved["params"], group["params"]):
                params[idx] = p
        new_state: dict[Tensor, dict[str, Any]] = {}
        for idx, entries in state_dict["state"].items():
            if idx not in params:
                problems.append(f"state for parameter {idx!r}, which no group lists")
                continue
            p = params[idx]
            converted = {}
            for name, value in entries.items():
                if name not in self._state_names:
                    problems.append(f"unknown state {name!r} for parameter {idx}")
                    continue
                if isinstance(value, Tensor):
                    value = value.data
                if not backend.is_array(value):
                    value = np.asarray(value)
                if tuple(value.shape) != p.shape:
                    problems.append(
                        f"{name} of parameter {idx} has shape {tuple(value.shape)}, the parameter has shape {p.shape}"
                    )
                    continue
                converted[name] = backend.to_device(value, p.device).astype(p.dtype, copy=True)
            new_state[p] = converted
        if problems:
            raise ValueError(f"cannot load {type(self).__name__} state_dict:\n  " + "\n  ".join(problems))
        for saved, group in zip(saved_groups, self.param_groups):
            for key, value in saved.items():
                if key != "params":
                    group[key] = copy.deepcopy(value)
        self.state = new_state

    # Names of the per-parameter state entries this optimiser understands.
    _state_names: tuple[str, ...] = ()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _host_copy(value: Any) -> Any:
    """A copy of an optimizer state entry, arrays on the host (what a checkpoint stores)."""
    return backend.to_device(value, backend.cpu).copy() if backend.is_array(value) else copy.deepcopy(value)


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's update rule (see the module docstring).

    Args:
        params: parameters or parameter groups (see :class:`Optimizer`).
        lr: learning rate.
        momentum: momentum factor ``mu`` (0 disables momentum).
        weight_decay: L2 coefficient added to the gradient.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        dampening: scales the new gradient's share of the buffer by ``1 - dampening``.

    Parameters whose ``.grad`` is None are skipped (frozen or unused).
    Updates work in place on ``p.data`` in the parameter's own dtype: a
    float32 model stays float32.
    """

    _state_names = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        dampening: float = 0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            value = group[name]
            is_number = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
            if not is_number or not value >= 0:
                raise ValueError(f"SGD {name} must be a non-negative number, got {value!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _check_grads(self) -> None:
        """Refuse gradients that do not fit their parameter, before anything is updated.

        A gradient must have its parameter's shape, dtype and device (as in
        PyTorch). Checking them all first makes ``step`` all-or-nothing: an
        error on the fifth parameter must not leave the first four (and their
        momentum buffers) already moved. Only metadata is read, never the
        numbers, so this costs no pass over the data and no GPU sync.
        """
        index = 0  # position across all groups, as in state_dict()
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is not None:
                    where = f"parameter {index} (number {i} of group {gi}, shape {p.shape})"
                    shape = getattr(g, "shape", None)
                    if shape is None:
                        raise TypeError(f"{where} has a gradient of type {type(g).__name__}, not an array")
                    if tuple(shape) != p.shape:
                        raise RuntimeError(f"{where} has a gradient of shape {tuple(shape)}")
                    if g.dtype != p.dtype:
                        raise RuntimeError(f"{where} has dtype {p.dtype} but its gradient has dtype {g.dtype}")
                    if backend.device_of(g) != p.device:
                        raise RuntimeError(f"{where} is on {p.device} but its gradient is on {backend.device_of(g)}")
                index += 1

    def step(self) -> None:
        """Update every parameter that has a gradient, once.

        Raises ``RuntimeError`` (and changes nothing) if a gradient's shape,
        dtype or device differs from its parameter's.
        """
        self._check_grads()
        with no_grad():
            for group in self.param_groups:
                # Python floats: a NumPy float64 scalar would promote float32 arithmetic to float64.
                lr, mu = float(group["lr"]), float(group["momentum"])
                wd, damp, nesterov = float(group["weight_decay"]), float(group["dampening"]), group["nesterov"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    if wd != 0:
                        # A new array: p.grad itself is never modified. A Python
                        # float times a float32 array stays float32.
                        g = g + wd * p.data
                    if mu != 0:
                        state = self.state.setdefault(p, {})
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            # The first step starts the buffer at g (not at (1-dampening)*g).
                            buf = g.copy()
                            state["momentum_buffer"] = buf
                        else:
                            buf *= mu
                            buf += g if damp == 0 else (1 - damp) * g
                        g = g + mu * buf if nesterov else buf
                    p.data -= lr * g
