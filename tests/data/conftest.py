"""Fixtures for the CIFAR-10 tests: a small synthetic dataset and a fake home directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from cifar_helpers import N
from synthetic_cifar import write_synthetic_cifar


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A data directory holding a synthetic ``cifar-10-batches-py/`` with N images per batch."""
    return write_synthetic_cifar(tmp_path / "data", n_train_per_batch=N, n_test=N, seed=1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A fake home directory, so the fallback cache never touches the real one."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h
