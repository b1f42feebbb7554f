"""The verified .npy cache (minires.data.cache): hit, invalidated, damaged, rebuilt, relocated."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cifar_helpers import N, listing, load
from synthetic_cifar import expected_arrays, write_synthetic_cifar

from minires.data import decode, load_cifar10
from minires.data.cache import _ARRAYS, cache_dir_for
from minires.data.errors import CIFARFormatError
from minires.data.release import BATCH_DIR


def _forbid_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded a batch file although the cache is valid")

    monkeypatch.setattr(decode, "read_batch", refuse)


def test_cache_is_written_then_hit(root, monkeypatch):
    first = load(root)
    cache_dir = root / "cifar-10-npy-cache"
    assert not first.from_cache and (cache_dir / "manifest.json").is_file()
    _forbid_decoding(monkeypatch)
    second = load(root)
    assert second.from_cache and second.classes == first.classes
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        a, b = getattr(first, key), getattr(second, key)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_changed_source_invalidates_the_cache(root, tmp_path):
    load(root)
    # Replace one batch by a batch with other content (and a new mtime).
    other = write_synthetic_cifar(tmp_path / "other", n_train_per_batch=N, n_test=N, seed=2)
    (root / BATCH_DIR / "data_batch_4").write_bytes((other / BATCH_DIR / "data_batch_4").read_bytes())
    data = load(root)
    assert not data.from_cache
    np.testing.assert_array_equal(data.train_images[3 * N:4 * N], expected_arrays(other)["train_images"][3 * N:4 * N])
    assert load(root).from_cache  # the refreshed cache is used again


def test_touched_source_invalidates_the_cache(root):
    load(root)
    path = root / BATCH_DIR / "test_batch"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert not load(root).from_cache


def test_other_expected_count_does_not_reuse_the_cache(root):
    load(root)
    with pytest.raises(CIFARFormatError, match="expected 10000"):
        load_cifar10(root, download=False)  # must check the files, not trust a cache built for N


def test_corrupt_cache_falls_back_to_decoding(root):
    load(root)
    npy = root / "cifar-10-npy-cache" / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"not using the CIFAR-10 cache: .*train_images\.npy has SHA-256"):
        data = load(root)
    assert not data.from_cache
    np.testing.assert_array_equal(data.train_images, expected_arrays(root)["train_images"])
    assert load(root).from_cache  # rewritten


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "cifar-10-npy-cache").iterdir())


CACHE_FILES = sorted(["manifest.json", "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"])


def test_manifest_records_the_sha256_of_every_cached_file(root):
    load(root)
    cache_dir = root / "cifar-10-npy-cache"
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["format"] == 2
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        want = hashlib.sha256((cache_dir / f"{name}.npy").read_bytes()).hexdigest()
        assert manifest["sha256"][name] == want, name


def test_flipped_bytes_in_the_cache_are_detected_and_the_cache_rebuilt(root, monkeypatch):
    load(root)
    npy = root / "cifar-10-npy-cache" / "test_labels.npy"
    raw = bytearray(npy.read_bytes())
    # Same size, valid .npy header: only the numbers change. Bytes -6 and -5 are bytes
    # 2 and 3 of the last little-endian int64 label, which becomes about 3.4e9.
    raw[-5] ^= 0xC8
    raw[-6] ^= 0xC8
    npy.write_bytes(bytes(raw))
    assert np.load(npy).max() > 9  # the damage NumPy alone does not notice
    with pytest.warns(UserWarning, match=r"not using the CIFAR-10 cache: .*test_labels\.npy has SHA-256") as record:
        data = load(root)
    assert str(npy) in str(record[0].message)  # names the file
    assert not data.from_cache
    np.testing.assert_array_equal(data.test_labels, expected_arrays(root)["test_labels"])
    # Rewritten through atomic_write: the complete set of files, no temporary leftovers.
    assert _cache_files(root) == CACHE_FILES
    _forbid_decoding(monkeypatch)
    again = load(root)
    assert again.from_cache
    np.testing.assert_array_equal(again.test_labels, expected_arrays(root)["test_labels"])


def _replace_cached_array(root: Path, name: str, array: np.ndarray) -> None:
    """Overwrite one cached array AND make the manifest agree (shape, dtype, checksum), as a
    buggy writer would: only the content checks can catch it."""
    cache_dir = root / "cifar-10-npy-cache"
    np.save(cache_dir / f"{name}.npy", array)
    manifest_path = cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"][name] = [list(array.shape), str(array.dtype)]
    manifest["sha256"][name] = hashlib.sha256((cache_dir / f"{name}.npy").read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _label(value: int, index: int):
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[index] = value
        return a
    return change


BAD_CACHED_ARRAYS = {
    "label_12": ("train_labels", _label(12, 7), "label 12 at index 7, outside 0..9"),
    "label_-1": ("test_labels", _label(-1, 0), "label -1 at index 0, outside 0..9"),
    "labels_int32": ("test_labels", lambda a: a.astype(np.int32), f"expected ({N},) int64"),
    "labels_too_few": ("train_labels", lambda a: a[:-1], f"expected ({5 * N},) int64"),
    "images_int16": ("test_images", lambda a: a.astype(np.int16), "expected (N, 3, 32, 32) uint8"),
    "images_16x64": ("train_images", lambda a: a.reshape(-1, 3, 16, 64), "expected (N, 3, 32, 32) uint8"),
    "images_too_few": ("test_images", lambda a: a[:-2], f"holds {N - 2} images, expected {N}"),
}


@pytest.mark.parametrize("case", sorted(BAD_CACHED_ARRAYS))
def test_cache_contents_are_checked_even_when_checksums_match(root, case):
    name, change, words = BAD_CACHED_ARRAYS[case]
    good = load(root)
    _replace_cached_array(root, name, change(getattr(good, name)))
    with pytest.warns(UserWarning, match="not using the CIFAR-10 cache") as record:
        data = load(root)
    message = str(record[0].message)
    assert words in message and f"{name}.npy" in message, message
    assert not data.from_cache
    np.testing.assert_array_equal(getattr(data, name), getattr(good, name))
    assert load(root).from_cache  # rebuilt


@pytest.mark.parametrize("edit, words", [
    ("format_1", "has cache format 1"),  # written before checksums existed
    ("no_sha256", "records no checksum for train_images.npy, train_labels.npy"),
    ("one_missing", "records no checksum for test_images.npy;"),
])
def test_cache_without_checksums_is_rebuilt_not_trusted(root, monkeypatch, edit, words):
    load(root)
    manifest_path = root / "cifar-10-npy-cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if edit == "format_1":
        manifest["format"] = 1
        del manifest["sha256"]
    elif edit == "no_sha256":
        del manifest["sha256"]
    else:
        del manifest["sha256"]["test_images"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="not using the CIFAR-10 cache") as record:
        data = load(root)
    assert words in str(record[0].message), str(record[0].message)
    assert not data.from_cache
    rebuilt = json.loads(manifest_path.read_text())
    assert rebuilt["format"] == 2 and sorted(rebuilt["sha256"]) == sorted(_ARRAYS)
    _forbid_decoding(monkeypatch)
    assert load(root).from_cache


def test_unwritable_cache_only_warns(root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="could not write the CIFAR-10 cache"):
        data = load(root, cache=blocker / "cache")
    np.testing.assert_array_equal(data.test_images, expected_arrays(root)["test_images"])


def test_cache_false_writes_nothing(root):
    before = listing(root)
    load(root, cache=False)
    assert listing(root) == before


def test_read_only_data_dir_caches_under_home(root, home, monkeypatch):
    batch_dir = root / BATCH_DIR
    os.chmod(root, 0o555)  # as on the shared, read-only dataset
    try:
        before = listing(root)
        cache_dir = cache_dir_for(batch_dir)
        assert home / ".cache" / "minires" in cache_dir.parents
        assert not load(root).from_cache
        assert (cache_dir / "manifest.json").is_file()
        _forbid_decoding(monkeypatch)
        assert load(root).from_cache
        assert listing(root) == before  # the read-only directory was not written to (even by root)
    finally:
        os.chmod(root, 0o755)


def test_fallback_cache_is_keyed_by_source_path(tmp_path, home):
    a = write_synthetic_cifar(tmp_path / "a", n_train_per_batch=N, n_test=N, seed=3)
    b = write_synthetic_cifar(tmp_path / "b", n_train_per_batch=N, n_test=N, seed=4)
    for d in (a, b):
        os.chmod(d, 0o555)
    try:
        assert cache_dir_for(a / BATCH_DIR) != cache_dir_for(b / BATCH_DIR)
        load(a), load(b)
        data_a = load(a)
        assert data_a.from_cache
        np.testing.assert_array_equal(data_a.train_images, expected_arrays(a)["train_images"])
    finally:
        for d in (a, b):
            os.chmod(d, 0o755)


def test_meta_count_mode_shares_the_cache_with_the_explicit_count(root):
    assert not load(root, examples_per_batch="meta").from_cache
    assert load(root, examples_per_batch=N).from_cache
    assert load(root, examples_per_batch="meta").from_cache
