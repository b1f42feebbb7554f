"""CIFAR-10 on disk: locating, downloading, verifying, extracting, decoding, caching.

Everything runs on a synthetic directory in the official pickle layout (see
``synthetic_cifar.py``) with 20 images per batch; downloads are served from
``file://`` URLs or a monkeypatched fetch function, because CI has no network.
The last test loads the real dataset when ``MINIRES_DATA`` points at it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from minires.data import cifar
from minires.data.cifar import (
    CIFARDownloadError,
    CIFARFormatError,
    CIFARNotFoundError,
    UnsafeArchiveError,
    extract_archive,
    load_cifar10,
    resolve_data_dir,
)
from synthetic_cifar import CLASS_NAMES, batch_dict, expected_arrays, write_pickle, write_synthetic_cifar

N = 20  # images per synthetic batch: small enough that every test stays fast


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_synthetic_cifar(tmp_path / "data", n_train_per_batch=N, n_test=N, seed=1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A fake home directory, so the fallback cache never touches the real one."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def load(root: Path, **kw):
    kw.setdefault("examples_per_batch", N)
    kw.setdefault("download", False)
    return load_cifar10(root, **kw)


def make_archive(src_root: Path, archive: Path) -> str:
    """tar.gz ``src_root/cifar-10-batches-py`` like the official archive; return its md5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / cifar.BATCH_DIR, arcname=cifar.BATCH_DIR)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------
# Where the data lives
# ---------------------------------------------------------------------------


def test_resolve_data_dir_argument_then_env_then_home(tmp_path, monkeypatch, home):
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "from_env"
    monkeypatch.delenv("MINIRES_DATA")
    assert resolve_data_dir() == home / ".cache" / "minires"
    # Relative paths are anchored to the current directory once, at resolution time.
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("rel/dir") == tmp_path / "rel" / "dir"
    assert resolve_data_dir("~/x") == home / "x"


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


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
    assert data.source == root / cifar.BATCH_DIR and not data.from_cache


def test_channel_planes_become_nchw(root):
    # Official layout: 1024 red bytes, then 1024 green, then 1024 blue, each row-major.
    images = np.zeros((N, 3, 32, 32), dtype=np.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 10, 20, 30
    images[0, 0, 0, 1] = 99  # red plane, row 0, column 1 -> byte 1 of the row
    images[0, 2, 31, 0] = 77  # blue plane, row 31, column 0 -> byte 2048 + 31*32
    d = batch_dict(images, np.arange(N) % 10, "training batch 1 of 5", "x")
    assert d[b"data"][0, 1] == 99 and d[b"data"][0, 2048 + 31 * 32] == 77
    write_pickle(root / cifar.BATCH_DIR / "data_batch_1", d)
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
    path = root / cifar.BATCH_DIR / name
    CORRUPTIONS[corruption](path)
    with pytest.raises(CIFARFormatError) as info:
        load(root, cache=False)
    message = str(info.value)
    assert str(path) in message, message  # names the file
    assert EXPECTED_WORDS[corruption] in message, message  # says what is wrong
    assert "re-download" in message and cifar.CIFAR10_URL in message, message  # says what to do
    assert isinstance(info.value, ValueError)


def _deny_reading(monkeypatch, target: Path, error: OSError) -> None:
    """Make cifar.py's ``open`` of ``target`` fail with ``error``, as ``chmod 000`` would for a
    normal user (root, which runs these tests, bypasses permission bits)."""
    real_open = open

    def fake_open(path, *args, **kwargs):
        if Path(path) == target:
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cifar, "open", fake_open, raising=False)  # shadows the builtin in cifar.py only


def _assert_says_cannot_read(info, path: Path, os_words: str) -> None:
    message = str(info.value)
    assert isinstance(info.value, cifar.CIFARReadError) and isinstance(info.value, OSError)
    assert not isinstance(info.value, CIFARFormatError)  # not "the content is wrong"
    assert f"cannot read {path}" in message, message  # names the file
    assert os_words in message, message  # and the OS's reason
    # A good copy must not be thrown away because of a permission problem.
    for advice in ("Delete", "delete", "re-download", "truncated or corrupt"):
        assert advice not in message, message


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_permission_error_is_reported_as_unreadable_not_corrupt(root, monkeypatch, name):
    path = root / cifar.BATCH_DIR / name
    _deny_reading(monkeypatch, path, PermissionError(errno.EACCES, "Permission denied", str(path)))
    with pytest.raises(cifar.CIFARError) as info:
        load(root, cache=False)
    _assert_says_cannot_read(info, path, "Permission denied")
    assert path.read_bytes()  # the file is still there, untouched


