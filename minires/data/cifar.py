"""Load CIFAR-10: find it, fetch it if needed, decode it or read it from the cache.

:func:`load_cifar10` is the one call a training script needs. It ties the
other modules together, in this order:

1. :mod:`minires.data.release`: where the data lives (``data_dir``,
   ``$MINIRES_DATA`` or ``~/.cache/minires``);
2. :mod:`minires.data.download` and :mod:`minires.data.archive`: if
   ``cifar-10-batches-py/`` is not there, verify (or download and verify)
   ``cifar-10-python.tar.gz`` and unpack it safely;
3. :mod:`minires.data.cache`: the verified ``.npy`` copies, if present;
4. :mod:`minires.data.decode`: otherwise, decode the pickled batches (and
   refill the cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archive import extract_archive
from .cache import cache_dir_from_option, read_cache, source_manifest, write_cache
from .decode import decode_batches, read_cases_per_batch
from .download import download_cifar10, verify_archive
from .errors import CIFARNotFoundError, how_to_get_it
from .release import (
    ARCHIVE_NAME,
    BATCH_DIR,
    CIFAR10_MD5,
    CIFAR10_URL,
    EXAMPLES_PER_BATCH,
    META_FILE,
    resolve_data_dir,
)

__all__ = ["CIFAR10", "load_cifar10"]


@dataclass
class CIFAR10:
    """CIFAR-10 in memory.

    Attributes:
        train_images: ``(50000, 3, 32, 32)`` uint8, NCHW, RGB.
        train_labels: ``(50000,)`` int64 in ``0..9``.
        test_images: ``(10000, 3, 32, 32)`` uint8.
        test_labels: ``(10000,)`` int64.
        classes: the 10 class names, index = label (``'airplane'`` ... ``'truck'``).
        source: the ``cifar-10-batches-py`` directory the arrays came from.
        from_cache: whether the arrays were read from the ``.npy`` cache.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list
    source: Path | None = None
    from_cache: bool = False

    def __repr__(self) -> str:
        return (
            f"CIFAR10(train={self.train_images.shape[0]}, test={self.test_images.shape[0]}, "
            f"classes={len(self.classes)}, source={str(self.source)!r}, from_cache={self.from_cache})"
        )


def _ensure_batches(data_dir: Path, download: bool, url: str, md5: str, progress: bool) -> Path:
    """Return ``data_dir/cifar-10-batches-py``, extracting or downloading it if needed."""
    batch_dir = data_dir / BATCH_DIR
    if batch_dir.is_dir():
        return batch_dir
    archive = data_dir / ARCHIVE_NAME
    if archive.is_file():
        verify_archive(archive, md5)
    elif download:
        archive = download_cifar10(data_dir, url=url, md5=md5, progress=progress)
    else:
        raise CIFARNotFoundError(f"CIFAR-10 not found in {data_dir} (download=False). " + how_to_get_it(data_dir))
    return extract_archive(archive, data_dir)


def _examples_per_batch(value: "int | str | None", batch_dir: Path) -> int | None:
    """The ``examples_per_batch`` argument checked, with ``"meta"`` replaced by the declared count."""
    if value == "meta":
        return read_cases_per_batch(batch_dir / META_FILE)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    ):
        raise ValueError(f"examples_per_batch must be a positive int, 'meta' or None, got {value!r}")
    return value


def _cached_or_decoded(batch_dir: Path, examples: int | None, cache_dir: Path | None) -> tuple[dict, bool]:
    """The arrays and whether they came from the cache; decoding refills the cache."""
    manifest = None
    if cache_dir is not None:
        try:
            manifest = source_manifest(batch_dir, examples)
        except OSError:
            manifest = None  # a source file is missing: decoding below reports it properly
    if manifest is not None:
        arrays = read_cache(cache_dir, manifest)
        if arrays is not None:
            return arrays, True
    arrays = decode_batches(batch_dir, examples)
    if manifest is not None:
        write_cache(cache_dir, manifest, arrays)
    return arrays, False


def load_cifar10(
    data_dir: "str | os.PathLike | None" = None,
    download: bool = True,
    *,
    cache: "bool | str | os.PathLike" = True,
    examples_per_batch: int | str | None = EXAMPLES_PER_BATCH,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> CIFAR10:
    """Load CIFAR-10 as uint8 NCHW arrays (downloading and caching as needed).

    Args:
        data_dir: directory containing ``cifar-10-batches-py/`` (see
            :func:`resolve_data_dir` for the default).
        download: download the official archive if neither the directory nor
            ``cifar-10-python.tar.gz`` is present. With ``False`` a missing
            dataset raises :class:`CIFARNotFoundError`.
        cache: ``True``: keep decoded ``.npy`` copies in
            :func:`~minires.data.cache.cache_dir_for`; a path: keep them
            there; ``False``: always decode. Every cached file is checked
            against the SHA-256 its manifest recorded, and the labels against
            ``0..9``. Cache problems (unwritable, corrupt, an older format
            without checksums) are reported as a warning naming the file, and
            loading falls back to decoding (rewriting the cache): the cache
            can make loading faster, never break it or change the data.
        examples_per_batch: images each batch file must hold: the official
            10,000 unless you made smaller files (the tests do); ``"meta"``:
            the count ``batches.meta`` declares (``num_cases_per_batch``,
            10,000 in the official files), for every file including the test
            batch; ``None`` accepts any count.
        url, md5: where to download from and the checksum to insist on.
        progress: show a tqdm bar while downloading.

    Returns:
        A :class:`CIFAR10` with ``train_images`` ``(50000, 3, 32, 32)`` uint8,
        ``train_labels`` ``(50000,)`` int64, ``test_images``
        ``(10000, 3, 32, 32)`` uint8, ``test_labels`` ``(10000,)`` int64 and
        the 10 ``classes``.

    Raises:
        CIFARFormatError: a batch file is missing, truncated, corrupt or holds
            the wrong shapes/labels (the message names the file and the fix).
        CIFARReadError: a batch file exists but cannot be read (permissions,
            a directory in its place, an I/O error).
        CIFARNotFoundError, CIFARDownloadError: no data and no way to get it.
    """
    data_dir = resolve_data_dir(data_dir)
    batch_dir = _ensure_batches(data_dir, download, url, md5, progress)
    examples = _examples_per_batch(examples_per_batch, batch_dir)
    cache_dir = cache_dir_from_option(cache, batch_dir)
    arrays, from_cache = _cached_or_decoded(batch_dir, examples, cache_dir)
    return CIFAR10(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        classes=arrays["classes"],
        source=batch_dir,
        from_cache=from_cache,
    )
