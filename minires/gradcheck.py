"""Numerical gradient checking: is a hand-written backward pass right?

For a function ``y = f(x)`` and a random upstream gradient ``g`` (same shape
as ``y``), the scalar ``L(x) = <f(x), g> = sum(f(x) * g)`` has gradient
``dL/dx = J^T g``: exactly what backward computes when it is seeded with
``g``. Its numerical estimate, element by element, is the central difference

    dL/dx_i  ~=  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

whose error shrinks like eps^2. Two details make the check trustworthy:

* float64 only: in float32 the rounding error of L (about 1e-7 relative)
  divided by 2 eps swamps the difference being measured.
* a RANDOM ``g``, never all ones. With ``g = 1`` the check only tests the
  gradient of ``sum(f(x))``, and for some functions that is zero whatever the
  backward pass does: a batch-normalised output sums to ``N * beta``
  independently of the input, softmax rows sum to one. A broken backward would
  pass.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .tensor import Tensor, no_grad

__all__ = ["gradcheck", "GradcheckError", "numerical_gradient"]


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree (the message shows the worst element)."""


def _scalar_objective(fn: Callable, inputs: Sequence[Tensor], g: Any) -> float:
    with no_grad():
        out = fn(*inputs)
    return float((out.data * g).sum())


def numerical_gradient(fn: Callable, inputs: Sequence[Tensor], which: int, g: Any, eps: float = 1e-6) -> Any:
    """Central-difference estimate of d<fn(*inputs), g>/d inputs[which], same shape as that input."""
    x = inputs[which].data
    if not (x.flags.c_contiguous and x.flags.writeable):
        # Same values in an array we may perturb in place through a flat view.
        inputs[which].data = x = np.array(x, order="C")
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: perturbing it perturbs the input
    grad_flat = grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i].item()
        flat[i] = original + eps
        plus = _scalar_objective(fn, inputs, g)
        flat[i] = original - eps
        minus = _scalar_objective(fn, inputs, g)
        flat[i] = original
        grad_flat[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int | None = None,
) -> bool:
    """Compare backward() of ``fn`` against central differences, for every element.

    Args:
        fn: ``fn(*inputs) -> Tensor``; must be deterministic (same inputs, same output).
        inputs: float64 Tensors on the CPU. Those with ``requires_grad=True`` are
            checked; the others are held constant.
        eps: finite-difference step.
        atol, rtol: element ``i`` passes when
            ``|analytic_i - numeric_i| <= atol + rtol * |numeric_i|``.
        seed: seed of the random upstream gradient (None: a fresh one).

    Returns:
        True when every element passes.

    Raises:
        TypeError: an input is not a float64 Tensor.
        GradcheckError: some element fails; the message names the input,
            the worst element's index and both values.
    """
    inputs = list(inputs)
    for k, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck input {k} is a {type(t).__name__}, not a Tensor")
        if t.requires_grad and t.dtype != np.float64:
            raise TypeError(
                f"gradcheck input {k} has dtype {t.dtype}; use float64 (x.double()): float32 rounding "
                "swamps finite differences"
            )
        if t.device.type != "cpu" and t.requires_grad:
            # Finite differences perturb elements one at a time; do that on host copies.
            raise TypeError(f"gradcheck input {k} is on {t.device}; pass CPU tensors (GPU kernels: compare to CPU)")
    checked = [k for k, t in enumerate(inputs) if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, nothing to check")

    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned dtype {out.dtype}; the whole computation must be float64")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(out.shape)
    for k in checked:
        inputs[k].grad = None
    out.backward(g)

    for k in checked:
        t = inputs[k]
        analytic = t.grad if t.grad is not None else np.zeros(t.shape)
        numeric = numerical_gradient(fn, inputs, k, g, eps)
        error = np.abs(analytic - numeric)
        allowed = atol + rtol * np.abs(numeric)
        if not np.all(error <= allowed):
            excess = np.where(np.isnan(error), np.inf, error - allowed)
            worst = np.unravel_index(int(np.argmax(excess)), t.shape) if t.ndim else ()
            bad = int(np.sum(~(error <= allowed)))
            raise GradcheckError(
                f"gradcheck failed for input {k} (shape {t.shape}): {bad} of {t.size} elements differ; "
                f"worst at index {tuple(int(i) for i in worst)}: analytic {float(analytic[worst]):.10g} vs "
                f"numeric {float(numeric[worst]):.10g} (|diff| {float(error[worst]):.3g}, "
                f"allowed {float(allowed[worst]):.3g})"
            )
    return True
