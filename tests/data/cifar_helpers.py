"""Small helpers shared by the CIFAR-10 tests in ``tests/data/`` (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from minires.data import load_cifar10
from minires.data.release import BATCH_DIR

N = 20  # images per synthetic batch: small enough that every test stays fast


def load(root: Path, **kw):
    """``load_cifar10`` for a synthetic directory: N images per batch, never downloads."""
    kw.setdefault("examples_per_batch", N)
    kw.setdefault("download", False)
    return load_cifar10(root, **kw)


def make_archive(src_root: Path, archive: Path) -> str:
    """tar.gz ``src_root/cifar-10-batches-py`` like the official archive; return its md5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / BATCH_DIR, arcname=BATCH_DIR)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def listing(path: Path) -> list[str]:
    """Every file and directory under ``path``, relative to it, sorted."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
