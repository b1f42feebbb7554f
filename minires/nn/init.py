"""Weight initialisation: fill a tensor IN PLACE with well-scaled random values.

Why the scale matters: a layer computes ``y = W x`` with ``fan_in`` inputs per
output. If the weights have variance ``s^2`` and the inputs variance ``v``,
each output has variance ``fan_in * s^2 * v``. Stack many layers and that
factor is raised to the depth: above 1 the activations explode, below 1 they
vanish. He et al. (2015, "Delving Deep into Rectifiers") choose
``s^2 = 2 / fan_in`` for ReLU networks: ReLU zeroes half of a symmetric input,
halving the second moment, and the 2 puts it back, so the variance is carried
unchanged from layer to layer. In general ``std = gain / sqrt(fan)``, where
``gain`` (:func:`calculate_gain`) undoes what the nonlinearity does to the
variance. ``mode="fan_out"`` preserves the variance of the gradients in the
backward pass instead.

Randomness: every function takes ``generator=`` (a ``numpy.random.Generator``).
Without one it uses this module's default generator, which
:func:`manual_seed` resets, so ``init.manual_seed(0)`` before building a
model makes its initial weights reproducible. Values are drawn on the CPU in
float64 and then cast and copied to the tensor's dtype and device, so the
same seed gives the same weights (up to rounding) on every backend.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from ..tensor import Tensor

__all__ = [
    "manual_seed", "seeded_generator", "default_generator", "calculate_gain", "fan_in_and_fan_out",
    "uniform_", "normal_", "constant_", "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_",
]

# Unseeded until manual_seed() is called, so independent runs differ unless
# the user asks for reproducibility (the trainer seeds it from its config).
_generator = np.random.default_rng()


def seeded_generator(seed: int) -> np.random.Generator:
    """A new generator started from ``seed``, a non-negative integer (checked, so the error says "seed")."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the default generator used when ``generator=None``; returns it."""
    global _generator
    _generator = seeded_generator(seed)
    return _generator


def default_generator() -> np.random.Generator:
    """The generator used when an init function gets ``generator=None``."""
    return _generator


def _resolve(generator: Any) -> np.random.Generator:
    if generator is None:
        return _generator
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator


def _check_tensor(tensor: Any, fn: str, floating: bool) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{fn} expects a minires Tensor or Parameter, got {type(tensor).__name__}")
    if floating and tensor.dtype.kind != "f":
        raise TypeError(f"{fn} needs a floating-point tensor, got dtype {tensor.dtype}")


def _write(tensor: Tensor, values: np.ndarray) -> Tensor:
    """Copy host ``values`` into ``tensor.data`` in place, keeping dtype and device."""
    values = values.astype(tensor.dtype, copy=False)
    tensor.data[...] = backend.to_device(values, tensor.device)
    return tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The factor by which to scale the std so a layer + nonlinearity keeps the variance.

    linear / conv / sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu with negative slope ``param`` (default 0.01): sqrt(2 / (1 + param^2));
    selu: 3/4 (PyTorch's values).
    """
    linear_like = ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid")
    if nonlinearity in linear_like:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"negative slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight: inputs and outputs feeding one unit.

    For a Linear weight ``(out, in)``: ``(in, out)``. For a conv weight
    ``(C_out, C_in, kH, kW)``: ``(C_in*kH*kW, C_out*kH*kW)`` -- each output
    pixel sees ``C_in*kH*kW`` inputs. Needs at least 2 dimensions.
    """
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """Fill ``tensor`` (any shape) with values drawn from U(a, b); returns it."""
    _check_tensor(tensor, "uniform_", floating=True)
    if not a <= b:
        raise ValueError(f"uniform_ needs a <= b, got a={a}, b={b}")
    return _write(tensor, _resolve(generator).uniform(a, b, size=tensor.shape))


def normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: np.random.Generator | None = None
) -> Tensor:
    """Fill ``tensor`` (any shape) with values drawn from N(mean, std^2); returns it."""
    _check_tensor(tensor, "normal_", floating=True)
    if not std >= 0:
        raise ValueError(f"normal_ needs std >= 0, got {std}")
    return _write(tensor, _resolve(generator).normal(mean, std, size=tensor.shape))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill ``tensor`` with ``val``; returns it."""
    _check_tensor(tensor, "constant_", floating=False)
    tensor.data[...] = val
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    """Fill ``tensor`` with 0; returns it."""
    return constant_(tensor, 0)


def ones_(tensor: Tensor) -> Tensor:
    """Fill ``tensor`` with 1; returns it."""
    return constant_(tensor, 1)


def _kaiming_std(tensor: Tensor, a: float, mode: str, nonlinearity: str, fn: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{fn}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if a != 0 and nonlinearity != "leaky_relu":
        # PyTorch silently ignores `a` here; a learner passing it surely meant it to count.
        raise ValueError(f"{fn}: a={a} is only used with nonlinearity='leaky_relu', got {nonlinearity!r}")
    fan_in, fan_out = fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"{fn}: cannot initialise a tensor with zero {mode} (shape {tensor.shape})")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_normal_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """He initialisation from N(0, std^2) with ``std = gain / sqrt(fan)``; returns ``tensor``.

    Args:
        tensor: a weight with at least 2 dims, e.g. ``(C_out, C_in, kH, kW)``.
        a: negative slope of the leaky ReLU that follows (0 for ReLU).
        mode: ``"fan_in"`` keeps the forward variance, ``"fan_out"`` the backward one.
        nonlinearity: ``"leaky_relu"`` (PyTorch's default; with ``a=0`` its gain
            is sqrt(2), exactly ReLU's) or any name :func:`calculate_gain` knows.
        generator: the random source (default: the module generator).

    The paper's CIFAR ResNets use ``kaiming_normal_(w, mode="fan_out",
    nonlinearity="relu")`` on every conv, as torchvision does.
    """
    _check_tensor(tensor, "kaiming_normal_", floating=True)
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_normal_")
    return _write(tensor, _resolve(generator).normal(0.0, std, size=tensor.shape))


def kaiming_uniform_(
    tensor: Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: np.random.Generator | None = None,
) -> Tensor:
    """He initialisation from U(-bound, bound), ``bound = gain * sqrt(3 / fan)``; returns ``tensor``.

    U(-b, b) has variance b^2/3, so this has the same std as
    :func:`kaiming_normal_`. Conv2d and Linear use it by default with
    ``a=sqrt(5)``, which makes ``bound = 1/sqrt(fan_in)`` (PyTorch's default).
    Arguments as in :func:`kaiming_normal_`.
    """
    _check_tensor(tensor, "kaiming_uniform_", floating=True)
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_uniform_")
    return _write(tensor, _resolve(generator).uniform(-bound, bound, size=tensor.shape))
