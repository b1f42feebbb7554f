"""minires: a from-scratch NumPy/CuPy deep-learning framework about residual networks.

The layers, from the bottom up (lower layers never import higher ones)::

    backend      numpy or cupy, devices
    tensor       Tensor, the graph and backward()
    function     Function: forward/backward on raw arrays
    ops          elementwise, reductions, shape, matmul
    gradcheck    numerical gradient checking
    kernels      the hand-written hot spots (im2col/conv, batch norm, relu, ...)
    nn           functional ops, Module and layers, init
    optim        SGD and learning-rate schedules
    models       residual/plain blocks, the CIFAR and ImageNet ResNet families
    data         CIFAR-10: download, verify, load, augment, batch
    train        the training loop, recipes, checkpoints
    diagnostics  gradient norms, plain-versus-residual comparisons, plots

``minires.summary(model, input_shape)`` prints a per-layer table with
parameters and multiply-accumulates.
"""

from . import backend
from .backend import Device, default_device, device, get_array_module
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from .function import Context, Function
from .ops import (
    add, cat, clip, concatenate, div, exp, flatten, getitem, log, matmul, max, maximum, mean, mul, neg,
    pad, permute, pow, reshape, sigmoid, sqrt, stack, sub, sum, tanh, transpose,
)
from .gradcheck import GradcheckError, gradcheck, numerical_gradient
from . import nn, optim, models
from .summary import summary

__version__ = "0.1.0"
