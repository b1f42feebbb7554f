"""Matrix multiplication, 2-D and batched.

For ``C = A @ B`` with A (..., n, k) and B (..., k, m):
dA = dC @ B^T  and  dB = A^T @ dC, each summed over any batch axes that were
broadcast (a weight matrix shared by every item of a batch collects the
gradient of all of them).
"""

from __future__ import annotations

from ..function import Function
from .broadcast import unbroadcast


def _swap_last(x):
    return x.swapaxes(-1, -2)


class MatMul(Function):
    promotes = True  # an integer operand takes the float operand's dtype, as in ``+``

    @classmethod
    def apply(cls, a, b):  # type: ignore[override]
        sa, sb = tuple(getattr(a, "shape", ())), tuple(getattr(b, "shape", ()))
        if len(sa) < 2 or len(sb) < 2:
            raise ValueError(
                f"matmul needs tensors with at least 2 dimensions, got shapes {sa} and {sb} "
                "(reshape a vector to (1, n) or (n, 1))"
            )
        if sa[-1] != sb[-2]:
            raise ValueError(
                f"matmul shape mismatch: {sa} @ {sb}: the last dimension of the first ({sa[-1]}) "
                f"must equal the second-to-last of the second ({sb[-2]})"
            )
        for x, y in zip(reversed(sa[:-2]), reversed(sb[:-2])):
            if x != y and x != 1 and y != 1:
                raise ValueError(f"matmul batch dimensions {sa[:-2]} and {sb[:-2]} cannot be broadcast together")
        return super().apply(a, b)

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = unbroadcast(grad @ _swap_last(b), a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(_swap_last(a) @ grad, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb
