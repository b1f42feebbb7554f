"""Decoding the pickled batch files (minires.data.decode), through load_cifar10.

Everything runs on a synthetic directory in the official pickle layout (see
``synthetic_cifar.py``) with N images per batch: each test damages one file
in one way and checks that the error names the file, the problem and the fix.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from cifar_helpers import N, load
from synthetic_cifar import CLASS_NAMES, batch_dict, expected_arrays, write_pickle

from minires.data import decode, load_cifar10
from minires.data.errors import CIFARError, CIFARFormatError, CIFARReadError
from minires.data.release import BATCH_DIR, CIFAR10_URL


def test_load_matches_the_files_read_independently(root):
    data = load(root, cache=False)
    ref = expected_arrays(root)
    assert data.train_images.shape == (5 * N, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (N, 3, 32, 32) and data.test_images.dtype == np.uint8
    assert data.train_labels.shape == (5 * N,) and data.train_labels.dtype == np.int64
    assert data.test_labels.shape == (N,) and data.test_labels.dtype == np.int64
    for key, value in ref.items():
        np.testing.assert_array_equal(getattr(data, key), value, err_msg=key)
    assert data.classes == CLASS_NAMES
    assert data.source == root / BATCH_DIR and not data.from_cache


def test_channel_planes_become_nchw(root):
    # Official layout: 1024 red bytes, then 1024 green, then 1024 blue, each row-major.
    images = np.zeros((N, 3, 32, 32), dtype=np.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 10, 20, 30
    images[0, 0, 0, 1] = 99  # red plane, row 0, column 1 -> byte 1 of the row
    images[0, 2, 31, 0] = 77  # blue plane, row 31, column 0 -> byte 2048 + 31*32
    d = batch_dict(images, np.arange(N) % 10, "training batch 1 of 5", "x")
    assert d[b"data"][0, 1] == 99 and d[b"data"][0, 2048 + 31 * 32] == 77
    write_pickle(root / BATCH_DIR / "data_batch_1", d)
    data = load(root, cache=False)
    np.testing.assert_array_equal(data.train_images[:N], images)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _rewrite(path: Path, change) -> None:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    change(d)
    write_pickle(path, d)


def _wrong_shape(d):
    d[b"data"] = d[b"data"][:, :3000]


def _wrong_dtype(d):
    d[b"data"] = d[b"data"].astype(np.int32)


def _label_too_big(d):
    d[b"labels"][3] = 10


def _label_negative(d):
    d[b"labels"][0] = -1


def _float_labels(d):
    d[b"labels"] = [float(v) + 0.5 for v in d[b"labels"]]


def _labels_too_short(d):
    d[b"labels"] = d[b"labels"][:-1]


def _no_data_key(d):
    del d[b"data"]


def _too_many_rows(d):
    d[b"data"] = np.concatenate([d[b"data"], d[b"data"][:1]])
    d[b"labels"] = d[b"labels"] + d[b"labels"][:1]


CORRUPTIONS = {
    "missing": lambda p: p.unlink(),
    "truncated": _truncate,
    "garbage": _garbage,
    "empty": lambda p: p.write_bytes(b""),
    "not_a_dict": lambda p: write_pickle(p, [1, 2, 3]),
    "wrong_shape": lambda p: _rewrite(p, _wrong_shape),
    "wrong_dtype": lambda p: _rewrite(p, _wrong_dtype),
    "label_10": lambda p: _rewrite(p, _label_too_big),
    "label_-1": lambda p: _rewrite(p, _label_negative),
    "float_labels": lambda p: _rewrite(p, _float_labels),
    "labels_too_short": lambda p: _rewrite(p, _labels_too_short),
    "no_data_key": lambda p: _rewrite(p, _no_data_key),
    "wrong_count": lambda p: _rewrite(p, _too_many_rows),
}
EXPECTED_WORDS = {
    "missing": "missing",
    "truncated": "truncated or corrupt",
    "garbage": "truncated or corrupt",
    "empty": "truncated or corrupt",
    "not_a_dict": "expected a dict",
    "wrong_shape": "(N, 3072)",
    "wrong_dtype": "uint8",
    "label_10": "label 10 at index 3",
    "label_-1": "label -1 at index 0",
    "float_labels": "must be integers",
    "labels_too_short": "to match 'data'",
    "no_data_key": "no 'data' entry",
    "wrong_count": f"holds {N + 1} images, expected {N}",
}


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_bad_batch_file_raises_a_clear_error(root, corruption, name):
    path = root / BATCH_DIR / name
    CORRUPTIONS[corruption](path)
    with pytest.raises(CIFARFormatError) as info:
        load(root, cache=False)
    message = str(info.value)
    assert str(path) in message, message  # names the file
    assert EXPECTED_WORDS[corruption] in message, message  # says what is wrong
    assert "re-download" in message and CIFAR10_URL in message, message  # says what to do
    assert isinstance(info.value, ValueError)


def _deny_reading(monkeypatch, target: Path, error: OSError) -> None:
    """Make decode.py's ``open`` of ``target`` fail with ``error``, as ``chmod 000`` would for a
    normal user (root, which runs these tests, bypasses permission bits)."""
    real_open = open

    def fake_open(path, *args, **kwargs):
        if Path(path) == target:
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(decode, "open", fake_open, raising=False)  # shadows the builtin in decode.py only


def _assert_says_cannot_read(info, path: Path, os_words: str) -> None:
    message = str(info.value)
    assert isinstance(info.value, CIFARReadError) and isinstance(info.value, OSError)
    assert not isinstance(info.value, CIFARFormatError)  # not "the content is wrong"
    assert f"cannot read {path}" in message, message  # names the file
    assert os_words in message, message  # and the OS's reason
    # A good copy must not be thrown away because of a permission problem.
    for advice in ("Delete", "delete", "re-download", "truncated or corrupt"):
        assert advice not in message, message


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_permission_error_is_reported_as_unreadable_not_corrupt(root, monkeypatch, name):
    path = root / BATCH_DIR / name
    _deny_reading(monkeypatch, path, PermissionError(errno.EACCES, "Permission denied", str(path)))
    with pytest.raises(CIFARError) as info:
        load(root, cache=False)
    _assert_says_cannot_read(info, path, "Permission denied")
    assert path.read_bytes()  # the file is still there, untouched


def test_directory_in_place_of_a_batch_file_is_unreadable_not_missing(root):
    path = root / BATCH_DIR / "data_batch_4"
    path.unlink()
    path.mkdir()
    with pytest.raises(CIFARError) as info:
        load(root, cache=False)
    _assert_says_cannot_read(info, path, "Is a directory")


class _FailingReads(io.RawIOBase):
    """A file that opens fine but whose reads fail, like a disk with a bad sector."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise OSError(errno.EIO, "Input/output error")


def test_io_error_while_reading_is_not_called_corruption(root, monkeypatch):
    path = root / BATCH_DIR / "data_batch_1"
    real_open = open
    monkeypatch.setattr(
        decode, "open", lambda p, *a, **k: _FailingReads() if Path(p) == path else real_open(p, *a, **k),
        raising=False,
    )
    with pytest.raises(CIFARError) as info:
        load(root, cache=False)
    _assert_says_cannot_read(info, path, "Input/output error")


def test_official_count_is_the_default(root):
    # A batch of N images is not an official batch: the default check insists on 10,000.
    with pytest.raises(CIFARFormatError, match=f"holds {N} images, expected 10000"):
        load_cifar10(root, download=False, cache=False)


def test_meta_count_mode_checks_every_file_against_batches_meta(root):
    # "meta" (what the CLI uses): the count batches.meta declares, here N.
    data = load(root, cache=False, examples_per_batch="meta")
    assert data.train_images.shape[0] == 5 * N and data.test_images.shape[0] == N
    # A readable batch one image short is refused, naming the file.
    for name in ("data_batch_3", "test_batch"):
        path = root / BATCH_DIR / name
        original = path.read_bytes()
        _rewrite(path, lambda d: d.update({b"data": d[b"data"][:-1], b"labels": d[b"labels"][:-1]}))
        with pytest.raises(CIFARFormatError, match=f"{name}.*holds {N - 1} images, expected {N}"):
            load(root, cache=False, examples_per_batch="meta")
        path.write_bytes(original)


@pytest.mark.parametrize("count", [0, -5, "20", None, 2.0])
def test_meta_count_mode_rejects_a_bad_declared_count(root, count):
    meta = root / BATCH_DIR / "batches.meta"
    _rewrite(meta, lambda d: d.update({b"num_cases_per_batch": count}))
    with pytest.raises(CIFARFormatError, match="num_cases_per_batch"):
        load(root, cache=False, examples_per_batch="meta")


def test_numpy_1_pickles_load(root):
    # The official files were written by NumPy 1.x, whose pickles name 'numpy.core.multiarray'
    # (NumPy 2 writes 'numpy._core'); both must pass the restricted unpickler.
    path = root / BATCH_DIR / "data_batch_5"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw  # protocol 2: GLOBAL "module\nname\n"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    data = load(root, cache=False)
    np.testing.assert_array_equal(data.train_images, expected_arrays(root)["train_images"])


def test_bad_meta_raises(root):
    write_pickle(root / BATCH_DIR / "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(CIFARFormatError, match="batches.meta.*10 names"):
        load(root, cache=False)


class _Exploit:
    """A pickle that would create a directory when loaded by a plain unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_pickle_with_foreign_code_is_refused_not_run(root, tmp_path):
    target = tmp_path / "pwned"
    path = root / BATCH_DIR / "data_batch_2"
    write_pickle(path, {b"data": _Exploit(target), b"labels": []})
    with pytest.raises(CIFARFormatError, match="refusing to load global"):
        load(root, cache=False)
    assert not target.exists()
