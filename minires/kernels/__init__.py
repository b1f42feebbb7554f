"""The mathematics of the hot spots, on raw NumPy/CuPy arrays (no Tensor, no autograd).

One concept per module, each written once for NumPy and CuPy through the
array module (``xp = get_array_module(x)``), with the derivation in its
docstring. This is the ``reference`` kernel set: what a learner reads, and
what runs under ``MINIRES_KERNELS=reference`` (:mod:`minires.dispatch`).

    im2col         im2col / col2im: a convolution as one matrix product; why col2im sums
    conv           conv2d forward/backward: im2col, one matrix product, col2im
    batch_norm     batch normalisation, training and evaluation, and its backward derived
    relu           relu forward/backward
    pooling        max / average / global-average pooling through im2col
    cross_entropy  softmax cross-entropy

:mod:`minires.nn.functional` wraps these in :class:`~minires.Function` classes;
the fast versions live in :mod:`minires.fast` (CPU) and :mod:`minires.cuda` (GPU).
"""
