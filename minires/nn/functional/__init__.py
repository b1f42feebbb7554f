"""Differentiable operations on Tensors, PyTorch's ``torch.nn.functional`` names.

Each is a :class:`~minires.Function` wrapping a hand-written kernel (the
reference in :mod:`minires.kernels`, or a fast one: :mod:`minires.dispatch`),
plus argument checking that names the offending value::

    conv2d, im2col, col2im           convolution and its matrix-product view
    relu                             activation
    max_pool2d, avg_pool2d,
    adaptive_avg_pool2d              pooling (adaptive: global average only)
    linear, flatten                  the classifier head
    batch_norm                       batch normalisation
    cross_entropy, accuracy          the loss, and a metric
"""

from .activation import relu
from .conv import col2im, conv2d, im2col
from .linear import flatten, linear
from .loss import accuracy, cross_entropy
from .normalization import batch_norm
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
    "cross_entropy",
    "accuracy",
]
