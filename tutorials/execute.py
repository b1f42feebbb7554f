"""Execute the tutorial notebooks and record what their outputs were computed from.

Each notebook has two files: ``NN_name.py``, a percent-format source (the file to
read, review and edit; ``# %%`` starts a code cell, ``# %% [markdown]`` a text
cell), and ``NN_name.ipynb``, the same cells with the outputs of one clean run, so
that the figures show on a code-hosting site. The two are paired by jupytext
(``tutorials/jupytext.toml``); ``jupytext --sync`` copies an edit from either one
to the other, but only this script (re)computes outputs.

Usage, from the repository root::

    python tutorials/execute.py               # every notebook, full mode (as committed)
    python tutorials/execute.py 03 05         # only these (matched by number or name)
    python tutorials/execute.py --quick       # MINIRES_QUICK=1: small sizes, seconds each
    python tutorials/execute.py --check       # run nothing; list notebooks whose outputs are stale
    python tutorials/execute.py 02 --solutions /tmp/solved
                                              # the stubs replaced by tutorials/solutions/, written
                                              # to /tmp/solved (never over the committed notebook)

Set ``MINIRES_DATA`` to the directory containing ``cifar-10-batches-py/`` first:
notebooks 5, 6 and 7 fall back to synthetic data without it.

What an execution records, in the notebook's metadata under ``"minires"``:

* ``code_cells_sha256``: a hash of the sources of the code cells that ran, so
  that a code cell edited after the run (its outputs are then stale) is noticed;
* ``files_sha256``: one SHA-256 per repository file that the notebook's Python
  processes used, as paths relative to the repository root: every minires
  module imported by the kernel or by a program the notebook ran
  (``python -m minires train`` as a subprocess, ranks under ``mpiexec``), and
  every tracked file they read (the result figures notebook 06 shows).
  ``file_record/sitecustomize.py``, put on ``PYTHONPATH`` during the run, makes
  each process list them. A change to any of those files may change the outputs;
* ``execution``: whether quick mode was on.

``tests/test_notebooks.py`` recomputes both hashes and fails, naming the changed
files and this command, when they differ (with ``MINIRES_CHECK_NOTEBOOK_OUTPUTS=1``;
``--check`` does the same without pytest).

Exercise stubs: a code cell tagged ``stub`` defines the functions or classes a
learner writes (their bodies raise ``NotImplementedError``); the cell tagged
``check`` after it fails with an ``AssertionError`` until they are right. The
solutions live in ``tutorials/solutions/NN_name.py`` under the same names;
:func:`inject_solutions` puts them in place of the stubs (``--solutions`` and the
tests use it). The committed notebooks are executed with the stubs, as a learner
first sees them: their check cells show the failure, and the cells after them
use minires's own implementation, so everything else runs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOLUTIONS = HERE / "solutions"
METADATA_KEY = "minires"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

# Every Python process a notebook starts loads RECORDER/sitecustomize.py, which lists the repository files it
# used; the kernel writes its list when this cell runs after the notebook's last one (the cell is not kept).
RECORDER = HERE / "file_record"
RECORD_PROBE = """\
import sitecustomize as _recorder
assert hasattr(_recorder, "write_record"), "tutorials/file_record is not on the kernel's PYTHONPATH"
_recorder.write_record()
"""


# ---------------------------------------------------------------------------
# The notebooks and their sources
# ---------------------------------------------------------------------------


def notebook_names() -> list[str]:
    """The numbered notebooks, e.g. ``["01_autograd", ...]``: every ``NN_*.py`` source in tutorials/."""
    return sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.py"))


def read_source(name: str):
    """The cells of ``tutorials/<name>.py`` as an nbformat notebook (no outputs)."""
    import jupytext

    nb = jupytext.read(HERE / f"{name}.py", fmt="py:percent")
    nb.metadata = {"kernelspec": dict(KERNEL), "language_info": {"name": "python"}}
    stem = name.split("_")[0]
    for index, cell in enumerate(nb.cells):
        cell.id = f"nb{stem}-{index:03d}"  # stable ids: re-executing gives small diffs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def read_notebook(name: str):
    import nbformat

    return nbformat.read(HERE / f"{name}.ipynb", as_version=4)


def cell_key(cell) -> tuple:
    """What must be equal in a source and its notebook: kind, text, and the metadata the source keeps."""
    return (cell.cell_type, cell.source, tuple(cell.metadata.get("tags", ())),
            json.dumps(cell.metadata.get("jupyter", {}), sort_keys=True))


def code_cells_digest(nb) -> str:
    """SHA-256 of the sources of the notebook's code cells (what the outputs depend on; the text does not)."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_reasons(name: str) -> list[str]:
    """Why the committed outputs of ``<name>.ipynb`` may not be what its code gives today (empty: up to date)."""
    nb = read_notebook(name)
    record = nb.metadata.get(METADATA_KEY)
    if not record or "files_sha256" not in record or "code_cells_sha256" not in record:
        return ["it was never executed by tutorials/execute.py (no 'minires' record in its metadata)"]
    reasons = []
    if record["code_cells_sha256"] != code_cells_digest(nb):
        reasons.append("a code cell was edited after the last execution")
    changed, missing = [], []
    for relative, digest in sorted(record["files_sha256"].items()):
        path = ROOT / relative
        if not path.is_file():
            missing.append(relative)
        elif sha256_of(path) != digest:
            changed.append(relative)
    if changed:
        reasons.append("files it used changed since the last execution: " + ", ".join(changed))
    if missing:
        reasons.append("files it used no longer exist: " + ", ".join(missing))
    return reasons


