"""Data for minires: CIFAR-10 on disk -> uint8 arrays -> augmented float32 mini-batches.

Three modules, one concept each:

* :mod:`minires.data.cifar`: find, download, verify, decode and cache CIFAR-10
  (:func:`load_cifar10` returns uint8 NCHW arrays and int64 labels);
* :mod:`minires.data.transforms`: batch-wise, vectorised random crop, flip and
  normalisation that run on whichever device holds the batch;
* :mod:`minires.data.loader`: :class:`DataLoader` (seeded shuffling,
  ``drop_last``, prefetching, resumable state), :func:`split_validation`
  (the paper's 45k/5k split) and :func:`subset` (the first K examples).

Typical use::

    from minires.data import load_cifar10, DataLoader, standard_augment
    cifar = load_cifar10()                          # or load_cifar10("path/to/data")
    train = DataLoader(cifar.train_images, cifar.train_labels, batch_size=128,
                       augment=standard_augment, device="cuda", prefetch=2)
    test = DataLoader(cifar.test_images, cifar.test_labels, batch_size=1000, shuffle=False)
"""

from .cifar import (
    CIFAR10,
    CIFAR10_MD5,
    CIFAR10_URL,
    CIFARDownloadError,
    CIFARError,
    CIFARFormatError,
    CIFARNotFoundError,
    CIFARReadError,
    UnsafeArchiveError,
    download_cifar10,
    extract_archive,
    load_cifar10,
    resolve_data_dir,
)
from .loader import DataLoader, split_validation, subset
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    channel_stats,
    hflip,
    normalize,
    random_crop,
    random_hflip,
    standard_augment,
    to_float,
)

__all__ = [
    "CIFAR10",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFARDownloadError",
    "CIFARError",
    "CIFARFormatError",
    "CIFARNotFoundError",
    "CIFARReadError",
    "UnsafeArchiveError",
    "DataLoader",
    "channel_stats",
    "download_cifar10",
    "extract_archive",
    "hflip",
    "load_cifar10",
    "normalize",
    "random_crop",
    "random_hflip",
    "resolve_data_dir",
    "split_validation",
    "standard_augment",
    "subset",
    "to_float",
]
