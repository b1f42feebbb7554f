"""CIFAR-10: find it, download and verify it, decode it, cache it.

CIFAR-10 (Krizhevsky, 2009) is 60,000 colour images of 32x32 pixels in 10
classes: 50,000 for training, 10,000 for testing, 6,000 per class. minires
reads the *official python release*, ``cifar-10-python.tar.gz``, which
extracts to a directory ``cifar-10-batches-py/`` holding seven pickles:

    data_batch_1 ... data_batch_5   10,000 training images each
    test_batch                      the 10,000 test images
    batches.meta                    the class names (b'label_names')

Each batch is a dict with ``b'data'`` (a 10000x3072 uint8 array: row i is
image i, its first 1024 bytes are the red plane in row-major order, then
green, then blue), ``b'labels'`` (10,000 ints in 0..9), ``b'batch_label'``
and ``b'filenames'``. Because the planes come one after the other, a plain
``reshape(N, 3, 32, 32)`` gives NCHW images without any copy.

Where the data lives (first match wins):

1. the ``data_dir`` argument (what ``minires train --data-dir`` passes),
2. the environment variable ``MINIRES_DATA``,
3. ``~/.cache/minires``.

That directory should contain ``cifar-10-batches-py/``; if it does not,
``load_cifar10`` extracts ``cifar-10-python.tar.gz`` found there, or
downloads it (with ``download=True``), checking the official MD5 before the
archive is used.

Decoding seven pickles takes about a second; loading ``.npy`` files takes a
fraction of that, so the decoded arrays are cached (see :func:`load_cifar10`).

Safety notes, because data files come from the internet:

* Pickles can run arbitrary code when loaded. The batch files are read with a
  restricted unpickler that only accepts the few NumPy functions needed to
  rebuild an array, so a tampered file fails to load instead of executing.
* A tar archive can contain members such as ``../../.bashrc`` or links that
  point outside the target directory. Every member is checked before
  anything is extracted, and Python's ``filter="data"`` is used as a second
  line of defence where available.
* The ``.npy`` cache is trusted only after every file matches the SHA-256
  its manifest recorded and the labels lie in ``0..9``; otherwise it is
  rebuilt from the batch files, with a warning naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_write

__all__ = [
    "CIFAR10",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "ARCHIVE_NAME",
    "BATCH_DIR",
    "TRAIN_FILES",
    "TEST_FILE",
    "META_FILE",
    "CIFARError",
    "CIFARFormatError",
    "CIFARReadError",
    "CIFARNotFoundError",
    "CIFARDownloadError",
    "UnsafeArchiveError",
    "resolve_data_dir",
    "load_cifar10",
    "download_cifar10",
    "extract_archive",
    "read_batch",
    "read_meta",
    "read_cases_per_batch",
    "file_md5",
    "fetch_url",
    "cache_dir_for",
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
# Bump when the cache layout changes, so old caches are rebuilt, not misread.
# Format 2 added a SHA-256 of every cached file to the manifest.
_CACHE_FORMAT = 2
_CACHE_DIR_NAME = "cifar-10-npy-cache"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class CIFARError(Exception):
    """Base class of every error this module raises on purpose."""


class CIFARFormatError(CIFARError, ValueError):
    """A batch file is missing, truncated, corrupt or has the wrong content."""


class CIFARReadError(CIFARError, OSError):
    """A file exists but the operating system would not let us read it (permissions, a
    directory in its place, an I/O error). Its content may be perfectly good."""


class CIFARNotFoundError(CIFARError, FileNotFoundError):
    """The dataset is not on disk and may not (or could not) be downloaded."""


class CIFARDownloadError(CIFARError, RuntimeError):
    """The download failed or its checksum did not match."""


class UnsafeArchiveError(CIFARError, ValueError):
    """A tar member would be written outside the extraction directory."""


def _how_to_get_it(data_dir: Path) -> str:
    """The instructions every 'data missing' message ends with."""
    return (
        f"Put the CIFAR-10 python release in {data_dir}: either the extracted directory "
        f"{data_dir / BATCH_DIR}/ (with {', '.join(TRAIN_FILES)}, {TEST_FILE}, {META_FILE}) "
        f"or the archive {data_dir / ARCHIVE_NAME} (md5 {CIFAR10_MD5}), downloaded from "
        f"{CIFAR10_URL} (page: https://www.cs.toronto.edu/~kriz/cifar.html). "
        f"Choose another directory with --data-dir or the {ENV_VAR} environment variable."
    )


def _redownload_advice(data_dir: Path) -> str:
    return (
        f"Delete {data_dir / BATCH_DIR} and load again to re-download, or fetch the official "
        f"archive {CIFAR10_URL} yourself and extract it into {data_dir}."
    )


# ---------------------------------------------------------------------------
# Where the data is
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The dataset object
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Download, verify, extract
# ---------------------------------------------------------------------------


def file_md5(path: "str | os.PathLike", chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (the archive is 163 MiB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_url(url: str, out: BinaryIO, progress: bool = True, chunk_size: int = 1 << 16) -> str:
    """Stream ``url`` into the open binary file ``out``; return the MD5 of what was written.

    Hashing while writing saves reading 163 MiB a second time. A tqdm bar
    shows progress (sized from Content-Length when the server sends it).
    ``file://`` URLs work too, which is how the tests exercise this path
    without a network. Network errors propagate (``urllib.error.URLError``,
    ``OSError``); :func:`download_cifar10` turns them into a clear message.
    """
    from tqdm.auto import tqdm  # imported here: only downloading needs it

    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"downloading {url.rsplit('/', 1)[-1]}", disable=not progress) as bar:
            for chunk in iter(lambda: response.read(chunk_size), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def download_cifar10(
    data_dir: "str | os.PathLike | None" = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Download the archive to ``data_dir/cifar-10-python.tar.gz`` and verify it.

    The bytes go to a temporary file in the same directory, which is renamed
    to the final name only after the MD5 matched; a mismatching download is
    deleted. So the final name only ever holds a complete, verified archive,
    even if the process is killed halfway (which can leave a hidden
    ``.cifar-10-python.tar.gz.*.part`` file behind: harmless, delete it).

    Returns the path of the archive. Raises :class:`CIFARDownloadError`
    (network failure, with instructions for an offline setup, or checksum
    mismatch).
    """
    data_dir = resolve_data_dir(data_dir)
    target = data_dir / ARCHIVE_NAME
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        out = tempfile.NamedTemporaryFile(prefix=f".{ARCHIVE_NAME}.", suffix=".part", dir=data_dir, delete=False)
    except OSError as exc:
        raise CIFARDownloadError(
            f"cannot write the download into {data_dir} ({exc}). " + _how_to_get_it(data_dir)
        ) from exc
    tmp = Path(out.name)
    try:
        with out:
            try:
                got = fetch_url(url, out, progress=progress)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise CIFARDownloadError(
                    f"could not download {url} ({type(exc).__name__}: {exc}). "
                    "If this machine is offline, download the archive elsewhere and copy it over. "
                    + _how_to_get_it(data_dir)
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        if got != md5:
            raise CIFARDownloadError(
                f"the file downloaded from {url} has md5 {got}, expected {md5}; it was deleted. "
                "The download was corrupted or the server sent something else: try again, or "
                + _how_to_get_it(data_dir)
            )
        os.replace(tmp, target)
    finally:
        # Whatever went wrong, never leave a partial or unverified download behind.
        if tmp.exists():
            tmp.unlink()
    return target


def _is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or inside it (both already absolute and normalised)."""
    return path == root or root in path.parents


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Raise :class:`UnsafeArchiveError` if extracting ``member`` could escape ``root``.

    ``root`` must be absolute and resolved. Paths are normalised lexically
    (``os.path.normpath``) because the files do not exist yet.
    """
    name = member.name
    parts = Path(name).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in parts or ".." in name.replace("\\", "/").split("/"):
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    dest = Path(os.path.normpath(root / name))
    if not _is_within(dest, root):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {root}")
    if member.issym() or member.islnk():
        link = member.linkname
        if os.path.isabs(link):
            raise UnsafeArchiveError(f"archive member {name!r} links to the absolute path {link!r}")
        # A symlink's target is relative to the link's own directory; a hard
        # link's target is a path inside the archive, relative to its root.
        base = dest.parent if member.issym() else root
        link_dest = Path(os.path.normpath(base / link))
        if not _is_within(link_dest, root):
            raise UnsafeArchiveError(f"archive member {name!r} links to {link!r}, outside {root}")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} is a device file or FIFO; refusing to extract it")