# ---------------------------------------------------------------------------
# Exercise stubs and their solutions
# ---------------------------------------------------------------------------


def _definitions(source: str) -> dict[str, str]:
    """Top-level ``def``/``class`` name -> its source text (decorators included)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found[node.name] = "\n".join(lines[first - 1:node.end_lineno])
    return found


def stub_names(cell) -> list[str]:
    """The names a stub cell asks the learner to write (its top-level functions and classes)."""
    return list(_definitions(cell.source))


def solution_source(name: str, names: list[str]) -> str:
    """The definitions of ``names`` from ``tutorials/solutions/<name>.py``, as one cell's source."""
    path = SOLUTIONS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{name} has stub cells but no solutions file {path.relative_to(ROOT)}")
    available = _definitions(path.read_text())
    absent = [n for n in names if n not in available]
    if absent:
        raise KeyError(f"{path.relative_to(ROOT)} does not define {', '.join(absent)}")
    header = f"# The solution from tutorials/solutions/{path.name}, put in place of the stub by tutorials/execute.py"
    return "\n\n\n".join([header + "\n" + available[names[0]]] + [available[n] for n in names[1:]])


def inject_solutions(nb, name: str):
    """A copy of ``nb`` with every ``stub`` cell replaced by the solutions of the names it defines."""
    import copy

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and "stub" in cell.metadata.get("tags", ()):
            cell.source = solution_source(name, stub_names(cell))
    return nb


# ---------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------


