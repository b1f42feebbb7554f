"""The hand-written hot spots, on raw NumPy/CuPy arrays (no Tensor, no autograd).

One concept per module, each with a readable reference implementation and,
where it pays, a fast path that the layers use (tests check one against the
other and against PyTorch):

    im2col         im2col / col2im: a convolution as one matrix product; why col2im sums
    conv           conv2d forward/backward (reference, and the chunked channels-last fast path)
    relu           relu forward/backward
    pooling        max / average / global-average pooling
    batch_norm     batch normalisation
    cross_entropy  softmax cross-entropy
    aligned        page-aligned arrays: why a buffer's address changes the speed of a copy

:mod:`minires.nn.functional` wraps these in :class:`~minires.Function` classes.
"""