def extract_archive(archive: "str | os.PathLike", data_dir: "str | os.PathLike") -> Path:
    """Safely extract the CIFAR-10 archive into ``data_dir``; return the batch directory.

    Every member is checked first (:func:`_check_member`); one unsafe member
    rejects the whole archive before anything is written. Extraction goes to
    a temporary directory next to the target, and ``cifar-10-batches-py`` is
    moved into place only when complete, so an interrupted extraction never
    looks like a dataset.
    """
    archive = Path(archive)
    data_dir = Path(os.path.abspath(data_dir))
    final = data_dir / BATCH_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cifar-extract.", dir=data_dir)).resolve()
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, staging)
                if hasattr(tarfile, "data_filter"):
                    # Python >= 3.12 (and security backports): the standard library's
                    # own checks as a second line of defence.
                    tar.extractall(staging, members=members, filter="data")
                else:  # pragma: no cover - old Pythons; our own checks above still ran
                    tar.extractall(staging, members=members)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise CIFARFormatError(
                f"cannot extract {archive}: {type(exc).__name__}: {exc}. "
                f"Delete it and download it again from {CIFAR10_URL}."
            ) from exc
        except OSError as exc:
            # A full disk or a permission problem where we extract: the archive may be fine, so
            # no advice to delete it (a damaged gzip stream is BadGzipFile, caught above).
            raise CIFARReadError(
                f"cannot extract {archive} into {data_dir} ({type(exc).__name__}: {exc.strerror or exc}). "
                "The archive itself may be fine: check the free space and permissions there, then load again."
            ) from exc
        extracted = staging / BATCH_DIR
        if not extracted.is_dir():
            raise CIFARFormatError(
                f"{archive} does not contain a {BATCH_DIR}/ directory; it is not the CIFAR-10 "
                f"python release. Delete it and download {CIFAR10_URL}."
            )
        if final.exists():
            raise CIFARFormatError(f"{final} appeared while extracting; remove one of them and load again")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------
