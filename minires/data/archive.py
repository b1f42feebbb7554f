"""Unpack the CIFAR-10 archive without letting it write outside the data directory.

A tar archive can contain members such as ``../../.bashrc``, absolute
paths, links that point outside the target directory, or device files.
Every member is checked before anything is extracted (:func:`check_member`),
and Python's ``filter="data"`` is used as a second line of defence where
available. Extraction happens in a hidden staging directory that is moved
into place only when complete, so an interrupted extraction never looks
like a dataset.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from .errors import CIFARFormatError, CIFARReadError, UnsafeArchiveError
from .release import BATCH_DIR, CIFAR10_URL

__all__ = ["check_member", "extract_archive"]


def _is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or inside it (both already absolute and normalised)."""
    return path == root or root in path.parents


def check_member(member: tarfile.TarInfo, root: Path) -> None:
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


def _extract_checked(archive: Path, staging: Path, data_dir: Path) -> None:
    """Extract every member of ``archive`` into ``staging`` once all of them passed :func:`check_member`."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member, staging)
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


def extract_archive(archive: "str | os.PathLike", data_dir: "str | os.PathLike") -> Path:
    """Safely extract the CIFAR-10 archive into ``data_dir``; return the batch directory.

    One unsafe member rejects the whole archive before anything is written.
    Extraction goes to a temporary directory next to the target, and
    ``cifar-10-batches-py`` is moved into place only when complete.
    """
    archive = Path(archive)
    data_dir = Path(os.path.abspath(data_dir))
    final = data_dir / BATCH_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cifar-extract.", dir=data_dir)).resolve()
    try:
        _extract_checked(archive, staging, data_dir)
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
