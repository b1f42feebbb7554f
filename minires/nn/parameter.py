"""Parameter: a Tensor that a Module learns.

A :class:`Parameter` is an ordinary leaf :class:`~minires.Tensor` with
``requires_grad=True``. The only thing that makes it special is its type:
when a Parameter is assigned as an attribute of a :class:`~minires.nn.Module`
(``self.weight = Parameter(...)``), the module registers it, so that
``module.parameters()`` finds it for the optimiser and ``state_dict()`` saves
it. A plain Tensor assigned the same way is just an attribute (for example a
cached constant) and is neither trained nor saved.
"""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor

__all__ = ["Parameter"]


class Parameter(Tensor):
    """A trainable leaf tensor that Modules register automatically.

    Args:
        data: an array (kept as is, no copy), a Tensor (its array is shared,
            like ``torch.nn.Parameter(t)``), or Python data (floats become
            float32). Must be floating point.
        requires_grad: ``True`` by default; ``False`` freezes the parameter
            (the optimiser then skips it because its ``.grad`` stays None).

    Shapes: any; ``Conv2d`` uses ``(C_out, C_in, kH, kW)``, ``Linear``
    ``(out_features, in_features)``, biases and BN affine terms ``(C,)``.
    """

    # Tensor declares __slots__; an empty __slots__ here keeps Parameters as
    # lean as Tensors (no per-instance __dict__).
    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data)
        if self.data.dtype.kind != "f":
            raise TypeError(f"a Parameter must hold floating-point data, got dtype {self.data.dtype}")
        self.requires_grad_(requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
