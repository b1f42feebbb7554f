"""The official CIFAR-10 release: where it comes from, what it holds, where minires keeps it.

CIFAR-10 (Krizhevsky, 2009) is 60,000 colour images of 32x32 pixels in 10
classes: 50,000 for training, 10,000 for testing, 6,000 per class. minires
reads the *official python release*, ``cifar-10-python.tar.gz``, which
extracts to a directory ``cifar-10-batches-py/`` holding seven pickles:

    data_batch_1 ... data_batch_5   10,000 training images each
    test_batch                      the 10,000 test images
    batches.meta                    the class names (b'label_names')

Where the data lives (first match wins):

1. the ``data_dir`` argument (what ``minires train --data-dir`` passes),
2. the environment variable ``MINIRES_DATA``,
3. ``~/.cache/minires``.

The other data modules take their names and sizes from here, so a fact
about the release is written down once.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "ARCHIVE_NAME",
    "BATCH_DIR",
    "TRAIN_FILES",
    "TEST_FILE",
    "META_FILE",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "EXAMPLES_PER_BATCH",
    "ENV_VAR",
    "resolve_data_dir",
]

# Official release (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"

IMAGE_SHAPE = (3, 32, 32)  # channels (R, G, B), height, width
NUM_CLASSES = 10
EXAMPLES_PER_BATCH = 10_000

ENV_VAR = "MINIRES_DATA"


def resolve_data_dir(data_dir: "str | os.PathLike | None" = None) -> Path:
    """The directory that holds (or will hold) ``cifar-10-batches-py/``.

    ``data_dir`` if given, else ``$MINIRES_DATA`` if set and non-empty, else
    ``~/.cache/minires``. ``~`` is expanded and relative paths are made
    absolute against the current directory, so the answer does not change if
    the process later changes directory. The directory need not exist.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(ENV_VAR, "").strip() or None
    if data_dir is None:
        data_dir = Path.home() / ".cache" / "minires"
    return Path(os.path.abspath(Path(data_dir).expanduser()))
