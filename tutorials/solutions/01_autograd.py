"""Solutions to the "Your turn" cells of 01_autograd.ipynb.

Try the exercises in the notebook before reading these. Each definition below has
the name of the stub it solves; ``python tutorials/execute.py 01 --solutions DIR``
runs the notebook with these in place of the stubs (the tests do the same).
"""

import numpy as np

import minires


def neuron_gradients(x, w, b, t):
    """(dL/dx, dL/dw, dL/db) of L = (tanh(w x + b) - t)^2, by the chain rule, in NumPy."""
    z = w * x + b  # the forward pass
    a = np.tanh(z)
    dL_da = 2 * (a - t)        # d/da (a - t)^2
    dL_dz = dL_da * (1 - a**2)  # tanh'(z) = 1 - tanh(z)^2; shared by everything below z
    return dL_dz * w, dL_dz * x, dL_dz  # z = w x + b: dz/dx = w, dz/dw = x, dz/db = 1


class Softplus(minires.Function):
    """softplus(x) = log(1 + exp(x)), elementwise: any shape in, the same shape out."""

    @staticmethod
    def forward(ctx, x):
        xp = minires.get_array_module(x)
        ctx.save_for_backward(x)
        return xp.logaddexp(0, x)  # log(e^0 + e^x), computed without overflowing for large x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        xp = minires.get_array_module(x)
        sigmoid = 0.5 * (1 + xp.tanh(x / 2))  # = 1 / (1 + e^-x), but never overflows
        return grad * sigmoid                 # chain rule: upstream gradient times local derivative
