"""Hypothesis strategies shared by the minires tests.

Import them in any test module (pytest puts ``tests/`` on ``sys.path``)::

    from strategies import arrays, broadcastable_shapes, shapes

Design choices, so that every helper can rely on them:

* Shapes are small (at most 3 axes of at most 4 elements by default). A
  gradient check costs two forward passes per input element, and the bugs they
  catch (a wrong axis, a missing broadcast sum, a dropped size-1 dim) show up on
  a 2 x 1 x 3 tensor as surely as on a big one. Shapes include 0-d (``()``) and
  size-1 axes on purpose.
* Array *values* are not drawn element by element by Hypothesis: a strategy
  draws a 32-bit seed and NumPy fills the array from it. That keeps examples
  fast, still reproducible (the seed is part of the failing example that
  Hypothesis prints), and gives genuinely random values (Hypothesis's own
  element strategies favour 0, 1 and boundary values, which are exactly the
  non-differentiable points of max, clip and maximum).
* Strategies that feed non-smooth operations keep values away from the kinks:
  :func:`distinct_arrays` (for ``max``: no ties), :func:`separated_pair` (for
  ``maximum``), :func:`arrays_away_from` (for ``clip``). Finite differences
  with ``eps = 1e-6`` straddle a kink only if a value lies within ``eps`` of it;
  the margins used here are far larger than that.

Every strategy returns plain NumPy arrays / Python values; tests wrap them in
``minires.Tensor`` (and in ``torch.tensor`` for the parity tests).
"""

from __future__ import annotations

from typing import Any, Sequence

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import strategies as st

__all__ = [
    "seeds",
    "shapes",
    "nonempty_shapes",
    "broadcastable_shapes",
    "matmul_shapes",
    "arrays",
    "positive_arrays",
    "nonzero_arrays",
    "distinct_arrays",
    "separated_pair",
    "arrays_away_from",
    "axes",
    "permutations",
    "reshape_targets",
    "basic_indices",
    "integer_array_indices",
    "pad_widths",
]

#: Default limits for drawn shapes: small enough for element-wise gradient checks.
MAX_DIMS = 3
MAX_SIDE = 4


def seeds() -> st.SearchStrategy[int]:
    """A seed for ``numpy.random.default_rng`` (also usable as ``gradcheck(seed=...)``)."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def shapes(min_dims: int = 0, max_dims: int = MAX_DIMS, min_side: int = 1, max_side: int = MAX_SIDE):
    """Array shapes (tuples of ints), 0-d ``()`` included when ``min_dims == 0``.

    Sides are at least 1 by default: empty tensors are a separate concern and
    would make most value checks vacuous.
    """
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def nonempty_shapes(max_dims: int = MAX_DIMS, max_side: int = MAX_SIDE):
    """Shapes with at least one axis (for ops that need an axis to work on)."""
    return shapes(min_dims=1, max_dims=max_dims, max_side=max_side)


def broadcastable_shapes(num_shapes: int = 2, min_dims: int = 0, max_dims: int = MAX_DIMS, max_side: int = MAX_SIDE):
    """A tuple of ``num_shapes`` shapes that broadcast together.

    They may differ in length (a (3,) against a (2, 1, 3)) and contain size-1
    axes that are stretched, which is what the backward pass of a broadcasting
    op must sum over. 0-d shapes (a scalar tensor) occur too.
    """
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side
    ).map(lambda b: b.input_shapes)


@st.composite
def matmul_shapes(draw, max_batch_dims: int = 2, max_side: int = MAX_SIDE):
    """Shapes ``(a_shape, b_shape)`` valid for ``a @ b``: ``(..., n, k)`` and ``(..., k, m)``.

    The batch axes (``...``) may be absent on either side, may differ in
    length and may contain size-1 axes, so both operands can be broadcast along
    the batch; ``max_batch_dims=0`` gives plain 2-D matrix products.
    """
    n, k, m = (draw(st.integers(1, max_side)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, min_dims=0, max_dims=max_batch_dims, max_side=3))
    return batch_a + (n, k), batch_b + (k, m)


@st.composite
def arrays(draw, shape: Any, low: float = -2.0, high: float = 2.0, dtype: Any = np.float64):
    """A random array of ``shape`` (a tuple or a strategy of tuples), uniform in ``[low, high)``."""
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(seeds()))
    return rng.uniform(low, high, size=shape).astype(dtype)


def positive_arrays(shape: Any, low: float = 0.5, high: float = 2.0, dtype: Any = np.float64):
    """Arrays with values in ``[low, high)``, ``low > 0``: safe inputs for log, sqrt and non-integer powers."""
    if low <= 0:
        raise ValueError(f"positive_arrays needs low > 0, got {low}")
    return arrays(shape, low=low, high=high, dtype=dtype)


@st.composite
def nonzero_arrays(draw, shape: Any, low: float = 0.5, high: float = 2.0, dtype: Any = np.float64):
    """Arrays whose magnitudes lie in ``[low, high)`` with random signs: safe divisors."""
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(seeds()))
    magnitude = rng.uniform(low, high, size=shape)
    sign = rng.choice(np.array([-1.0, 1.0]), size=shape)
    # np.asarray: for shape () the product is a NumPy scalar, and callers expect arrays.
    return np.asarray(magnitude * sign, dtype=dtype)


@st.composite
def distinct_arrays(draw, shape: Any, gap: float = 0.1, dtype: Any = np.float64):
    """Arrays whose elements are all different, any two at least ``0.8 * gap`` apart.

    For ``max`` (and argmax-like ops): with no ties the maximum is a smooth
    function of its inputs, so finite differences and the analytic gradient
    must agree exactly. Values: a random permutation of ``0, gap, 2 gap, ...``,
    shifted to be centred on zero, plus jitter of less than ``0.1 * gap``.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(seeds()))
    size = int(np.prod(shape))
    values = rng.permutation(size) * gap - (size - 1) * gap / 2
    values = values + rng.uniform(-0.1 * gap, 0.1 * gap, size=size)
    return values.reshape(shape).astype(dtype)


