"""Writing files so that a crash never leaves a half-written one.

A checkpoint, a metrics log or a cached dataset that is cut off halfway by a
crash, a full disk or Ctrl-C must not replace the good file that was there.
The recipe: write everything to a temporary file in the SAME directory
(``os.replace`` is atomic only within one file system), flush and ``fsync`` it
so the bytes are on disk, rename it over the target, then ``fsync`` the
directory so the rename itself survives a power cut. Readers see the old
file or the new one, never a mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_directory"]


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory entry to disk so that a rename inside it is durable.

    Not every platform can open a directory (Windows cannot); there the rename
    is as durable as the OS makes it and this is a no-op.
    """
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically.

    The new file gets the usual permissions (``0o666`` less the umask), not
    the ``0o600`` of a fresh temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a stray temporary file behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of a string."""
    atomic_write_bytes(path, text.encode(encoding))
