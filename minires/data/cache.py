"""The .npy cache of decoded CIFAR-10: faster loading, verified by SHA-256, rebuilt when damaged.

Decoding the seven pickles takes a second or two; loading ``.npy`` files a
fraction of that. So the decoded arrays are kept in a cache directory:
``{train_images,train_labels,test_images,test_labels}.npy`` plus
``manifest.json``.

* The manifest records the size and mtime_ns of every source file; the
  cache is used only if they all still match, so replacing a batch file
  invalidates it.
* The manifest is written last and removed first: it is the "commit"
  marker, so a half-written cache is never read.
* The manifest also records the SHA-256 of every .npy file, checked on
  every read. Without it, a few flipped bits in a .npy file (a bad disk, a
  careless edit) load without complaint: NumPy checks the header, not the
  numbers, and a label of 3355443201 only fails much later, deep inside
  the loss. The arrays' shapes, dtypes and labels are checked too.

The cache can make loading faster, never break it or change the data:
:func:`read_cache` and :func:`write_cache` never raise. A cache that
cannot be trusted is reported as a warning naming the file, and the
caller decodes the batches again and rewrites it.

Cost of the checksums, measured on the full cache (185 MB) on a 2-core
development machine, files in the OS page cache: SHA-256 takes 0.15 s
(1.2 GB/s, as the CPU has SHA instructions; blake2b took 0.34 s there),
np.load alone 0.05 s. So a cached load takes about 0.2 s instead of
0.05 s: still a small part of the 1-2 s that decoding the pickles costs,
and paid once per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_write
from .release import IMAGE_SHAPE, META_FILE, NUM_CLASSES, TEST_FILE, TRAIN_FILES

__all__ = ["cache_dir_for", "cache_dir_from_option", "source_manifest", "read_cache", "write_cache"]

# Bump when the cache layout changes, so old caches are rebuilt, not misread.
# Format 2 added a SHA-256 of every cached file to the manifest.
_CACHE_FORMAT = 2
_CACHE_DIR_NAME = "cifar-10-npy-cache"
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


class _StaleCache(Exception):
    """The cache cannot be trusted and will be rebuilt; the message says why, for the user."""


# ---------------------------------------------------------------------------
# Where the cache lives
# ---------------------------------------------------------------------------


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


def cache_dir_from_option(cache: "bool | str | os.PathLike | None", batch_dir: Path) -> Path | None:
    """The ``cache`` argument of ``load_cifar10`` as a directory: ``True`` -> :func:`cache_dir_for`,
    a path -> that path, ``False`` or ``None`` -> no cache (``None``)."""
    if cache is True:
        return cache_dir_for(batch_dir)
    if cache in (False, None):
        return None
    return Path(os.path.abspath(Path(cache).expanduser()))


def source_manifest(batch_dir: Path, examples: int | None) -> dict:
    """What a cache of ``batch_dir`` must have been built from: the format, the source and the
    size and mtime of each of its files. Raises ``OSError`` if a source file is missing."""
    files = {}
    for name in (META_FILE,) + TRAIN_FILES + (TEST_FILE,):
        st = (batch_dir / name).stat()
        files[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"format": _CACHE_FORMAT, "source": str(batch_dir), "examples_per_batch": examples, "files": files}


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _read_manifest(manifest_path: Path, expected: dict) -> dict | None:
    """The manifest, if it describes a cache of the ``expected`` sources that can be verified.

    None when the sources changed (the normal reason to decode again);
    :class:`_StaleCache` when it is of another format, records no checksums
    or no valid class names.
    """
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
    return manifest


def _load_verified(cache_dir: Path, name: str, manifest: dict) -> np.ndarray:
    """Load ``<name>.npy`` once its SHA-256, shape and dtype agree with the manifest."""
    path = cache_dir / f"{name}.npy"
    recorded = manifest["sha256"][name]
    # Hash and load through the same open file, so the bytes checked are the bytes loaded.
    with open(path, "rb") as f:
        got = _sha256(f)
        if got != recorded:
            # 12 hex digits are plenty to tell two hashes apart in a message.
            raise _StaleCache(
                f"{path} has SHA-256 {got[:12]}..., but manifest.json recorded "
                f"{str(recorded)[:12]}...: the file was damaged or changed after it was written"
            )
        f.seek(0)
        array = np.load(f, allow_pickle=False)
    shape, dtype = manifest["arrays"][name]
    if list(array.shape) != shape or str(array.dtype) != dtype:
        raise _StaleCache(
            f"{path} holds a {array.dtype} array of shape {list(array.shape)}, manifest.json says {dtype} {shape}"
        )
    return array


def _read_verified(cache_dir: Path, expected: dict) -> dict | None:
    """The cached arrays if the cache is complete, verified and matches ``expected``.

    None, silently, when there is no cache or its sources changed;
    :class:`_StaleCache` when it is there but must not be trusted.
    """
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = _read_manifest(manifest_path, expected)
    if manifest is None:
        return None
    arrays = {"classes": list(manifest["classes"])}
    for name in _ARRAYS:
        arrays[name] = _load_verified(cache_dir, name, manifest)
    _check_arrays(arrays, expected.get("examples_per_batch"), cache_dir)
    return arrays


def read_cache(cache_dir: Path, expected: dict) -> dict | None:
    """The cached arrays (as :func:`minires.data.decode.decode_batches` returns them), or None.

    ``expected`` is :func:`source_manifest` of the batch directory. None
    means "decode the batches": silently when there is no cache or its
    sources changed, with a warning naming the problem when the cache is
    there but cannot be trusted or read.
    """
    try:
        return _read_verified(cache_dir, expected)
    except _StaleCache as exc:
        warnings.warn(f"not using the CIFAR-10 cache: {exc}. Decoding the batches and rewriting the cache.")
    except Exception as exc:
        warnings.warn(f"ignoring the unreadable CIFAR-10 cache in {cache_dir} ({type(exc).__name__}: {exc}); "
                      "decoding the batches and rewriting the cache")
    return None


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _write(cache_dir: Path, manifest: dict, arrays: dict) -> None:
    """Save ``arrays`` as .npy files, then the manifest completed with their checksums."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    # Invalidate first: between here and the final rename, readers see no cache.
    if manifest_path.exists():
        manifest_path.unlink()
    checksums = {}
    for name in _ARRAYS:
        path = cache_dir / f"{name}.npy"
        atomic_write(path, lambda f, a=arrays[name]: np.save(f, a, allow_pickle=False))
        # Hash the file as it lies on disk (header included): exactly what _load_verified will hash.
        with open(path, "rb") as f:
            checksums[name] = _sha256(f)
    manifest = dict(manifest)
    manifest["classes"] = list(arrays["classes"])
    manifest["arrays"] = {name: [list(arrays[name].shape), str(arrays[name].dtype)] for name in _ARRAYS}
    manifest["sha256"] = checksums
    text = json.dumps(manifest, indent=1).encode("utf-8")
    atomic_write(manifest_path, lambda f: f.write(text))


def write_cache(cache_dir: Path, manifest: dict, arrays: dict) -> None:
    """Cache ``arrays``; a failure (read-only disk, full disk) is only a warning.

    ``manifest`` must be :func:`source_manifest` taken BEFORE decoding, so a
    source file replaced while we were decoding makes the cache stale, not wrong.
    """
    try:
        _write(cache_dir, manifest, arrays)
    except Exception as exc:
        warnings.warn(f"could not write the CIFAR-10 cache to {cache_dir} ({exc}); loading still works")