@st.composite
def separated_pair(draw, shape_a: Any, shape_b: Any, margin: float = 0.03):
    """Two arrays that broadcast together and differ by at least ``margin`` everywhere.

    For ``maximum(a, b)``: no position is a tie, so the gradient goes entirely
    to one side. Built on two interleaved grids (``a`` on odd multiples of 0.05,
    ``b`` on even ones, both jittered by less than 0.01), so every broadcast
    pair differs by more than 0.03 without any rejection sampling.
    """
    if isinstance(shape_a, st.SearchStrategy):
        shape_a = draw(shape_a)
    if isinstance(shape_b, st.SearchStrategy):
        shape_b = draw(shape_b)
    rng = np.random.default_rng(draw(seeds()))
    a = (2 * rng.integers(-10, 10, size=shape_a) + 1) * 0.05 + rng.uniform(-0.01, 0.01, size=shape_a)
    b = 2 * rng.integers(-10, 10, size=shape_b) * 0.05 + rng.uniform(-0.01, 0.01, size=shape_b)
    assert np.min(np.abs(np.subtract(a, b)), initial=np.inf) > margin  # guaranteed by the grids
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


@st.composite
def arrays_away_from(draw, shape: Any, points: Sequence[float], margin: float = 0.05,
                     low: float = -2.0, high: float = 2.0):
    """Uniform arrays in ``[low, high)`` with no value within ``margin`` of any of ``points``.

    For ``clip(x, lo, hi)``: values too close to a bound are pushed ``2 *
    margin`` further out on their own side, so each element is clearly inside or
    clearly outside and the gradient is exactly 1 or 0 there.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = np.random.default_rng(draw(seeds()))
    x = rng.uniform(low, high, size=shape)
    for p in points:
        close = np.abs(x - p) < margin
        x = np.where(close, p + np.where(x >= p, 2 * margin, -2 * margin), x)
    for p in points:  # pushing away from one point must not have landed next to another
        assert np.all(np.abs(x - p) >= margin), "points closer together than 4 * margin are not supported"
    return np.asarray(x, dtype=np.float64)


@st.composite
def axes(draw, ndim: int):
    """An ``axis`` argument for a reduction over an ``ndim``-d array.

    One of: ``None`` (all axes), a single int (possibly negative), or a tuple of
    distinct ints (possibly negative, any order, possibly empty). For ``ndim == 0``
    it is one of ``None``, ``0``, ``-1`` and ``()``: like PyTorch, minires accepts
    axis 0 / -1 on a 0-d tensor (and reduces nothing); NumPy rejects them, so a
    NumPy reference should use ``axis=None`` there.

    Note the empty tuple: minires follows NumPy (``axis=()`` reduces nothing),
    whereas ``torch.sum(x, dim=())`` reduces everything. Parity tests against
    PyTorch must translate it.
    """
    if ndim == 0:
        return draw(st.sampled_from([None, 0, -1, ()]))
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
    # Negative spellings of the same axes must work too.
    return tuple(ax - ndim if draw(st.booleans()) else ax for ax in chosen)


def permutations(ndim: int):
    """A permutation of ``range(ndim)`` as a tuple (an ``axes`` argument for permute)."""
    return st.permutations(list(range(ndim))).map(tuple)


@st.composite
def reshape_targets(draw, shape: tuple):
    """A shape with the same number of elements as ``shape`` (possibly containing one ``-1``).

    Built from the prime factors of the size, shuffled and regrouped, with some
    1s inserted, so it exercises genuine re-layouts, not only the identity.
    """
    size = int(np.prod(shape))
    factors = []
    n = size
    p = 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    factors = draw(st.permutations(factors)) if factors else []
    groups = draw(st.integers(0, max(len(factors), 1)))
    target = [1] * groups if groups else []
    for f in factors:
        if target and draw(st.booleans()):
            target[draw(st.integers(0, len(target) - 1))] *= f
        else:
            target.append(f)
    ones = draw(st.integers(0, 2))
    for _ in range(ones):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return tuple(target)


def _positive_steps(index: Any) -> Any:
    """Replace negative-step slices by positive ones (PyTorch rejects negative steps)."""
    def fix(part):
        if isinstance(part, slice) and part.step is not None and part.step < 0:
            return slice(None, None, -part.step)
        return part

    if isinstance(index, tuple):
        return tuple(fix(p) for p in index)
    return fix(index)


def basic_indices(shape: tuple, allow_negative_step: bool = True):
    """A NumPy *basic* index for an array of ``shape``: ints, slices, ``None``, ``...``.

    Basic indexing never selects an element twice. With
    ``allow_negative_step=False`` (for comparisons with PyTorch, which has no
    negative steps) reversed slices become forward ones.
    """
    strategy = hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True)
    return strategy if allow_negative_step else strategy.map(_positive_steps)


@st.composite
def integer_array_indices(draw, shape: tuple, max_len: int = 6):
    """An *advanced* index for an array of ``shape`` (``len(shape) >= 1``) with repeated entries.

    Returns ``(index, repeats)`` where ``index`` is one of:

    * a 1-D int array (indexes axis 0), or
    * a tuple ``(slice(None),) * axis + (int_array,)`` (indexes one later axis), or
    * a tuple of int arrays, one per leading axis (NumPy's zipped "fancy" index).

    Index arrays may hold negative entries. ``repeats`` is True when some
    element is selected more than once, which forces the backward pass to
    scatter-ADD (``x[[0, 0]]`` must receive the sum of both gradients).
    Roughly half of the drawn indices force repeats by drawing more entries
    than the axis has elements.
    """
    if len(shape) == 0:
        raise ValueError("integer array indexing needs at least one axis")
    rng = np.random.default_rng(draw(seeds()))
    kind = draw(st.sampled_from(["axis0", "one_axis", "zipped"]))

    def entries(n: int, length: int) -> np.ndarray:
        idx = rng.integers(0, n, size=length)
        negative = rng.random(length) < 0.3
        return np.where(negative, idx - n, idx).astype(np.int64)

    force_repeat = draw(st.booleans())
    if kind == "zipped" and len(shape) >= 1:
        k = draw(st.integers(1, len(shape)))
        length = draw(st.integers(1, max_len))
        arrays_ = [entries(n, length) for n in shape[:k]]
        if force_repeat and length >= 2:
            for a in arrays_:
                a[-1] = a[0]  # the same element, picked twice
        index = tuple(arrays_)
        flat = np.ravel_multi_index(tuple(a % n for a, n in zip(arrays_, shape[:k])), shape[:k])
    else:
        axis = 0 if kind == "axis0" else draw(st.integers(0, len(shape) - 1))
        n = shape[axis]
        length = draw(st.integers(n + 1, n + 3)) if force_repeat else draw(st.integers(1, max_len))
        arr = entries(n, length)
        index = arr if axis == 0 and kind == "axis0" else (slice(None),) * axis + (arr,)
        flat = arr % n
    repeats = len(np.unique(flat)) < len(flat)
    return index, repeats


@st.composite
def pad_widths(draw, ndim: int, max_pad: int = 2):
    """``numpy.pad``-style widths: one ``(before, after)`` pair of non-negative ints per axis."""
    return tuple((draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad))) for _ in range(ndim))
