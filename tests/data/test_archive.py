"""Safe extraction of the archive (minires.data.archive): nothing may land outside the target."""

from __future__ import annotations

import errno
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from cifar_helpers import N, listing

from minires.data import load_cifar10
from minires.data.archive import check_member, extract_archive
from minires.data.errors import CIFARFormatError, CIFARReadError, UnsafeArchiveError
from minires.data.release import ARCHIVE_NAME, BATCH_DIR


def _tar_with(path: Path, root: Path, evil: tarfile.TarInfo, payload: bytes = b"evil") -> None:
    """The synthetic dataset plus one extra member ``evil``."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / BATCH_DIR, arcname=BATCH_DIR)
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
    archive = tmp_path / ARCHIVE_NAME
    _tar_with(archive, root, UNSAFE["dotdot"])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.'"):
        load_cifar10(target, url=archive.as_uri(), md5=md5, examples_per_batch=N, progress=False)
    assert not (target / BATCH_DIR).exists() and not (tmp_path / "escaped.txt").exists()


def test_symlink_inside_the_target_passes_the_member_check(tmp_path):
    # The check is about escaping, not about links as such.
    root = tmp_path.resolve()
    check_member(_member("cifar-10-batches-py/alias", tarfile.SYMTYPE, "data_batch_1"), root)
    check_member(_member("cifar-10-batches-py/alias", tarfile.LNKTYPE, "cifar-10-batches-py/x"), root)


def test_archive_without_the_batch_directory_is_rejected(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_member("something/else.txt"), io.BytesIO(b"evil"))
    with pytest.raises(CIFARFormatError, match="does not contain a cifar-10-batches-py"):
        extract_archive(archive, tmp_path / "target")
    assert listing(tmp_path / "target") == []


def test_a_full_disk_while_extracting_is_not_called_a_corrupt_archive(tmp_path, monkeypatch):
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
