"""What can go wrong while getting CIFAR-10, and what the user is told to do about it.

Every error names the file and ends with a fix. The fixes differ on
purpose: "delete it and download it again" is right for a truncated file,
but would throw away a good copy that merely has the wrong permissions, so
a file the operating system refuses to read (:class:`CIFARReadError`) is
never called corrupt (:class:`CIFARFormatError`).

Each class also derives from the built-in exception it refines
(``ValueError``, ``OSError``, ...), so code that catches those still works.
"""

from __future__ import annotations

from pathlib import Path

from .release import ARCHIVE_NAME, BATCH_DIR, CIFAR10_MD5, CIFAR10_URL, ENV_VAR, META_FILE, TEST_FILE, TRAIN_FILES

__all__ = [
    "CIFARError",
    "CIFARFormatError",
    "CIFARReadError",
    "CIFARNotFoundError",
    "CIFARDownloadError",
    "UnsafeArchiveError",
]


class CIFARError(Exception):
    """Base class of every error the CIFAR-10 modules raise on purpose."""


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


def how_to_get_it(data_dir: Path) -> str:
    """The instructions every 'data missing' message ends with."""
    return (
        f"Put the CIFAR-10 python release in {data_dir}: either the extracted directory "
        f"{data_dir / BATCH_DIR}/ (with {', '.join(TRAIN_FILES)}, {TEST_FILE}, {META_FILE}) "
        f"or the archive {data_dir / ARCHIVE_NAME} (md5 {CIFAR10_MD5}), downloaded from "
        f"{CIFAR10_URL} (page: https://www.cs.toronto.edu/~kriz/cifar.html). "
        f"Choose another directory with --data-dir or the {ENV_VAR} environment variable."
    )


def redownload_advice(data_dir: Path) -> str:
    """The fix for a damaged batch file: get a fresh copy."""
    return (
        f"Delete {data_dir / BATCH_DIR} and load again to re-download, or fetch the official "
        f"archive {CIFAR10_URL} yourself and extract it into {data_dir}."
    )


def cannot_read(path: Path, exc: OSError) -> CIFARReadError:
    """The error for a file the OS refuses to read: no advice to delete it."""
    return CIFARReadError(
        f"cannot read {path} ({type(exc).__name__}: {exc.strerror or exc}). The file itself may be "
        "fine: check that it is a regular file and that this user may read it (ls -l), then load again."
    )
