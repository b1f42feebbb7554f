"""minires: a from-scratch NumPy/CuPy deep-learning framework about residual networks.

The layers, from the bottom up; each imports only layers above it in this list::

    backend      numpy or cupy, devices
    dispatch     which implementation of a kernel runs (reference or fast set, per device)
    tensor       Tensor and backward()
    function     Function: forward/backward on raw arrays
    ops          the operators (+, @, sum, reshape, ...) as Functions
    gradcheck    numerical gradient checking
    kernels      the mathematics of the hot spots (im2col/conv, batch norm, relu, ...)
    nn           functional ops (kernels looked up through dispatch), Module and layers, init
    optim        SGD and learning-rate schedules
    models       residual/plain blocks, the CIFAR and ImageNet ResNet families
    data         CIFAR-10: download and verify, decode, cache, augment, batch
    diagnostics  gradient norms, plain-versus-residual comparisons, plots
    distributed  data parallel over MPI: process group, DistributedDataParallel, sampler, SyncBatchNorm
    train        the training step, the Trainer (one process or one rank of many), recipes, checkpoints
    cli          the ``minires`` command

One cycle is deliberate: ``tensor`` and ``ops`` need each other. A Tensor's
operators (``a + b``) are Functions defined in ``ops``, and every Function
makes Tensors; ``tensor`` imports ``ops`` at its very end, once Tensor
exists, to install the operators. The speed plug-ins sit beside this stack
and are imported by ``dispatch`` on first use: :mod:`minires.fast` (CPU)
and :mod:`minires.cuda` (GPU) register kernels for the ``fast`` set.

``minires.summary(model, input_shape)`` prints a per-layer table with
parameters and multiply-accumulates; ``minires.use_kernels("reference")``
runs a block of code on the reference kernels.
"""

# ruff: noqa: I001, E402  (the order matters: thread limits before NumPy loads, then tensor, see "One cycle" above)
from . import process_threads

process_threads.limit_threads_if_launched()  # under mpiexec -n N: cores / N threads each, set before NumPy starts
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from . import backend
from .backend import Device, default_device, device, get_array_module
from .dispatch import get_kernels, set_kernels, use_kernels
from .function import Context, Function
from .ops import (
    add, cat, clip, concatenate, div, exp, flatten, getitem, log, matmul, max, maximum, mean, mul, neg,
    pad, permute, pow, reshape, sigmoid, sqrt, stack, sub, sum, tanh, transpose,
)
from .gradcheck import GradcheckError, gradcheck, numerical_gradient
from . import models, nn, optim
from .summary import summary

__all__ = [
    "Tensor", "enable_grad", "is_grad_enabled", "no_grad", "tensor", "backend", "Device", "default_device", "device",
    "get_array_module", "get_kernels", "set_kernels", "use_kernels", "Context", "Function", "add", "cat", "clip",
    "concatenate", "div", "exp", "flatten", "getitem", "log", "matmul", "max", "maximum", "mean", "mul", "neg", "pad",
    "permute", "pow", "reshape", "sigmoid", "sqrt", "stack", "sub", "sum", "tanh", "transpose", "GradcheckError",
    "gradcheck", "numerical_gradient", "models", "nn", "optim", "summary",
]

__version__ = "0.1.0"
