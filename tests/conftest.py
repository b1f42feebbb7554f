"""Shared pytest configuration for the minires test suite.

Hypothesis profiles
-------------------
Property tests draw random shapes and values with ``hypothesis``. Every test
function in the suite runs under one of these profiles, chosen with the
environment variable ``HYPOTHESIS_PROFILE`` (default ``minires``):

* ``minires`` (default): 15 examples per test, no deadline. Gradient checks
  evaluate the function twice per input element, so a few dozen examples per op
  is the most the suite can afford on 2 cores; ``deadline=None`` because the
  first call of a test pays for imports and would trip a timing deadline.
* ``thorough``: 200 examples, for a long local run when an op has changed
  (``HYPOTHESIS_PROFILE=thorough pytest tests/test_ops_gradcheck.py``).
* ``ci``: like ``minires`` but derandomized, so a CI failure reproduces exactly.

A test may still lower its own count with ``@settings(max_examples=...)``.

Shared strategies (shapes, broadcastable shape pairs, arrays with safe values,
axes, indices) live in ``tests/strategies.py``; import them with
``from strategies import shapes, broadcastable_shapes, ...`` (pytest puts
``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "minires",
    max_examples=15,
    deadline=None,
    print_blob=True,
    # Drawing a seed and then building arrays with NumPy is cheap, but a gradient
    # check per example is not: that is expected, not a health problem.
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minires"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy random generator seeded from the test's name.

    Deterministic per test (a failure reproduces on the next run) yet different
    between tests, so no two tests share the same "random" data by accident.
    """
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)
