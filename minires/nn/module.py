"""Module: the building block of networks, and the containers that hold them.

A :class:`Module` owns three kinds of state, each in its own ordered dict:

* ``_parameters``: :class:`~minires.nn.Parameter` objects, learnt by the
  optimiser (conv weights, BN's gamma and beta);
* ``_buffers``: raw arrays that are part of the model but not learnt by
  gradient descent (BN's running mean and variance, ``num_batches_tracked``);
* ``_modules``: child modules, which makes a network a tree.

Assigning an attribute routes the value into the right dict
(``self.conv1 = Conv2d(...)`` registers a child, ``self.weight =
Parameter(...)`` a parameter); buffers are declared with
:meth:`Module.register_buffer`. Everything else -- iterating parameters,
``train()``/``eval()``, moving to a device or dtype, saving and loading --
is a walk over that tree. The names along the walk ("layer1.0.conv1.weight")
are the same as PyTorch's, so state dicts line up key for key.

Train and eval mode is a ``training`` flag on EACH module, set recursively by
``train()``/``eval()`` on a subtree. There is no global switch: a global flag
makes it impossible to, say, keep one BN frozen while the rest trains, and it
leaks between models that share a process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from .. import backend
from ..dispatch import forward_override
from ..tensor import RemovableHandle, Tensor
from .parameter import Parameter

__all__ = ["Module", "Sequential", "ModuleList", "IncompatibleKeys"]


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
    if name == "" or "." in name:
        # A dot would make state_dict keys ambiguous ("a.b" = attribute b of child a).
        raise KeyError(f"{kind} name must be non-empty and contain no '.', got {name!r}")


def _indent(text: str, spaces: int) -> str:
    """Indent every line but the first (the first follows "(name): ")."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    pad = " " * spaces
    return lines[0] + "\n" + "\n".join(pad + line for line in lines[1:])


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` could not match (PyTorch returns the same pair)."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and network.

    Subclasses call ``super().__init__()`` first, assign their parameters,
    buffers and children as attributes, and define ``forward``. Calling the
    module (``m(x)``) runs ``forward`` and then any forward hooks.
    """

    def __init__(self) -> None:
        # object.__setattr__ because our own __setattr__ routes through these dicts.
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", [])
        object.__setattr__(self, "training", True)

    # -- forward -------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``forward(*args, **kwargs)``, then the forward hooks; returns the output.

        Under the fast kernel set a speed plug-in may run its own version of
        this module's forward (same result; see :mod:`minires.dispatch`).
        """
        override = forward_override(self)
        out = NotImplemented if override is None else override(self, *args, **kwargs)
        if out is NotImplemented:
            out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks):
            replaced = hook(self, args, out)
            if replaced is not None:
                out = replaced
        return out

    def register_forward_hook(self, hook: Callable[["Module", tuple, Any], Any]) -> RemovableHandle:
        """Call ``hook(module, inputs, output)`` after every forward of this module.

        ``inputs`` is the tuple of positional arguments. A hook that returns a
        value replaces the output. Diagnostics use this to record activations.
        Returns a handle whose ``remove()`` detaches the hook.
        """
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        self._forward_hooks.append(hook)
        return RemovableHandle(self._forward_hooks, hook)

    # -- registration ------------------------------------------------------------

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or ``None``: declared but absent, like a conv without bias)."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign a parameter before Module.__init__() was called")
        _check_name("parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute {name!r} already exists on {type(self).__name__}")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot register {type(param).__name__} as parameter {name!r}: "
                "wrap it as minires.nn.Parameter (or pass None)"
            )
        self._parameters[name] = param

    def register_buffer(self, name: str, array: Any, persistent: bool = True) -> None:
        """Add a buffer: a raw array that belongs to the model but is not trained.

        Args:
            name: attribute name (``"running_mean"``).
            array: a NumPy/CuPy array, a Tensor (its array is stored,
                detached), or ``None`` (declared but absent).
            persistent: whether ``state_dict()`` saves it.
        """
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign a buffer before Module.__init__() was called")
        _check_name("buffer", name)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute {name!r} already exists on {type(self).__name__}")
        if isinstance(array, Tensor):
            array = array.data
        if array is not None and not backend.is_array(array):
            raise TypeError(f"buffer {name!r} must be an array, a Tensor or None, got {type(array).__name__}")
        self._buffers[name] = array
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: "Module | None") -> None:
        """Add a child module (``self.name = module`` does the same)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module")
        _check_name("module", name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute {name!r} already exists on {type(self).__name__}")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign a parameter before Module.__init__() was called")
            self._forget(name)
            self.register_parameter(name, value)
            return
        if params is not None and name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter {name!r} "
                    "(minires.nn.Parameter or None expected)"
                )
            params[name] = None
            return
        modules = d.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError("cannot assign a module before Module.__init__() was called")
            self._forget(name)
            modules[name] = value
            return
        if modules is not None and name in modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module {name!r} (Module or None expected)"
                )
            modules[name] = None
            return
        buffers = d.get("_buffers")
        if buffers is not None and name in buffers:
            if isinstance(value, Tensor):
                value = value.data
            if value is not None and not backend.is_array(value):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (array or None expected)")
            buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        """Remove ``name`` from every place it could live before re-registering it."""
        self.__dict__.pop(name, None)
        for store in ("_parameters", "_buffers", "_modules"):
            self.__dict__[store].pop(name, None)
        self._non_persistent_buffers.discard(name)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Read __dict__ directly so that
        # copy/pickle (which probe attributes before __init__ ran) cannot recurse.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            items = d.get(store)
            if items is not None and name in items:
                return items[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in ("_parameters", "_buffers", "_modules"):
            items = self.__dict__.get(store)
            if items is not None and name in items:
                del items[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    # -- walking the tree ------------------------------------------------------------

    def named_modules(self, prefix: str = "", memo: set | None = None) -> Iterator[tuple[str, "Module"]]:
        """Yield ``(name, module)`` for this module and every descendant, parents first.

        A module reachable along two paths is yielded once, under its first name.
        """
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(prefix + ("." if prefix else "") + name, memo)

    def modules(self) -> Iterator["Module"]:
        """This module and all its descendants (see :meth:`named_modules`)."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """The direct children as ``(name, module)``, in registration order."""
        seen: set[int] = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator["Module"]:
        """The direct children, in registration order."""
        for _, child in self.named_children():
            yield child

    def _named_members(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        # PyTorch's order: walk the modules parents-first, and within each
        # module its own entries in registration order. Shared objects (a
        # weight used by two layers) are reported once.
        seen: set[int] = set()
        walk = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_prefix, module in walk:
            for name, value in module.__dict__[store].items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted_name, parameter)``, e.g. ``("layer1.0.conv1.weight", p)``."""
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """All parameters of this module and (with ``recurse``) its descendants."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted_name, array)`` for every buffer that is not None."""
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        """All buffers (raw arrays) of this module and (with ``recurse``) its descendants."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call ``fn(m)`` on every descendant, children first, then on self; returns self.

        The usual way to apply a custom initialisation to a whole network.
        """
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- modes and gradients ------------------------------------------------------------

    def train(self, mode: bool = True) -> "Module":
        """Set ``training = mode`` on this module and all its descendants; returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) expects a bool, got {mode!r}")
        # Recurse through train() itself (not a flat loop) so that a subclass
        # overriding train() -- e.g. to keep a BN frozen -- is respected.
        object.__setattr__(self, "training", mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode for this subtree (same as ``train(False)``); returns self."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of all parameters.

        ``set_to_none=True`` (the default, as in PyTorch) drops the arrays, so
        the next backward allocates fresh ones and the optimiser can tell
        "no gradient" apart from "zero gradient"; ``False`` zeroes them in place.
        """
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad[...] = 0

    # -- device and dtype ------------------------------------------------------------

    def to(self, device: Any = None, dtype: Any = None) -> "Module":
        """Move parameters and buffers to ``device`` and/or cast them to ``dtype``, in place.

        Only floating arrays change dtype (integer buffers such as
        ``num_batches_tracked`` stay int64). Parameters keep their identity
        (their ``.data`` is replaced), so an optimiser built earlier still
        updates them. ``to(np.float64)`` is accepted as a dtype, like PyTorch.
        Returns self.
        """
        if device is not None and not isinstance(device, (str, backend.Device)):
            device, dtype = None, device if dtype is None else dtype
        dev = backend.device(device) if device is not None else None
        dt = None
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt.kind != "f":
                raise TypeError(f"Module.to() only casts to floating dtypes, got {dt}")

        def convert(array: Any) -> Any:
            if dev is not None:
                array = backend.to_device(array, dev)
            if dt is not None and array.dtype.kind == "f" and array.dtype != dt:
                array = array.astype(dt)
            return array

        for m in self.modules():
            for p in m._parameters.values():
                if p is None:
                    continue
                p.data = convert(p.data)
                if p.grad is not None:
                    p.grad = convert(p.grad)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = convert(b)
        return self

    def cpu(self) -> "Module":
        """Move parameters and buffers to the CPU; returns self."""
        return self.to(device="cpu")

    def cuda(self, index: int = 0) -> "Module":
        """Move parameters and buffers to CUDA device ``index``; returns self."""
        return self.to(device=f"cuda:{index}")

    def float(self) -> "Module":
        """Cast floating parameters and buffers to float32; returns self."""
        return self.to(dtype=np.float32)

    def double(self) -> "Module":
        """Cast floating parameters and buffers to float64 (gradient checks); returns self."""
        return self.to(dtype=np.float64)

    # -- saving and loading ------------------------------------------------------------

    def _state_entries(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(key, array)`` in state_dict order: per module, params, buffers, then children."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p.data
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                yield prefix + name, b
        for name, child in self._modules.items():
            if child is not None:
                yield from child._state_entries(prefix + name + ".")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Everything needed to restore the model: ``{dotted_name: NumPy array}``.

        Keys are PyTorch's (``"bn1.running_mean"``, ``"layer1.0.conv1.weight"``);
        values are copies on the CPU, so the dict can be saved with
        ``np.savez`` and is not changed by further training.
        """
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, array in self._state_entries():
            host = backend.to_device(array, backend.cpu)
            out[key] = host.copy() if host is array else host
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        Values may be NumPy/CuPy arrays, Tensors, or anything ``np.asarray``
        understands (a CPU ``torch.Tensor`` from ``torch_model.state_dict()``
        works). Each value is copied INTO the existing array, so parameters
        keep their dtype, device and identity (an optimiser stays attached).

        Everything is checked before anything is written: a shape mismatch
        always raises, and with ``strict=True`` so does any missing or
        unexpected key; one ``RuntimeError`` names every problem.
        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict expects a mapping of names to arrays, got {type(state_dict).__name__}")
        targets = dict(self._state_entries())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        problems: list[str] = []
        ready: list[tuple[Any, Any]] = []
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if isinstance(value, Tensor):
                value = value.data
            if not backend.is_array(value):
                try:
                    value = np.asarray(value)
                except Exception as exc:  # e.g. a torch tensor that still requires grad
                    problems.append(f"value for {key!r} cannot be read as an array ({type(exc).__name__}: {exc})")
                    continue
            if value.dtype.kind not in "biuf":
                problems.append(f"value for {key!r} has non-numeric dtype {value.dtype}")
                continue
            if tuple(value.shape) != tuple(target.shape):
                problems.append(
                    f"size mismatch for {key!r}: the state_dict has shape {tuple(value.shape)}, "
                    f"the module has shape {tuple(target.shape)}"
                )
                continue
            ready.append((target, value))
        if strict:
            if missing:
                problems.insert(
                    0, "missing keys (in the module, not in the state_dict): " + ", ".join(map(repr, missing))
                )
            if unexpected:
                problems.insert(
                    1 if missing else 0,
                    "unexpected keys (in the state_dict, not in the module): " + ", ".join(map(repr, unexpected)),
                )
        if problems:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n  " + "\n  ".join(problems)
            )
        for target, value in ready:
            # In-place copy: dtype and device of the target are kept (a float64
            # checkpoint loaded into a float32 model becomes float32).
            target[...] = backend.to_device(value, backend.device_of(target))
        for module in self.modules():
            module._state_loaded()
        return IncompatibleKeys(missing, unexpected)

    def _state_loaded(self) -> None:
        """Called on every submodule after :meth:`load_state_dict` wrote new values (for host-side caches)."""

    # -- printing ------------------------------------------------------------

    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_indent(repr(child), 2)}" for name, child in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(lines) == 1 and not child_lines:
            body = lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


class Sequential(Module):
    """A chain of modules applied in order; children are named ``"0"``, ``"1"``, ...

    ``Sequential(a, b, c)(x) == c(b(a(x)))``. Also accepts one ``OrderedDict``
    of named modules. Supports ``len``, iteration, integer indexing and slicing
    (a slice is a new Sequential sharing the same modules).
    """

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(modules):
                if not isinstance(module, Module):
                    raise TypeError(f"Sequential argument {i} is {type(module).__name__}, not a Module")
                self.add_module(str(i), module)

    def _index(self, idx: int) -> int:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for {type(self).__name__} of length {n}")
        return idx % n

    def __getitem__(self, idx: int | slice) -> Module:
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[self._index(idx)]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = list(self._modules.keys())[self._index(idx)]
        setattr(self, key, module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        """Add ``module`` at the end (named ``str(len(self))``); returns self."""
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: Any) -> Any:
        """Apply the children in order; shapes are whatever the chain produces."""
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleList(Module):
    """A list of modules that registers them (a plain Python list would hide them).

    Children are named ``"0"``, ``"1"``, ...; it has no ``forward``: the
    owner decides how to call its elements. Supports indexing, slicing, ``len``,
    iteration, ``append``, ``extend`` and ``insert``.
    """

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, idx: int) -> int:
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for ModuleList of length {n}")
        return idx % n

    def __getitem__(self, idx: int | slice) -> "Module | ModuleList":
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[str(self._index(idx))]

    def __setitem__(self, idx: int, module: Module) -> None:
        self.add_module(str(self._index(idx)), module)

    def __delitem__(self, idx: int) -> None:
        items = list(self._modules.values())
        del items[self._index(idx)]
        self._renumber(items)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def _renumber(self, items: list) -> None:
        self._modules.clear()
        for i, module in enumerate(items):
            self.add_module(str(i), module)

    def append(self, module: Module) -> "ModuleList":
        """Add ``module`` at the end; returns self."""
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append expects a Module, got {type(module).__name__}")
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        """Append each of ``modules``; returns self."""
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` and renumber the children."""
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.insert expects a Module, got {type(module).__name__}")
        items = list(self._modules.values())
        items.insert(index, module)
        self._renumber(items)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("ModuleList has no forward(); iterate over it and call its modules")
