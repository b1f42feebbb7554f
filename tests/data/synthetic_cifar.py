"""Write a small, fake CIFAR-10 directory in the official python layout, for tests.

The files have exactly the structure of the real release (see
``minires/data/release.py`` and ``minires/data/decode.py``):
``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``,
``test_batch`` and ``batches.meta``, each a protocol-2 pickle of a dict with
bytes keys. Only the number of images per batch differs
(load them with ``load_cifar10(root, examples_per_batch=n)``), and the pixels
are random bytes.

Import it from a test with ``from synthetic_cifar import write_synthetic_cifar``
(tests in ``tests/data/``) or ``from data.synthetic_cifar import
write_synthetic_cifar`` (elsewhere under ``tests/``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def batch_dict(images: np.ndarray, labels: np.ndarray, batch_label: str, prefix: str) -> dict:
    """The dict stored in one official batch file, from ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` labels."""
    n = images.shape[0]
    return {
        b"batch_label": batch_label.encode("ascii"),
        b"labels": [int(v) for v in labels],  # a plain list of ints, as in the official files
        b"data": np.ascontiguousarray(images).reshape(n, 3 * 32 * 32),  # R plane, G plane, B plane
        b"filenames": [f"{prefix}_{i:05d}.png".encode("ascii") for i in range(n)],
    }


def write_pickle(path: "str | os.PathLike", obj: object) -> None:
    """Pickle ``obj`` to ``path`` with protocol 2, the protocol of the official files."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_synthetic_cifar(
    root: "str | os.PathLike",
    n_train_per_batch: int = 100,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Create ``root/cifar-10-batches-py/`` with random images and labels.

    Args:
        root: the data directory (created if needed); pass it as ``data_dir``.
        n_train_per_batch: images in each of the 5 training batches.
        n_test: images in the test batch.
        seed: fixes the pixels and labels.

    Returns:
        ``root`` as a ``Path``. The images/labels written can be recovered
        independently of minires with :func:`expected_arrays`.

    Labels cycle through the 10 classes in a shuffled order, so every class is
    present whenever a batch holds at least 10 images.
    """
    root = Path(root)
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10)
        return images, labels

    for i, name in enumerate(TRAIN_FILES, start=1):
        images, labels = make(n_train_per_batch)
        write_pickle(batch_dir / name, batch_dict(images, labels, f"training batch {i} of 5", "synthetic_train"))
    images, labels = make(n_test)
    write_pickle(batch_dir / "test_batch", batch_dict(images, labels, "testing batch 1 of 1", "synthetic_test"))
    meta = {
        b"num_cases_per_batch": n_train_per_batch,
        b"label_names": [name.encode("ascii") for name in CLASS_NAMES],
        b"num_vis": 3 * 32 * 32,
    }
    write_pickle(batch_dir / "batches.meta", meta)
    return root


def expected_arrays(root: "str | os.PathLike") -> dict:
    """Read the files back with plain ``pickle`` (no minires code): the reference for load tests.

    Returns ``{"train_images", "train_labels", "test_images", "test_labels"}``
    with images ``(N, 3, 32, 32)`` uint8 and labels int64.
    """
    batch_dir = Path(root) / "cifar-10-batches-py"

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(batch_dir / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"])
        return data.reshape(-1, 3, 32, 32), np.asarray(d[b"labels"], dtype=np.int64)

    train = [read(name) for name in TRAIN_FILES]
    test_images, test_labels = read("test_batch")
    return {
        "train_images": np.concatenate([t[0] for t in train]),
        "train_labels": np.concatenate([t[1] for t in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
