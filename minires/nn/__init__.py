"""Neural-network building blocks: modules (layers), their functional forms, initialisation.

``minires.nn.functional`` holds the differentiable operations (``F.conv2d``,
``F.batch_norm``, ...); the classes here own parameters and state and call
them. ``minires.nn.init`` fills weights with well-scaled random values.
"""

from . import functional, init
from .activation import ReLU
from .conv import Conv2d
from .flatten import Flatten
from .linear import Identity, Linear
from .module import IncompatibleKeys, Module, ModuleList, Sequential
from .normalization import BatchNorm1d, BatchNorm2d
from .parameter import Parameter
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "functional", "init", "Parameter", "Module", "Sequential", "ModuleList", "IncompatibleKeys",
    "Conv2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "Linear", "Identity", "Flatten",
]
