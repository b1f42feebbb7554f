"""Decode the pickled CIFAR-10 batch files into uint8 image and int64 label arrays.

Each batch is a dict with ``b'data'`` (a 10000x3072 uint8 array: row i is
image i, its first 1024 bytes are the red plane in row-major order, then
green, then blue), ``b'labels'`` (10,000 ints in 0..9), ``b'batch_label'``
and ``b'filenames'``. Because the planes come one after the other, a plain
``reshape(N, 3, 32, 32)`` gives NCHW images without any copy.

Pickles can run arbitrary code when loaded, and these files come from the
internet. So they are read with a restricted unpickler that only accepts
the few NumPy functions needed to rebuild an array: a tampered file fails
to load instead of executing. Every array is then checked (shape, dtype,
labels in ``0..9``) and any problem is reported naming the file.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CIFARFormatError, cannot_read, redownload_advice
from .release import EXAMPLES_PER_BATCH, IMAGE_SHAPE, META_FILE, NUM_CLASSES, TEST_FILE, TRAIN_FILES

__all__ = ["read_batch", "read_meta", "read_cases_per_batch", "decode_batches"]


# ---------------------------------------------------------------------------
# Reading a pickle safely
# ---------------------------------------------------------------------------


def _numpy_globals() -> dict:
    """The only globals a CIFAR pickle may reference, mapped to the real objects.

    Files pickled by NumPy 1.x (the official ones) name ``numpy.core``; NumPy
    2.x renamed it ``numpy._core``. Both spellings map to whatever this NumPy
    provides. ``_codecs.encode`` appears when Python 3 pickles bytes with
    protocol 2.
    """
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


def _unpickle(path: Path, data_dir: Path) -> dict:
    """Load one pickle as a dict with ``str`` keys.

    A file we cannot read -> :class:`CIFARReadError`; a file whose bytes do not
    decode -> :class:`CIFARFormatError` (see :mod:`minires.data.errors` for
    why the two get different advice).
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CIFARFormatError(f"{path} is missing. " + redownload_advice(data_dir)) from None
    except OSError as exc:
        raise cannot_read(path, exc) from exc
    with f:
        try:
            # encoding="bytes": the official files were written by Python 2;
            # its str objects (the pixel data among them) come back as bytes.
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except OSError as exc:
            # The disk or OS failed while reading; that says nothing about the bytes themselves.
            raise cannot_read(path, exc) from exc
        except Exception as exc:  # truncated -> EOFError/UnpicklingError; garbage -> anything
            raise CIFARFormatError(
                f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc}); the file is "
                "truncated or corrupt. " + redownload_advice(data_dir)
            ) from exc
    if not isinstance(obj, dict):
        raise CIFARFormatError(
            f"{path} holds a {type(obj).__name__}, expected a dict. " + redownload_advice(data_dir)
        )
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


# ---------------------------------------------------------------------------
# Checking what a batch holds
# ---------------------------------------------------------------------------


def _checked_data(path: Path, batch: dict, examples: int | None, fix: str) -> np.ndarray:
    """``batch['data']`` once it is an ``(N, 3072)`` uint8 array (``N = examples`` if given)."""
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
    return data


def _checked_labels(path: Path, batch: dict, n: int, fix: str) -> np.ndarray:
    """``batch['labels']`` as an ``(n,)`` int64 array, once every label is an integer in ``0..9``."""
    try:
        labels = np.asarray(batch["labels"])
    except (TypeError, ValueError) as exc:
        raise CIFARFormatError(f"{path}: 'labels' is not a list of integers ({exc}). " + fix) from exc
    if labels.dtype.kind not in "iu":
        # Refuse floats or strings instead of truncating them to some integer.
        raise CIFARFormatError(f"{path}: 'labels' must be integers, got dtype {labels.dtype}. " + fix)
    labels = labels.astype(np.int64)
    if labels.shape != (n,):
        raise CIFARFormatError(f"{path}: 'labels' has shape {labels.shape}, expected ({n},) to match 'data'. " + fix)
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CIFARFormatError(
            f"{path}: label {int(labels[first])} at index {first} is outside 0..{NUM_CLASSES - 1}. " + fix
        )
    return labels


# ---------------------------------------------------------------------------
# The files of the release
# ---------------------------------------------------------------------------


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
    fix = redownload_advice(data_dir)
    for key in ("data", "labels"):
        if key not in batch:
            raise CIFARFormatError(f"{path} has no '{key}' entry (keys: {sorted(batch)}). " + fix)
    data = _checked_data(path, batch, examples, fix)
    labels = _checked_labels(path, batch, data.shape[0], fix)
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
            + redownload_advice(path.parent.parent)
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
            + redownload_advice(path.parent.parent)
        )
    return int(count)


def decode_batches(batch_dir: Path, examples: int | None) -> dict:
    """Read and check all seven files of ``batch_dir``.

    Returns a dict with ``train_images``, ``train_labels``, ``test_images``,
    ``test_labels`` (the layout :mod:`minires.data.cache` stores) and
    ``classes``.
    """
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