def test_directory_in_place_of_a_batch_file_is_unreadable_not_missing(root):
    path = root / cifar.BATCH_DIR / "data_batch_4"
    path.unlink()
    path.mkdir()
    with pytest.raises(cifar.CIFARError) as info:
        load(root, cache=False)
    _assert_says_cannot_read(info, path, "Is a directory")


class _FailingReads(io.RawIOBase):
    """A file that opens fine but whose reads fail, like a disk with a bad sector."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise OSError(errno.EIO, "Input/output error")


def test_io_error_while_reading_is_not_called_corruption(root, monkeypatch):
    path = root / cifar.BATCH_DIR / "data_batch_1"
    real_open = open
    monkeypatch.setattr(
        cifar, "open", lambda p, *a, **k: _FailingReads() if Path(p) == path else real_open(p, *a, **k),
        raising=False,
    )
    with pytest.raises(cifar.CIFARError) as info:
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
        path = root / cifar.BATCH_DIR / name
        original = path.read_bytes()
        _rewrite(path, lambda d: d.update({b"data": d[b"data"][:-1], b"labels": d[b"labels"][:-1]}))
        with pytest.raises(CIFARFormatError, match=f"{name}.*holds {N - 1} images, expected {N}"):
            load(root, cache=False, examples_per_batch="meta")
        path.write_bytes(original)


def test_meta_count_mode_shares_the_cache_with_the_explicit_count(root):
    assert not load(root, examples_per_batch="meta").from_cache
    assert load(root, examples_per_batch=N).from_cache
    assert load(root, examples_per_batch="meta").from_cache


@pytest.mark.parametrize("count", [0, -5, "20", None, 2.0])
def test_meta_count_mode_rejects_a_bad_declared_count(root, count):
    meta = root / cifar.BATCH_DIR / "batches.meta"
    _rewrite(meta, lambda d: d.update({b"num_cases_per_batch": count}))
    with pytest.raises(CIFARFormatError, match="num_cases_per_batch"):
        load(root, cache=False, examples_per_batch="meta")


@pytest.mark.parametrize("bad", ["all", 0, True, 2.5])
def test_bad_examples_per_batch_argument(root, bad):
    with pytest.raises(ValueError, match="examples_per_batch"):
        load(root, cache=False, examples_per_batch=bad)


def test_numpy_1_pickles_load(root):
    # The official files were written by NumPy 1.x, whose pickles name 'numpy.core.multiarray'
    # (NumPy 2 writes 'numpy._core'); both must pass the restricted unpickler.
    path = root / cifar.BATCH_DIR / "data_batch_5"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw  # protocol 2: GLOBAL "module\nname\n"
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    data = load(root, cache=False)
    np.testing.assert_array_equal(data.train_images, expected_arrays(root)["train_images"])


def test_bad_meta_raises(root):
    write_pickle(root / cifar.BATCH_DIR / "batches.meta", {b"label_names": [b"cat", b"dog"]})
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
    path = root / cifar.BATCH_DIR / "data_batch_2"
    write_pickle(path, {b"data": _Exploit(target), b"labels": []})
    with pytest.raises(CIFARFormatError, match="refusing to load global"):
        load(root, cache=False)
    assert not target.exists()


# ---------------------------------------------------------------------------
# Missing data, download, verification, extraction
# ---------------------------------------------------------------------------


def test_missing_dataset_without_download_says_where_to_put_it(tmp_path):
    empty = tmp_path / "nothing"
    with pytest.raises(CIFARNotFoundError) as info:
        load_cifar10(empty, download=False)
    message = str(info.value)
    for needed in (str(empty), "cifar-10-batches-py", "data_batch_1", "test_batch", "batches.meta",
                   "cifar-10-python.tar.gz", cifar.CIFAR10_URL, cifar.CIFAR10_MD5, "MINIRES_DATA", "--data-dir"):
        assert needed in message, (needed, message)
    assert not empty.exists()  # download=False must not create anything


def test_download_from_file_url_verifies_and_extracts(root, tmp_path, capsys):
    archive = tmp_path / "served" / cifar.ARCHIVE_NAME
    archive.parent.mkdir()
    md5 = make_archive(root, archive)
    target = tmp_path / "fresh"
    data = load_cifar10(target, url=archive.as_uri(), md5=md5, examples_per_batch=N, progress=True)
    ref = expected_arrays(root)
    np.testing.assert_array_equal(data.train_images, ref["train_images"])
    np.testing.assert_array_equal(data.test_labels, ref["test_labels"])
    assert (target / cifar.ARCHIVE_NAME).read_bytes() == archive.read_bytes()
    # Only the verified archive, the extracted directory and the cache: no temporary leftovers.
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [cifar.ARCHIVE_NAME, cifar.BATCH_DIR, "cifar-10-npy-cache"]
    )
    assert "downloading" in capsys.readouterr().err  # the tqdm bar was shown


def test_bad_md5_download_is_deleted_and_never_used(root, tmp_path):
    archive = tmp_path / cifar.ARCHIVE_NAME
    make_archive(root, archive)
    target = tmp_path / "fresh"
    with pytest.raises(CIFARDownloadError) as info:
        load_cifar10(target, url=archive.as_uri(), md5="0" * 32, examples_per_batch=N, progress=False)
    assert "expected " + "0" * 32 in str(info.value) and "deleted" in str(info.value)
    assert listing(target) == []  # neither the archive, nor a temp file, nor extracted data


def test_download_writes_a_temp_file_in_the_target_dir(tmp_path, monkeypatch):
    """The fetch writes into a temp file next to the target; a failure mid-way leaves nothing."""
    target = tmp_path / "fresh"
    seen = {}

    def broken_fetch(url, out, progress=True):
        seen["dir"] = Path(out.name).parent
        seen["name"] = Path(out.name).name
        out.write(b"partial bytes")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(cifar, "fetch_url", broken_fetch)
    with pytest.raises(CIFARDownloadError) as info:
        load_cifar10(target)
    assert seen["dir"] == target and seen["name"] != cifar.ARCHIVE_NAME
    assert listing(target) == []
    # The offline message explains how to set things up by hand.
    message = str(info.value)
    for needed in ("connection reset", "offline", str(target / cifar.ARCHIVE_NAME), cifar.CIFAR10_URL):
        assert needed in message, (needed, message)


def test_archive_placed_by_hand_is_verified_and_extracted_without_network(root, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the archive is already there")

    monkeypatch.setattr(cifar, "fetch_url", no_network)
    target = tmp_path / "manual"
    target.mkdir()
    md5 = make_archive(root, target / cifar.ARCHIVE_NAME)
    data = load_cifar10(target, md5=md5, examples_per_batch=N, download=False)
    np.testing.assert_array_equal(data.train_labels, expected_arrays(root)["train_labels"])
    # With the official md5 the same (synthetic) archive is rejected, and kept for the user to inspect.
    other = tmp_path / "manual2"
    other.mkdir()
    make_archive(root, other / cifar.ARCHIVE_NAME)
    with pytest.raises(CIFARFormatError, match=f"expected {cifar.CIFAR10_MD5}"):
        load_cifar10(other, examples_per_batch=N)
    assert (other / cifar.ARCHIVE_NAME).exists() and not (other / cifar.BATCH_DIR).exists()


def test_an_unreadable_archive_placed_by_hand_is_not_called_incomplete(root, tmp_path, monkeypatch):
    from minires.data import CIFARReadError

    target = tmp_path / "manual"
    target.mkdir()
    make_archive(root, target / cifar.ARCHIVE_NAME)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cifar, "file_md5", lambda path: refused())
    with pytest.raises(CIFARReadError, match="Permission denied") as info:
        load_cifar10(target, examples_per_batch=N, download=False)
    assert cifar.ARCHIVE_NAME in str(info.value) and "Delete" not in str(info.value)
    assert (target / cifar.ARCHIVE_NAME).exists()


def _tar_with(path: Path, root: Path, evil: tarfile.TarInfo, payload: bytes = b"evil") -> None:
    """The synthetic dataset plus one extra member ``evil``."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / cifar.BATCH_DIR, arcname=cifar.BATCH_DIR)
        tar.addfile(evil, io.BytesIO(payload) if evil.isfile() else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


UNSAFE = {
    "dotdot": _member("../escaped.txt"),
    "nested_dotdot": _member("cifar-10-batches-py/../../escaped.txt"),
    "absolute": _member("/tmp/minires-test-escaped-absolute.txt"),
    "symlink_absolute": _member("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"),
    "symlink_outside": _member("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../escaped.txt"),
    "hardlink_outside": _member("cifar-10-batches-py/link", tarfile.LNKTYPE, "../escaped.txt"),
    "device": _member("cifar-10-batches-py/dev", tarfile.CHRTYPE),
}
UNSAFE_REASON = {
    "dotdot": "contains '..'",
    "nested_dotdot": "contains '..'",
    "absolute": "has an absolute path",
    "symlink_absolute": "links to the absolute path '/etc/passwd'",
    "symlink_outside": "links to '../../escaped.txt', outside",
    "hardlink_outside": "links to '../escaped.txt', outside",
    "device": "device file",
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_member_is_rejected_before_extraction(root, tmp_path, case):
    archive = tmp_path / "evil.tar.gz"
    _tar_with(archive, root, UNSAFE[case])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, target)
    assert UNSAFE_REASON[case] in str(info.value) and UNSAFE[case].name in str(info.value)
    assert listing(target) == []  # nothing extracted, staging directory removed
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/minires-test-escaped-absolute.txt").exists()


def test_unsafe_member_is_rejected_through_load(root, tmp_path):
    archive = tmp_path / cifar.ARCHIVE_NAME
    _tar_with(archive, root, UNSAFE["dotdot"])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.'"):
        load_cifar10(target, url=archive.as_uri(), md5=md5, examples_per_batch=N, progress=False)
    assert not (target / cifar.BATCH_DIR).exists() and not (tmp_path / "escaped.txt").exists()


def test_symlink_inside_the_target_passes_the_member_check(tmp_path):
    # The check is about escaping, not about links as such.
    root = tmp_path.resolve()
    cifar._check_member(_member("cifar-10-batches-py/alias", tarfile.SYMTYPE, "data_batch_1"), root)
    cifar._check_member(_member("cifar-10-batches-py/alias", tarfile.LNKTYPE, "cifar-10-batches-py/x"), root)


def test_archive_without_the_batch_directory_is_rejected(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_member("something/else.txt"), io.BytesIO(b"evil"))
    with pytest.raises(CIFARFormatError, match="does not contain a cifar-10-batches-py"):
        extract_archive(archive, tmp_path / "target")
    assert listing(tmp_path / "target") == []


def test_a_full_disk_while_extracting_is_not_called_a_corrupt_archive(tmp_path, monkeypatch):
    import errno

    from minires.data import CIFARReadError

    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_member("cifar-10-batches-py/data_batch_1"), io.BytesIO(b"data"))

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", disk_full)
    with pytest.raises(CIFARReadError, match="No space left on device") as info:
        extract_archive(archive, tmp_path / "target")
    assert "Delete" not in str(info.value) and "may be fine" in str(info.value)
    assert listing(tmp_path / "target") == []  # the staging directory is gone too


