"""Downloading and verifying the archive (minires.data.download).

Downloads are served from ``file://`` URLs or a monkeypatched fetch
function, because CI has no network.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
from cifar_helpers import N, listing, make_archive
from synthetic_cifar import expected_arrays

from minires.data import download, load_cifar10
from minires.data.errors import CIFARDownloadError, CIFARFormatError, CIFARReadError
from minires.data.release import ARCHIVE_NAME, BATCH_DIR, CIFAR10_MD5, CIFAR10_URL


def test_download_from_file_url_verifies_and_extracts(root, tmp_path, capsys):
    archive = tmp_path / "served" / ARCHIVE_NAME
    archive.parent.mkdir()
    md5 = make_archive(root, archive)
    target = tmp_path / "fresh"
    data = load_cifar10(target, url=archive.as_uri(), md5=md5, examples_per_batch=N, progress=True)
    ref = expected_arrays(root)
    np.testing.assert_array_equal(data.train_images, ref["train_images"])
    np.testing.assert_array_equal(data.test_labels, ref["test_labels"])
    assert (target / ARCHIVE_NAME).read_bytes() == archive.read_bytes()
    # Only the verified archive, the extracted directory and the cache: no temporary leftovers.
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [ARCHIVE_NAME, BATCH_DIR, "cifar-10-npy-cache"]
    )
    assert "downloading" in capsys.readouterr().err  # the tqdm bar was shown


def test_bad_md5_download_is_deleted_and_never_used(root, tmp_path):
    archive = tmp_path / ARCHIVE_NAME
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

    monkeypatch.setattr(download, "fetch_url", broken_fetch)
    with pytest.raises(CIFARDownloadError) as info:
        load_cifar10(target)
    assert seen["dir"] == target and seen["name"] != ARCHIVE_NAME
    assert listing(target) == []
    # The offline message explains how to set things up by hand.
    message = str(info.value)
    for needed in ("connection reset", "offline", str(target / ARCHIVE_NAME), CIFAR10_URL):
        assert needed in message, (needed, message)


def test_archive_placed_by_hand_is_verified_and_extracted_without_network(root, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the archive is already there")

    monkeypatch.setattr(download, "fetch_url", no_network)
    target = tmp_path / "manual"
    target.mkdir()
    md5 = make_archive(root, target / ARCHIVE_NAME)
    data = load_cifar10(target, md5=md5, examples_per_batch=N, download=False)
    np.testing.assert_array_equal(data.train_labels, expected_arrays(root)["train_labels"])
    # With the official md5 the same (synthetic) archive is rejected, and kept for the user to inspect.
    other = tmp_path / "manual2"
    other.mkdir()
    make_archive(root, other / ARCHIVE_NAME)
    with pytest.raises(CIFARFormatError, match=f"expected {CIFAR10_MD5}"):
        load_cifar10(other, examples_per_batch=N)
    assert (other / ARCHIVE_NAME).exists() and not (other / BATCH_DIR).exists()


def test_an_unreadable_archive_placed_by_hand_is_not_called_incomplete(root, tmp_path, monkeypatch):
    target = tmp_path / "manual"
    target.mkdir()
    make_archive(root, target / ARCHIVE_NAME)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(download, "file_md5", lambda path: refused())
    with pytest.raises(CIFARReadError, match="Permission denied") as info:
        load_cifar10(target, examples_per_batch=N, download=False)
    assert ARCHIVE_NAME in str(info.value) and "Delete" not in str(info.value)
    assert (target / ARCHIVE_NAME).exists()
