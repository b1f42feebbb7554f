"""Download the CIFAR-10 archive and check it against the official MD5.

An archive is used only once its MD5 matches the published one, whether
we downloaded it (:func:`download_cifar10`) or the user put it there by
hand (:func:`verify_archive`). MD5 is no defence against an attacker, but
it is the checksum the dataset's authors publish, and it reliably catches
a truncated or garbled download. Unpacking it safely is
:mod:`minires.data.archive`'s job.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from .errors import CIFARDownloadError, CIFARFormatError, cannot_read, how_to_get_it
from .release import ARCHIVE_NAME, CIFAR10_MD5, CIFAR10_URL, resolve_data_dir

__all__ = ["file_md5", "fetch_url", "download_cifar10", "verify_archive"]


def file_md5(path: "str | os.PathLike", chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (the archive is 163 MiB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(archive: Path, md5: str = CIFAR10_MD5) -> None:
    """Check an archive the user placed by hand (our own downloads are verified before they get its name).

    Raises :class:`CIFARReadError` if it cannot be read (it may be fine: it
    is kept) and :class:`CIFARFormatError` if its MD5 is not ``md5``.
    """
    try:
        got = file_md5(archive)
    except OSError as exc:
        raise cannot_read(archive, exc) from exc
    if got != md5:
        raise CIFARFormatError(
            f"{archive} has md5 {got}, expected {md5}: it is incomplete or not the official "
            f"archive. Delete it and download it again from {CIFAR10_URL}."
        )


def fetch_url(url: str, out: BinaryIO, progress: bool = True, chunk_size: int = 1 << 16) -> str:
    """Stream ``url`` into the open binary file ``out``; return the MD5 of what was written.

    Hashing while writing saves reading 163 MiB a second time. A tqdm bar
    shows progress (sized from Content-Length when the server sends it).
    ``file://`` URLs work too, which is how the tests exercise this path
    without a network. Network errors propagate (``urllib.error.URLError``,
    ``OSError``); :func:`download_cifar10` turns them into a clear message.
    """
    from tqdm.auto import tqdm  # imported here: only downloading needs it

    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"downloading {url.rsplit('/', 1)[-1]}", disable=not progress) as bar:
            for chunk in iter(lambda: response.read(chunk_size), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _open_partial_file(data_dir: Path) -> BinaryIO:
    """A new hidden ``.part`` file in ``data_dir`` for the download to go to."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(prefix=f".{ARCHIVE_NAME}.", suffix=".part", dir=data_dir, delete=False)
    except OSError as exc:
        raise CIFARDownloadError(
            f"cannot write the download into {data_dir} ({exc}). " + how_to_get_it(data_dir)
        ) from exc


def _fetch_to_disk(url: str, out: BinaryIO, data_dir: Path, progress: bool) -> str:
    """Download ``url`` into ``out``, flushed to disk; return its MD5."""
    with out:
        try:
            got = fetch_url(url, out, progress=progress)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CIFARDownloadError(
                f"could not download {url} ({type(exc).__name__}: {exc}). "
                "If this machine is offline, download the archive elsewhere and copy it over. "
                + how_to_get_it(data_dir)
            ) from exc
        out.flush()
        os.fsync(out.fileno())  # on disk before it is renamed, so a crash cannot leave a short archive
    return got


def download_cifar10(
    data_dir: "str | os.PathLike | None" = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Download the archive to ``data_dir/cifar-10-python.tar.gz`` and verify it.

    The bytes go to a temporary file in the same directory, which is renamed
    to the final name only after the MD5 matched; a mismatching download is
    deleted. So the final name only ever holds a complete, verified archive,
    even if the process is killed halfway (which can leave a hidden
    ``.cifar-10-python.tar.gz.*.part`` file behind: harmless, delete it).

    Returns the path of the archive. Raises :class:`CIFARDownloadError`
    (network failure, with instructions for an offline setup, or checksum
    mismatch).
    """
    data_dir = resolve_data_dir(data_dir)
    target = data_dir / ARCHIVE_NAME
    out = _open_partial_file(data_dir)
    partial = Path(out.name)
    try:
        got = _fetch_to_disk(url, out, data_dir, progress)
        if got != md5:
            raise CIFARDownloadError(
                f"the file downloaded from {url} has md5 {got}, expected {md5}; it was deleted. "
                "The download was corrupted or the server sent something else: try again, or "
                + how_to_get_it(data_dir)
            )
        os.replace(partial, target)
    finally:
        # Whatever went wrong, never leave a partial or unverified download behind.
        if partial.exists():
            partial.unlink()
    return target
