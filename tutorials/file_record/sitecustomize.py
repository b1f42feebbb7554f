"""Which repository files a notebook's Python processes used: put on ``PYTHONPATH`` by ``execute.py``.

Python imports ``sitecustomize`` at start-up, so every process the notebook
starts (its kernel, ``python -m minires train`` run as a subprocess, the ranks
under ``mpiexec``) loads this file. It then notes every file it opens for
reading under ``MINIRES_RECORD_ROOT`` (through an audit hook: the result figures
a notebook shows, for example) and, at exit, adds the minires modules it
imported, writing the list to ``MINIRES_RECORD_DIR/<pid>.json``. ``execute.py``
hashes the union: a later change to any of these files marks the notebook's
outputs stale. Without the two variables it does nothing.
"""

import atexit
import json
import os
import sys

_ROOT = os.environ.get("MINIRES_RECORD_ROOT")
_OUT = os.environ.get("MINIRES_RECORD_DIR")
_opened = set()


def _is_read(mode, flags) -> bool:
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    return isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR) == 0


def _audit(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and _is_read(args[1], args[2]):
        _opened.add(os.fspath(args[0]))


def _under_root(path: str):
    path = os.path.realpath(path)
    return path if path.startswith(_ROOT + os.sep) else None


def write_record() -> None:
    """Write this process's files (opened for reading, or imported minires modules) to MINIRES_RECORD_DIR.

    Once per process: the kernel calls it after the last cell, and then not again at its exit.
    """
    atexit.unregister(write_record)
    files = set(_opened)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.split(".")[0] == "minires" and file and file.endswith(".py"):
            files.add(file)
    used = sorted({p for p in map(_under_root, files) if p and os.path.isfile(p)})
    path = os.path.join(_OUT, f"{os.getpid()}.json")
    try:  # whole or not at all: execute.py may be reading the folder
        with open(path + ".tmp", "w") as f:
            json.dump(used, f)
        os.replace(path + ".tmp", path)
    except OSError:  # the folder is gone: execute.py has finished
        pass


if _ROOT and _OUT:
    _ROOT = os.path.realpath(_ROOT)
    sys.addaudithook(_audit)
    atexit.register(write_record)