# Decoding the batch files
# ---------------------------------------------------------------------------


def _numpy_globals() -> dict:
    """The only globals a CIFAR pickle may reference, mapped to the real objects.

    Files pickled by NumPy 1.x (the official ones) name ``numpy.core``; NumPy
    2.x renamed it ``numpy._core``. Both spellings map to whatever this NumPy
    provides. ``_codecs.encode`` appears when Python 3 pickles bytes with
    protocol 2.
    """
    import codecs

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    frombuffer = getattr(core.numeric, "_frombuffer", None)
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        if frombuffer is not None:
            allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays, lists, dicts, ints and bytes, nothing else."""

    _allowed = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _numpy_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': a CIFAR batch only contains arrays, "
                "lists and strings"
            ) from None


def _cannot_read(path: Path, exc: OSError) -> CIFARReadError:
    """The error for a batch file the OS refuses to read: no advice to delete it."""
    return CIFARReadError(
        f"cannot read {path} ({type(exc).__name__}: {exc.strerror or exc}). The file itself may be "
        "fine: check that it is a regular file and that this user may read it (ls -l), then load again."
    )


def _unpickle(path: Path, data_dir: Path) -> dict:
    """Load one pickle as a dict with ``str`` keys.

    A file we cannot read -> :class:`CIFARReadError`; a file whose bytes do not
    decode -> :class:`CIFARFormatError`. The two get different advice on
    purpose: "delete it and download again" is right for a truncated file, but
    would throw away a good copy that merely has the wrong permissions.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CIFARFormatError(f"{path} is missing. " + _redownload_advice(data_dir)) from None
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    with f:
        try:
            # encoding="bytes": the official files were written by Python 2;
            # its str objects (the pixel data among them) come back as bytes.
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except OSError as exc:
            # The disk or OS failed while reading; that says nothing about the bytes themselves.
            raise _cannot_read(path, exc) from exc
        except Exception as exc:  # truncated -> EOFError/UnpicklingError; garbage -> anything
            raise CIFARFormatError(
                f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}); the file is "
                "truncated or corrupt. " + _redownload_advice(data_dir)
            ) from exc
    if not isinstance(obj, dict):
        raise CIFARFormatError(
            f"{path} holds a {type(obj).__name__}, expected a dict. " + _redownload_advice(data_dir)
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def read_batch(
    path: "str | os.PathLike", examples: int | None = EXAMPLES_PER_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch file into ``(images, labels)``.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.
        examples: how many images the batch must hold (10,000 in the official
            release; ``None`` accepts any count, for hand-made subsets).

    Returns:
        images: ``(N, 3, 32, 32)`` uint8, NCHW.
        labels: ``(N,)`` int64 in ``0..9``.

    Raises :class:`CIFARFormatError` naming the file and the problem.
    """
    path = Path(path)
    data_dir = path.parent.parent
    batch = _unpickle(path, data_dir)
    fix = _redownload_advice(data_dir)
    for key in ("data", "labels"):
        if key not in batch:
            raise CIFARFormatError(f"{path} has no '{key}' entry (keys: {sorted(batch)}). " + fix)
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise CIFARFormatError(
            f"{path}: 'data' must be a uint8 array, got {type(data).__name__} "
            f"{getattr(data, 'dtype', '')}. " + fix
        )
    per_image = int(np.prod(IMAGE_SHAPE))
    if data.ndim != 2 or data.shape[1] != per_image:
        raise CIFARFormatError(f"{path}: 'data' has shape {data.shape}, expected (N, {per_image}). " + fix)
    if examples is not None and data.shape[0] != examples:
        raise CIFARFormatError(f"{path}: holds {data.shape[0]} images, expected {examples}. " + fix)
    try:
        labels = np.asarray(batch["labels"])
    except (TypeError, ValueError) as exc:
        raise CIFARFormatError(f"{path}: 'labels' is not a list of integers ({exc}). " + fix) from exc
    if labels.dtype.kind not in "iu":
        # Refuse floats or strings instead of truncating them to some integer.
        raise CIFARFormatError(f"{path}: 'labels' must be integers, got dtype {labels.dtype}. " + fix)
    labels = labels.astype(np.int64)
    if labels.shape != (data.shape[0],):
        raise CIFARFormatError(
            f"{path}: 'labels' has shape {labels.shape}, expected ({data.shape[0]},) to match 'data'. " + fix
        )
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CIFARFormatError(
            f"{path}: label {int(labels[first])} at index {first} is outside 0..{NUM_CLASSES - 1}. " + fix
        )
    # R, G and B planes are stored one after the other, each row-major:
    # exactly the memory order of an (N, 3, 32, 32) array, so this is a view.
    images = data.reshape((data.shape[0],) + IMAGE_SHAPE)
    return images, labels


def read_meta(path: "str | os.PathLike") -> list:
    """The 10 class names from ``batches.meta``, as ``str``, index = label."""
    path = Path(path)
    meta = _unpickle(path, path.parent.parent)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise CIFARFormatError(
            f"{path}: 'label_names' should be a list of {NUM_CLASSES} names, got {names!r}. "
            + _redownload_advice(path.parent.parent)
        )
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def read_cases_per_batch(path: "str | os.PathLike") -> int:
    """``num_cases_per_batch`` from ``batches.meta``: how many images every batch file declares it holds."""
    path = Path(path)
    meta = _unpickle(path, path.parent.parent)
    count = meta.get("num_cases_per_batch")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise CIFARFormatError(
            f"{path}: 'num_cases_per_batch' should be a positive integer, got {count!r}. "
            + _redownload_advice(path.parent.parent)
        )
    return int(count)


def _decode_all(batch_dir: Path, examples: int | None) -> dict:
    """Read and check all seven files; return the arrays and class names."""
    classes = read_meta(batch_dir / META_FILE)
    parts = [read_batch(batch_dir / name, examples) for name in TRAIN_FILES]
    test_images, test_labels = read_batch(batch_dir / TEST_FILE, examples)
    return {
        "train_images": np.concatenate([p[0] for p in parts]),
        "train_labels": np.concatenate([p[1] for p in parts]),
        "test_images": np.ascontiguousarray(test_images),
        "test_labels": test_labels,
        "classes": classes,
    }


# ---------------------------------------------------------------------------
# The .npy cache
# ---------------------------------------------------------------------------
#
# Layout: <cache dir>/{train_images,train_labels,test_images,test_labels}.npy
# and manifest.json. The manifest records the size and mtime_ns of every source
# file; the cache is used only if they all still match, so replacing a batch
# file invalidates it. The manifest is written last and removed first: it is
# the "commit" marker, so a half-written cache is never read.
#
# The manifest also records the SHA-256 of every .npy file, checked on every
# read. Without it, a few flipped bits in a .npy file (a bad disk, a careless
# edit) load without complaint: NumPy checks the header, not the numbers, and
# a label of 3355443201 only fails much later, deep inside the loss. On any
# mismatch the cache is reported and rebuilt from the batches.
#
# Cost, measured on the full cache (185 MB) on a 2-core development machine,
# files in the OS page cache: SHA-256 takes 0.15 s (1.2 GB/s, as the CPU has
# SHA instructions; blake2b took 0.34 s there), np.load alone 0.05 s. So a
# cached load takes about 0.2 s instead of 0.05 s: still a tenth of the ~2 s
# that decoding the pickles costs, and paid once per process.

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _mode_allows_write(directory: Path) -> bool:
    """Whether ``directory`` exists, is writable, and its permission bits say so.

    ``os.access`` alone is not enough: root passes it on a directory whose
    mode is r-x, and a directory someone marked read-only (a shared dataset)
    should not be written to, even by root.
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(directory, os.W_OK)


def cache_dir_for(batch_dir: "str | os.PathLike") -> Path:
    """Where the decoded arrays of ``batch_dir`` are cached.

    Next to the batches (``<data_dir>/cifar-10-npy-cache``) when that
    directory is writable; otherwise (a read-only shared dataset) under
    ``~/.cache/minires/cifar-10-npy-cache/<key>``, where ``key`` is a hash of
    the absolute source path, so two datasets never share a cache.
    """
    batch_dir = Path(os.path.abspath(batch_dir))
    data_dir = batch_dir.parent
    if _mode_allows_write(data_dir):
        return data_dir / _CACHE_DIR_NAME
    key = hashlib.sha256(str(batch_dir).encode("utf-8")).hexdigest()[:16]
    return Path.home() / ".cache" / "minires" / _CACHE_DIR_NAME / key


def _source_stats(batch_dir: Path) -> dict:
    stats = {}
    for name in (META_FILE,) + TRAIN_FILES + (TEST_FILE,):
        st = (batch_dir / name).stat()
        stats[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stats


def _manifest_for(batch_dir: Path, examples: int | None) -> dict:
    return {
        "format": _CACHE_FORMAT,
        "source": str(batch_dir),
        "examples_per_batch": examples,
        "files": _source_stats(batch_dir),
    }


class _StaleCache(Exception):
    """The cache cannot be trusted and will be rebuilt; the message says why, for the user."""


def _sha256(f: BinaryIO, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of an open binary file from its current position to the end, read in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(chunk_size), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _check_arrays(arrays: dict, examples: int | None, cache_dir: Path) -> None:
    """Raise :class:`_StaleCache` unless ``arrays`` look like CIFAR-10.

    Images must be ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 in
    ``0..9`` (with ``N = 5 * examples`` for training and ``examples`` for the
    test set, when ``examples`` is given). A checksum proves the file is what
    was written; this proves what was written makes sense. It costs a min and
    a max over 60,000 labels: microseconds.
    """
    for part, batches in (("train", len(TRAIN_FILES)), ("test", 1)):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        where = cache_dir / f"{part}_images.npy"
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise _StaleCache(
                f"{where} holds a {images.dtype} array of shape {images.shape}, expected (N, 3, 32, 32) uint8"
            )
        n = images.shape[0]
        if examples is not None and n != batches * examples:
            raise _StaleCache(f"{where} holds {n} images, expected {batches * examples}")
        where = cache_dir / f"{part}_labels.npy"
        if labels.dtype != np.int64 or labels.shape != (n,):
            raise _StaleCache(
                f"{where} holds a {labels.dtype} array of shape {labels.shape}, expected ({n},) int64"
            )
        if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            first = int(np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))[0])
            raise _StaleCache(
                f"{where} holds label {int(labels[first])} at index {first}, outside 0..{NUM_CLASSES - 1}"
            )


def _read_cache(cache_dir: Path, expected: dict) -> dict | None:
    """The cached arrays if the cache is complete, verified and matches ``expected``.

    Returns None, silently, when there is no cache or its sources changed
    (the normal reasons to decode again). Raises :class:`_StaleCache` when
    the cache is there but must not be trusted: an older format without
    checksums, a file whose SHA-256 differs from the manifest, or contents
    that are not CIFAR-10 (see :func:`_check_arrays`).
    """
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict):
        raise _StaleCache(f"{manifest_path} holds a {type(manifest).__name__}, expected a JSON object")
    if manifest.get("format") != _CACHE_FORMAT:
        raise _StaleCache(
            f"{manifest_path} has cache format {manifest.get('format')!r}, written by another version of "
            f"minires; this one writes format {_CACHE_FORMAT}, which records a checksum of every file"
        )
    if any(manifest.get(k) != v for k, v in expected.items()):
        return None  # sources changed (or another dataset): decode again
    checksums = manifest.get("sha256")
    unchecked = [name for name in _ARRAYS if not isinstance(checksums, dict) or name not in checksums]
    if unchecked:
        raise _StaleCache(
            f"{manifest_path} records no checksum for {', '.join(n + '.npy' for n in unchecked)}; "
            "a cache that cannot be verified is not used"
        )
    classes = manifest.get("classes")
    if not isinstance(classes, list) or len(classes) != NUM_CLASSES or not all(isinstance(c, str) for c in classes):
        raise _StaleCache(f"{manifest_path}: 'classes' should be {NUM_CLASSES} names, got {classes!r}")
    out = {"classes": list(classes)}
    for name in _ARRAYS:
        path = cache_dir / f"{name}.npy"
        # Hash and load through the same open file, so the bytes checked are the bytes loaded.
        with open(path, "rb") as f:
            got = _sha256(f)
            if got != checksums[name]:
                # 12 hex digits are plenty to tell two hashes apart in a message.
                raise _StaleCache(
                    f"{path} has SHA-256 {got[:12]}..., but {manifest_path.name} recorded "
                    f"{str(checksums[name])[:12]}...: the file was damaged or changed after it was written"
                )
            f.seek(0)
            array = np.load(f, allow_pickle=False)
        shape, dtype = manifest["arrays"][name]
        if list(array.shape) != shape or str(array.dtype) != dtype:
            raise _StaleCache(
                f"{path} holds a {array.dtype} array of shape {list(array.shape)}, "
                f"{manifest_path.name} says {dtype} {shape}"
            )
        out[name] = array
    _check_arrays(out, expected.get("examples_per_batch"), cache_dir)
    return out


def _write_cache(cache_dir: Path, manifest: dict, arrays: dict) -> None:
    """Save ``arrays`` as .npy files plus ``manifest`` (the source stats taken BEFORE decoding,
    so a file replaced while we were decoding makes the cache stale, not wrong)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    # Invalidate first: between here and the final rename, readers see no cache.
    if manifest_path.exists():
        manifest_path.unlink()
    checksums = {}
    for name in _ARRAYS:
        path = cache_dir / f"{name}.npy"
        atomic_write(path, lambda f, a=arrays[name]: np.save(f, a, allow_pickle=False))
        # Hash the file as it lies on disk (header included): exactly what _read_cache will hash.
        with open(path, "rb") as f:
            checksums[name] = _sha256(f)
    manifest = dict(manifest)
    manifest["classes"] = list(arrays["classes"])
    manifest["arrays"] = {name: [list(arrays[name].shape), str(arrays[name].dtype)] for name in _ARRAYS}
    manifest["sha256"] = checksums
    text = json.dumps(manifest, indent=1).encode("utf-8")
    atomic_write(manifest_path, lambda f: f.write(text))


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def _ensure_batches(data_dir: Path, download: bool, url: str, md5: str, progress: bool) -> Path:
    """Return ``data_dir/cifar-10-batches-py``, extracting or downloading it if needed."""
    batch_dir = data_dir / BATCH_DIR
    if batch_dir.is_dir():
        return batch_dir
    archive = data_dir / ARCHIVE_NAME
    if archive.is_file():
        # Placed there by the user (our own downloads are verified before they get this name).
        try:
            got = file_md5(archive)
        except OSError as exc:
            raise _cannot_read(archive, exc) from exc
        if got != md5:
            raise CIFARFormatError(
                f"{archive} has md5 {got}, expected {md5}: it is incomplete or not the official "
                f"archive. Delete it and download it again from {CIFAR10_URL}."
            )
    elif download:
        archive = download_cifar10(data_dir, url=url, md5=md5, progress=progress)
    else:
        raise CIFARNotFoundError(f"CIFAR-10 not found in {data_dir} (download=False). " + _how_to_get_it(data_dir))
    return extract_archive(archive, data_dir)


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
        cache: ``True``: keep decoded ``.npy`` copies in :func:`cache_dir_for`;
            a path: keep them there; ``False``: always decode. Every cached
            file is checked against the SHA-256 its manifest recorded, and the
            labels against ``0..9``. Cache problems (unwritable, corrupt, an
            older format without checksums) are reported as a warning naming
            the file, and loading falls back to decoding (rewriting the cache):
            the cache can make loading faster, never break it or change the data.
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
    if examples_per_batch == "meta":
        examples_per_batch = read_cases_per_batch(batch_dir / META_FILE)
    elif examples_per_batch is not None and (
        isinstance(examples_per_batch, bool) or not isinstance(examples_per_batch, (int, np.integer))
        or examples_per_batch < 1
    ):
        raise ValueError(f"examples_per_batch must be a positive int, 'meta' or None, got {examples_per_batch!r}")

    cache_dir = None
    if cache is True:
        cache_dir = cache_dir_for(batch_dir)
    elif cache not in (False, None):
        cache_dir = Path(os.path.abspath(Path(cache).expanduser()))

    arrays = None
    manifest = None
    if cache_dir is not None:
        try:
            manifest = _manifest_for(batch_dir, examples_per_batch)
        except OSError:
            manifest = None  # a source file is missing: decoding below reports it properly
    if manifest is not None:
        try:
            arrays = _read_cache(cache_dir, manifest)
        except _StaleCache as exc:
            warnings.warn(f"not using the CIFAR-10 cache: {exc}. "
                          "Decoding the batches and rewriting the cache.")
            arrays = None
        except Exception as exc:
            warnings.warn(f"ignoring the unreadable CIFAR-10 cache in {cache_dir} ({type(exc).__name__}: {exc}); "
                          "decoding the batches and rewriting the cache")
            arrays = None
    from_cache = arrays is not None
    if arrays is None:
        arrays = _decode_all(batch_dir, examples_per_batch)
        if manifest is not None:
            try:
                _write_cache(cache_dir, manifest, arrays)
            except Exception as exc:
                warnings.warn(f"could not write the CIFAR-10 cache to {cache_dir} ({exc}); loading still works")
    return CIFAR10(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        classes=arrays["classes"],
        source=batch_dir,
        from_cache=from_cache,
    )