def _tracked_files() -> set | None:
    """The files git tracks in this checkout (repository-relative), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.decode().split("\0")) - {""}


def used_files(record_dir: Path) -> dict[str, str]:
    """The files the processes listed in ``record_dir``, with their SHA-256: tracked files only (not the
    run's own outputs), and neither the notebooks nor the recorder itself."""
    used = set()
    for listing in record_dir.glob("*.json"):
        used.update(Path(p).relative_to(ROOT).as_posix() for p in json.loads(listing.read_text()))
    tracked = _tracked_files()
    keep = {p for p in used if (tracked is None or p in tracked) and not p.endswith(".ipynb")
            and not p.startswith("tutorials/file_record/")}
    return {p: sha256_of(ROOT / p) for p in sorted(keep)}


def _set_environment(values: dict) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(**values: str | None):
    """Set (or, with None, remove) environment variables for the duration; the kernel inherits them."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def execute(nb, quick: bool, cell_timeout: int = 1800):
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel started in tutorials/; record hashes; return it.

    Cells tagged ``raises-exception`` (the exercise checks) may fail; any other error stops the run.
    """
    import nbformat
    from nbclient import NotebookClient

    probe = nbformat.v4.new_code_cell(RECORD_PROBE)
    python_path = os.pathsep.join(filter(None, [str(RECORDER), os.environ.get("PYTHONPATH")]))
    nb.cells.append(probe)
    # Figures are embedded as PNGs only with matplotlib's inline backend: a global MPLBACKEND
    # (e.g. Agg from CI settings) would suppress them.
    with tempfile.TemporaryDirectory() as record_dir, _environment(
            MINIRES_QUICK="1" if quick else "0", MPLBACKEND=None, PYTHONPATH=python_path,
            MINIRES_RECORD_ROOT=str(ROOT), MINIRES_RECORD_DIR=record_dir):
        try:
            client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", record_timing=False,
                                    resources={"metadata": {"path": str(HERE)}})
            client.execute()
        finally:
            nb.cells.remove(probe)
        files = used_files(Path(record_dir))
    nb.metadata[METADATA_KEY] = {
        "execution": {"quick_mode": quick},
        "code_cells_sha256": code_cells_digest(nb),
        "files_sha256": files,
    }
    return nb


def write_notebook(nb, path: Path) -> None:
    """Write ``nb`` atomically (a reader never sees half a file)."""
    import nbformat

    nbformat.validate(nb)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(nbformat.writes(nb), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unsynced_notebook_edits(name: str) -> bool:
    """True when <name>.ipynb has cells that <name>.py lacks and is the newer file (edited in Jupyter
    without jupytext): executing from the .py would throw those edits away."""
    ipynb, source = HERE / f"{name}.ipynb", HERE / f"{name}.py"
    if not ipynb.is_file():
        return False
    same = [cell_key(c) for c in read_notebook(name).cells] == [cell_key(c) for c in read_source(name).cells]
    return not same and ipynb.stat().st_mtime > source.stat().st_mtime


def _select(patterns: list[str]) -> list[str]:
    names = notebook_names()
    if not patterns:
        return names
    chosen = []
    for pattern in patterns:
        pattern = Path(pattern).stem  # accept "03", "03_batch_norm", "tutorials/03_batch_norm.py"
        matches = [n for n in names if n.startswith(pattern) or pattern in n]
        if not matches:
            raise SystemExit(f"no notebook matches {pattern!r}; notebooks: {', '.join(names)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--quick", action="store_true", help="run with MINIRES_QUICK=1 (small sizes)")
    parser.add_argument("--check", action="store_true", help="execute nothing; report stale outputs (exit 1 if any)")
    parser.add_argument("--solutions", metavar="DIR", type=Path,
                        help="replace the exercise stubs by tutorials/solutions/ and write the results to DIR")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    args = parser.parse_args(argv)
    names = _select(args.notebooks)

    if args.check:
        stale = {name: stale_reasons(name) for name in names}
        for name, reasons in stale.items():
            print(f"{name}.ipynb: " + ("; ".join(reasons) if reasons else "up to date"))
        return 1 if any(stale.values()) else 0

    if args.solutions is not None:
        args.solutions = args.solutions.resolve()
        if args.solutions == HERE:
            raise SystemExit("--solutions must name another directory: the committed notebooks keep the stubs")
        args.solutions.mkdir(parents=True, exist_ok=True)
    for name in names:
        if args.solutions is None and _unsynced_notebook_edits(name):
            raise SystemExit(f"tutorials/{name}.ipynb has edits that tutorials/{name}.py does not have; bring "
                             f"them over first with `jupytext --sync tutorials/{name}.ipynb`, then run this again")
    for name in names:
        start = time.perf_counter()
        nb = read_source(name)
        if args.solutions is not None:
            nb = inject_solutions(nb, name)
        execute(nb, quick=args.quick, cell_timeout=args.timeout)
        target = (args.solutions or HERE) / f"{name}.ipynb"
        write_notebook(nb, target)
        if args.solutions is None:
            os.utime(HERE / f"{name}.py")  # the pair stays in sync for jupytext: the source is not older
        mode = "quick mode" if args.quick else "full mode"
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: {mode}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