# ---------------------------------------------------------------------------
# The .npy cache
# ---------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded a batch file although the cache is valid")

    monkeypatch.setattr(cifar, "read_batch", refuse)


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
    (root / cifar.BATCH_DIR / "data_batch_4").write_bytes((other / cifar.BATCH_DIR / "data_batch_4").read_bytes())
    data = load(root)
    assert not data.from_cache
    np.testing.assert_array_equal(data.train_images[3 * N:4 * N], expected_arrays(other)["train_images"][3 * N:4 * N])
    assert load(root).from_cache  # the refreshed cache is used again


def test_touched_source_invalidates_the_cache(root):
    load(root)
    path = root / cifar.BATCH_DIR / "test_batch"
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
    assert rebuilt["format"] == 2 and sorted(rebuilt["sha256"]) == sorted(cifar._ARRAYS)
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
    batch_dir = root / cifar.BATCH_DIR
    os.chmod(root, 0o555)  # as on the shared, read-only dataset
    try:
        before = listing(root)
        cache_dir = cifar.cache_dir_for(batch_dir)
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
        assert cifar.cache_dir_for(a / cifar.BATCH_DIR) != cifar.cache_dir_for(b / cifar.BATCH_DIR)
        load(a), load(b)
        data_a = load(a)
        assert data_a.from_cache
        np.testing.assert_array_equal(data_a.train_images, expected_arrays(a)["train_images"])
    finally:
        for d in (a, b):
            os.chmod(d, 0o755)


# ---------------------------------------------------------------------------
# The real dataset
# ---------------------------------------------------------------------------


def _real_data_dir() -> Path:
    value = os.environ.get("MINIRES_DATA", "").strip()
    if not value:
        pytest.skip("real CIFAR-10 test skipped: set MINIRES_DATA to the directory that contains "
                    "cifar-10-batches-py/ (CI uses MINIRES_DATA=../shared/data)")
    path = Path(value).expanduser().resolve()
    if not (path / cifar.BATCH_DIR).is_dir():
        pytest.skip(f"real CIFAR-10 test skipped: MINIRES_DATA={value!r} has no cifar-10-batches-py/ "
                    f"(looked in {path})")
    return path


@pytest.mark.slow
def test_real_cifar10_counts_labels_and_dtypes():
    data = load_cifar10(_real_data_dir(), download=False)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10000, 3, 32, 32) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), np.full(10, 1000))
    assert data.classes == CLASS_NAMES
    # Real photos, not noise or zeros: every image has some contrast.
    assert (data.test_images.reshape(10000, -1).std(axis=1) > 1).all()
