"""Checkpoint files: save and load a nested state of dicts, lists and arrays, safely and without pickle.

The caller (the trainer, :mod:`.state`) builds one nested structure of dicts,
lists, tuples, Python scalars, strings and arrays; this module only stores it
and gives it back.

The file is a plain NumPy ``.npz`` (a zip of ``.npy`` arrays), read with
``allow_pickle=False``: pickle runs arbitrary code while it loads, so a
checkpoint downloaded from somewhere would be a program, not data. Every array
is its own entry and everything else goes into one JSON document::

    __meta__            uint8 array: UTF-8 JSON {format, version, sha256, arrays, state}
    a/0 ... a/N         the arrays, in the order they were met in ``state``

Inside ``state`` an array is replaced by ``{"__array__": "a/3"}``. JSON cannot
tell a tuple from a list or keep integer dictionary keys (``optimizer.state``
is keyed by parameter index, as in PyTorch), so those are wrapped too
(``{"__tuple__": [...]}``, ``{"__items__": [[key, value], ...]}``).

Damage is detected twice: the zip's CRC-32 per entry (truncation, flipped
bytes), and a SHA-256 in ``__meta__`` over every array's name, dtype, shape
and bytes and over the JSON state tree (an entry swapped or rewritten by
hand). Writes are atomic (temporary file, fsync, rename, fsync of the
directory): a crash leaves the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import backend
from ..atomic import atomic_write
from ..tensor import Tensor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]

FORMAT = "minires-checkpoint"
# Version 2: the SHA-256 also covers the JSON state tree (version 1: the arrays only).
FORMAT_VERSION = 2
_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, of an unknown format, or does not
    fit the model it is being loaded into."""


# ---------------------------------------------------------------------------
# Nested state <-> (JSON tree, flat dict of arrays)
# ---------------------------------------------------------------------------


def _encode(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """Turn ``obj`` into JSON-able data, moving arrays into ``arrays``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        # A NumPy scalar keeps its dtype (np.float32(0.1) is not the float 0.1).
        key = f"a/{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__scalar__": key}
    if backend.is_array(obj):
        key = f"a/{len(arrays)}"
        # (np.ascontiguousarray would turn a 0-d array into shape (1,))
        host = np.asarray(backend.to_device(obj, "cpu"), order="C")
        if host.dtype == np.dtype(object):
            raise TypeError(f"cannot checkpoint an object array at {where}: only numeric arrays are stored")
        arrays[key] = host
        return {"__array__": key}
    if isinstance(obj, Tensor):
        # A Tensor in a state dict: store its values (gradients are not state).
        return _encode(obj.data, arrays, where)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{where}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, bool, float, type(None))):
                raise TypeError(f"cannot checkpoint dict key {k!r} ({type(k).__name__}) at {where}")
            items.append([k, _encode(v, arrays, f"{where}[{k!r}]")])
        return {"__items__": items}
    raise TypeError(
        f"cannot checkpoint a {type(obj).__name__} at {where}: only dicts, lists, tuples, "
        "None/bool/int/float/str and arrays are stored (no pickle)"
    )


def _decode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, value), = obj.items()
            if tag == "__array__":
                return arrays[value]
            if tag == "__scalar__":
                return arrays[value][()]
            if tag == "__tuple__":
                return tuple(_decode(v, arrays) for v in value)
            if tag == "__items__":
                return {k: _decode(v, arrays) for k, v in value}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def _digest(arrays: dict[str, np.ndarray], tree: Any = None) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order, then the state tree.

    ``tree`` (the JSON-encoded state, version >= 2) is hashed in canonical
    form (sorted keys), so the digest does not depend on how JSON was laid out.
    """
    h = hashlib.sha256()
    if tree is not None:
        h.update(json.dumps(tree, sort_keys=True, allow_nan=True).encode("utf-8"))
    for key in sorted(arrays):
        a = np.asarray(arrays[key], order="C")
        h.update(key.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (a nested dict of arrays and plain data) to ``path`` atomically.

    Args:
        path: target file, conventionally ``*.npz``; its directory must exist.
        state: dicts (string or integer keys), lists, tuples, None, bool, int,
            float, str, NumPy/CuPy arrays (CuPy arrays are copied to the host)
            and NumPy scalars, nested freely.

    Returns:
        The path written.

    Raises:
        TypeError: ``state`` holds something that cannot be stored without pickle.
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays, "state")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sha256": _digest(arrays, tree),
        "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()},
        "state": tree,
    }
    meta_bytes = json.dumps(meta, allow_nan=True).encode("utf-8")
    entries = {_META_KEY: np.frombuffer(meta_bytes, dtype=np.uint8), **arrays}
    # Uncompressed: parameters hardly compress and saving every epoch should be cheap.
    atomic_write(path, lambda f: np.savez(f, **entries))
    return path


def _read_npz(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The raw ``__meta__`` bytes and the arrays of ``path``; every zip CRC-32 is checked on the way."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if _META_KEY not in names:
                raise CheckpointError(
                    f"{path} is not a minires checkpoint: it has no {_META_KEY!r} entry (entries: {names[:5]})"
                )
            # Reading an entry checks its zip CRC-32, so damage surfaces here.
            return npz[_META_KEY], {k: npz[k] for k in names if k != _META_KEY}
    except CheckpointError:
        raise
    except Exception as exc:
        # zipfile, NumPy's .npy reader and the OS raise a zoo of exception types
        # for damaged files (BadZipFile, EOFError, ValueError, NotImplementedError
        # for a flipped 'compression method' byte, ...): all mean the same here.
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated and cannot be read ({type(exc).__name__}: {exc})"
        ) from exc


def _parse_meta(path: Path, meta_raw: np.ndarray) -> tuple[dict[str, Any], int]:
    """The ``__meta__`` JSON object and its format version, both checked."""
    try:
        meta = json.loads(meta_raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path} is not a minires checkpoint (its metadata is a {type(meta).__name__}, not an object)"
        )
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minires checkpoint (format {meta.get('format')!r})")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this minires reads versions <= {FORMAT_VERSION}"
        )
    return meta, version


def _check_contents(path: Path, meta: dict[str, Any], version: int, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a file whose entries are not those ``__meta__`` lists, or whose SHA-256 does not match."""
    expected = meta.get("arrays", {})
    if not isinstance(expected, dict) or "state" not in meta:
        raise CheckpointError(f"checkpoint {path} is inconsistent: its metadata lacks the array list or the state")
    if set(expected) != set(arrays):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        raise CheckpointError(f"checkpoint {path} is inconsistent: missing entries {missing}, unexpected {extra}")
    digest = _digest(arrays, meta["state"] if version >= 2 else None)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} failed its SHA-256 check (recorded {meta.get('sha256')}, computed {digest}): "
            "the file was modified or corrupted"
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and verify it.

    Returns:
        The nested state, arrays as NumPy arrays on the host.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted (CRC or
            SHA-256 mismatch), not a minires checkpoint, or of a newer format
            version. The message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta_raw, arrays = _read_npz(path)
    meta, version = _parse_meta(path, meta_raw)
    _check_contents(path, meta, version, arrays)
    try:
        return _decode(meta["state"], arrays)
    except (KeyError, TypeError, ValueError) as exc:  # only reachable with a version-1 file edited by hand
        raise CheckpointError(f"checkpoint {path} has a malformed state tree ({type(exc).__name__}: {exc})") from exc
