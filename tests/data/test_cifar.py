"""load_cifar10 as a whole (minires.data.cifar): its arguments, a missing dataset, the real data.

The other steps have their own test files: test_release, test_download,
test_archive, test_decode, test_cache. The last test here loads the real
dataset when ``MINIRES_DATA`` points at it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cifar_helpers import load
from synthetic_cifar import CLASS_NAMES

from minires.data import CIFARNotFoundError, load_cifar10
from minires.data.release import BATCH_DIR, CIFAR10_MD5, CIFAR10_URL


def test_missing_dataset_without_download_says_where_to_put_it(tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(CIFARNotFoundError) as info:
        load_cifar10(empty, download=False)
    message = str(info.value)
    for needed in (str(empty), "cifar-10-batches-py", "data_batch_1", "test_batch", "batches.meta",
                   "cifar-10-python.tar.gz", CIFAR10_URL, CIFAR10_MD5, "MINIRES_DATA", "--data-dir"):
        assert needed in message, (needed, message)
    assert not empty.exists()  # download=False must not create anything


@pytest.mark.parametrize("bad", ["all", 0, True, 2.5])
def test_bad_examples_per_batch_argument(root, bad):
    with pytest.raises(ValueError, match="examples_per_batch"):
        load(root, cache=False, examples_per_batch=bad)


def _real_data_dir() -> Path:
    value = os.environ.get("MINIRES_DATA", "").strip()
    if not value:
        pytest.skip("real CIFAR-10 test skipped: set MINIRES_DATA to the directory that contains "
                    "cifar-10-batches-py/ (CI uses MINIRES_DATA=../shared/data)")
    path = Path(value).expanduser().resolve()
    if not (path / BATCH_DIR).is_dir():
        pytest.skip(f"real CIFAR-10 test skipped: MINIRES_DATA={value!r} has no cifar-10-batches-py/ "
                    f"(looked in {path})")
    return path


@pytest.mark.slow
def test_real_cifar10_counts_labels_and_dtypes():
    data = load_cifar10(_real_data_dir(), download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10000, 3, 32, 32) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), np.full(10, 1000))
    assert data.classes == CLASS_NAMES
    # Real photos, not noise or zeros: every image has some contrast.
    assert (data.test_images.reshape(10000, -1).std(axis=1) > 1).all()
