"""Data for minires: CIFAR-10 on disk -> uint8 arrays -> augmented float32 mini-batches.

One concept per module, in the order the data flows:

* :mod:`minires.data.release`: what the official CIFAR-10 release holds and
  where minires looks for it (:func:`resolve_data_dir`);
* :mod:`minires.data.errors`: what can go wrong, and the fix each error suggests;
* :mod:`minires.data.download`: fetch the archive and check its MD5;
* :mod:`minires.data.archive`: unpack it without letting it write outside
  the data directory;
* :mod:`minires.data.decode`: the pickled batches -> uint8 NCHW images and
  int64 labels, through an unpickler that cannot run code;
* :mod:`minires.data.cache`: the decoded arrays as ``.npy`` files, verified
  by SHA-256 and rebuilt when damaged;
* :mod:`minires.data.cifar`: :func:`load_cifar10`, which ties the above together;
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

from .archive import extract_archive
from .cifar import CIFAR10, load_cifar10
from .download import download_cifar10
from .errors import (
    CIFARDownloadError,
    CIFARError,
    CIFARFormatError,
    CIFARNotFoundError,
    CIFARReadError,
    UnsafeArchiveError,
)
from .loader import DataLoader, split_validation, subset
from .release import CIFAR10_MD5, CIFAR10_URL, resolve_data_dir
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
