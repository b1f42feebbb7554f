"""Writing files so that a crash never leaves a half-written one.

A checkpoint, a metrics log or a cached dataset that is cut off halfway by a
crash, a full disk or Ctrl-C must not replace the good file that was there.
The recipe: write everything to a temporary file in the SAME directory
(``os.replace`` is atomic only within one file system), flush and ``fsync`` it
so the bytes are on disk, rename it over the target, then ``fsync`` the
directory so the rename itself survives a power cut. Readers see the old
file or the new one, never a mix.

Renaming a new file over the old one must not change anything else a user
relies on: a symbolic link stays a link (the file it points to is what gets
replaced), and a file keeps its permission bits (a private ``0o600`` file
stays private).
"""

from __future__ import annotations

import errno
import os
import stat
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

    * ``path`` a symbolic link: the file it points to is replaced, the link kept.
    * ``path`` an existing file: its permission bits are kept.
    * ``path`` new: the usual permissions of a new file (``0o666`` less the
      umask, as ``open(path, "w")`` gives), not the ``0o600`` of a temporary file.

    Raises ``FileNotFoundError`` naming the directory when it does not exist.
    """
    # Renaming over a link would replace the link itself with a regular file
    # and leave the file it points to stale; so work on the link's target,
    # in the target's directory (the rename must stay within one file system).
    target = Path(os.path.realpath(path))
    directory = target.parent
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        # Reading the umask means setting it; put it straight back.
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        # mkstemp's own error names the random temporary file, which the user never asked for.
        raise FileNotFoundError(
            errno.ENOENT, f"cannot write {target.name}: no such directory", str(directory)
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a stray temporary file behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of a string."""
    atomic_write_bytes(path, text.encode(encoding))
