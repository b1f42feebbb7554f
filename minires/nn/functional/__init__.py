"""Differentiable operations on Tensors, PyTorch's ``torch.nn.functional`` names.

Each is a :class:`~minires.Function` wrapping a hand-written kernel from
:mod:`minires.kernels`, plus argument checking that names the offending value::

    conv2d, im2col, col2im           convolution and its matrix-product view
    relu                             activation
    max_pool2d, avg_pool2d,
    adaptive_avg_pool2d              pooling (adaptive: global average only)
    linear, flatten                  the classifier head
    batch_norm                       batch normalisation
    batch_norm_relu                  relu(batch_norm(x) + residual), fused (training)
    cross_entropy, accuracy          the loss, and a metric
"""

from .activation import relu
from .conv import col2im, conv2d, im2col
from .linear import flatten, linear
from .loss import accuracy, cross_entropy
from .normalization import batch_norm, batch_norm_relu
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = [
    "conv2d",
    "im2col",
    "col2im",
    "relu",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "linear",
    "flatten",
    "batch_norm",
    "batch_norm_relu",
    "cross_entropy",
    "accuracy",
]
