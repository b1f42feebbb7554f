"""The fast kernel set for the CPU: the same numbers as :mod:`minires.kernels`, faster.

Importing this package registers its kernels with :mod:`minires.dispatch`
(which imports it the first time the fast set is used). README.md in this
folder explains each trick and keeps the measurements.

    threads      a kernel thread pool (run_chunks), BLAS held to one thread
    memory       page-aligned arrays, per-thread scratch buffers
    layout       channels-last NCHW arrays
    allocator    keep freed memory for reuse (glibc), for training loops
    conv         the chunked, threaded, channels-last convolution
    batch_norm   batch norm in fewer passes, and the fused relu(bn(x) + r)
    relu         ReLU on the kernel threads, keeping channels-last
    pooling      pooling by taps instead of im2col
    fused        the fused Function and the blocks' fused forwards
    training     what a CPU training loop turns on (gradient sums, BLAS, allocator)
"""

from . import batch_norm, conv, fused, pooling, relu, training  # noqa: F401  (registration)
from .training import training_context

__all__ = ["training_context"]
