"""A name -> constructor registry: ``create("resnet56")`` and ``names()``.

The command line and the experiment scripts refer to models by name; this
module is the one place that maps names to the functions that build them.
Constructors register themselves with the :func:`register` decorator where
they are defined (:mod:`minires.models.resnet`).
"""

from __future__ import annotations

from typing import Any, Callable

from .. import nn

__all__ = ["register", "create", "names"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` available as ``create(fn.__name__, ...)``."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def names() -> list[str]:
    """The registered model names, sorted (``resnet20``, ``resnet50``, ``plain56``, ...)."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` go to its constructor.

    >>> model = create("resnet56", shortcut="A", num_classes=10, seed=0)

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)
