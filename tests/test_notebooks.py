"""The tutorial notebooks: their sources, what is committed, and real runs in quick mode.

Each tutorial is a percent-format source ``tutorials/NN_name.py`` paired (by
jupytext, ``tutorials/jupytext.toml``) with ``tutorials/NN_name.ipynb``, which is
committed WITH the outputs of one run of ``tutorials/execute.py``. These tests check

* that every source has its notebook, numbered 01, 02, ... and listed in the README,
  and that each source and its notebook have the same cells (so they cannot drift
  apart: ``jupytext --sync`` brings one up to date with the other);
* that the committed outputs come from one clean top-to-bottom run (execution counts
  1, 2, 3, ..., nothing on stderr, figures present, errors only in the exercise
  check cells), contain no path of the machine that ran them, and -- only with
  ``MINIRES_CHECK_NOTEBOOK_OUTPUTS=1`` -- are not stale: the code cells and the
  minires files the run used (hashes recorded by ``tutorials/execute.py``) have
  not changed since;
* the structure: learning goals first; exercises with hidden solution cells tagged
  ``solution``; "implement it" exercises as a ``stub`` cell (what the learner
  writes, raising ``NotImplementedError``) followed by a ``check`` cell, with the
  solutions outside the notebook, in ``tutorials/solutions/NN_name.py``;
* that the notebooks import only minires, NumPy, matplotlib, IPython and the
  standard library (torch only inside ``try: ... except ImportError``);
* that each notebook runs top to bottom in quick mode (``MINIRES_QUICK=1``,
  ``MPLBACKEND=Agg``) in a fresh ``python3`` kernel, where every check cell FAILS
  against the stubs with an AssertionError telling the learner what to implement;
  and that with the solutions put in place of the stubs every cell runs and
  every check passes. (``tests/test_tutorial_exercises.py`` feeds the checks
  wrong answers.) The runs use copies, so the committed files are never modified.
  ``$MINIRES_DATA`` is passed through: notebooks that need CIFAR-10 use it when it
  is set and fall back to synthetic data otherwise.

Timing is not asserted here (speed belongs in benchmarks); each cell only has a
generous timeout so that a hang fails instead of blocking CI.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
CELL_TIMEOUT = 600  # seconds per cell: a slow shared CI machine, not a speed requirement
ALLOWED_IMPORTS = {"minires", "numpy", "matplotlib", "IPython"}
OPTIONAL_IMPORTS = {"torch"}  # only as a cross-check guarded by `except ImportError`
# What each notebook asks the learner to implement (the names its stub cells define).
EXERCISE_STUBS = {
    "01_autograd": {"neuron_gradients", "Softplus"},
    "02_convolution_im2col": {"my_im2col", "my_col2im"},
    "03_batch_norm": {"bn_backward"},
    "04_residual_blocks": {"MyBasicBlock"},
    "07_data_parallel": {"sync_bn_backward"},
}
# Paths of the machine that executed a notebook have no place in its outputs.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/tmp/|/root/|/home/|/Users/|/private/|/var/folders/|[A-Za-z]:\\)")
STALE_SWITCH = "MINIRES_CHECK_NOTEBOOK_OUTPUTS"


def _load_execute():
    spec = importlib.util.spec_from_file_location("tutorials_execute", TUTORIALS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXECUTE = _load_execute()
NAMES = EXECUTE.notebook_names()


def _read(name: str):
    return nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _text_of(outputs) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _errors(cell) -> list:
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


def _is_solution(cell) -> bool:
    return "solution" in _tags(cell)


# ---------------------------------------------------------------------------
# Sources and notebooks
# ---------------------------------------------------------------------------


def test_every_source_has_its_notebook_numbered_and_listed_in_the_readme():
    sources = sorted(p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    notebooks = sorted(p.stem for p in TUTORIALS.glob("*.ipynb"))
    assert sources == notebooks, "each tutorials/NN_name.py needs its NN_name.ipynb and vice versa"
    assert [int(name[:2]) for name in sources] == list(range(1, len(sources) + 1))
    assert set(EXERCISE_STUBS) <= set(sources)
    readme = (TUTORIALS / "README.md").read_text()
    for name in sources:
        assert f"{name}.ipynb" in readme, f"tutorials/README.md does not list {name}.ipynb"
    config = (TUTORIALS / "jupytext.toml").read_text()
    assert re.search(r'^formats\s*=\s*"ipynb,py:percent"', config, re.M), "the notebooks must be paired"


@pytest.mark.parametrize("name", NAMES)
def test_source_and_notebook_have_the_same_cells(name):
    pytest.importorskip("jupytext", reason="jupytext (pip install jupytext) reads the .py sources")
    source = [EXECUTE.cell_key(c) for c in EXECUTE.read_source(name).cells]
    notebook = [EXECUTE.cell_key(c) for c in _read(name).cells]
    hint = (f"tutorials/{name}.py and tutorials/{name}.ipynb have different cells: after editing one of them, "
            f"run `jupytext --sync tutorials/{name}.py` (it updates the older file from the newer one), "
            f"then re-execute with `python tutorials/execute.py {name[:2]}`")
    for index, (a, b) in enumerate(zip(source, notebook)):
        assert a == b, f"{hint}. First difference at cell {index}:\n.py:    {a!r:.300}\n.ipynb: {b!r:.300}"
    assert len(source) == len(notebook), f"{hint}. {len(source)} cells in the .py, {len(notebook)} in the .ipynb"


# ---------------------------------------------------------------------------
# What is committed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_come_from_one_clean_run(name):
    nb = _read(name)
    cells = _code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "not executed top to bottom in one run"
    for i, cell in enumerate(cells):
        for out in cell.outputs:
            if out.output_type == "error":
                assert "check" in _tags(cell), f"code cell {i} of {name} has an error output: {out.get('ename')}"
            if out.output_type == "stream":
                assert out.name == "stdout", f"code cell {i} of {name} wrote to stderr: {out.text[:300]!r}"
    first = _text_of(cells[0].outputs)
    assert "quick mode: " in first, "the first code cell must say whether quick mode was on"
    images = sum("image/png" in out.get("data", {}) for c in cells for out in c.outputs)
    assert images >= 1, f"{name} has no figure in its committed outputs"
    record = nb.metadata.get("minires", {})
    assert record.get("files_sha256"), f"{name}.ipynb was not executed by tutorials/execute.py (no hashes)"


@pytest.mark.parametrize("name", sorted(EXERCISE_STUBS))
def test_committed_notebook_is_the_learner_version(name):
    # The committed notebook keeps the stubs, so its check cells show the failure a learner sees first.
    for cell in _code_cells(_read(name)):
        if "check" in _tags(cell):
            (error,) = _errors(cell)
            assert error.ename == "AssertionError" and "implement" in error.evalue, (name, error.evalue)


def _strings(node):
    """Every string in a JSON-like structure."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _machine_paths(nb) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = {k: v for k, v in out.items() if k != "data"}
            data["data"] = {k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")}
            for text in _strings(data):
                for match in MACHINE_PATH.finditer(text):
                    found.append(f"cell {i}: ...{text[max(0, match.start() - 60):match.end() + 60]}...")
    for text in _strings(dict(nb.metadata)):
        if MACHINE_PATH.search(text):
            found.append(f"metadata: {text[:200]}")
    return found


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_name_no_path_of_the_machine_that_ran_them(name):
    found = _machine_paths(_read(name))
    assert not found, f"{name}.ipynb shows machine-specific paths:\n" + "\n".join(found[:10])


def test_machine_path_check_catches_what_it_should():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    text = "CIFAR-10 from $MINIRES_DATA; figures in docs/results\n"
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    assert _machine_paths(nb) == []
    for path in ("/work/shared/data", "/tmp/minires-run-x", "/root/.cache/minires", "/home/me/x", "C:\\Users\\me"):
        nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": f"source='{path}'"})]
        assert _machine_paths(nb), path
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="E", evalue="", traceback=["File /tmp/a.py"])]
    assert _machine_paths(nb)


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_not_stale(name):
    if os.environ.get(STALE_SWITCH) != "1":
        pytest.skip(f"set {STALE_SWITCH}=1 to check that the committed outputs of the notebooks match today's "
                    "code (re-execute them with `python tutorials/execute.py`)")
    reasons = EXECUTE.stale_reasons(name)
    assert not reasons, (
        f"the committed outputs of tutorials/{name}.ipynb may be out of date: " + "; ".join(reasons)
        + f". Re-execute it with `MINIRES_DATA=/path/to/data python tutorials/execute.py {name[:2]}` "
        "(the committed notebooks are executed in full mode, with CIFAR-10) and commit the .ipynb."
    )


# ---------------------------------------------------------------------------
# Structure of each notebook
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_notebook_states_goals_and_has_exercises_with_hidden_solutions(name):
    nb = _read(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith(f"# {int(name[:2])}.")
    assert "By the end of this notebook you will understand" in first.source

    solutions = [i for i, c in enumerate(nb.cells) if _is_solution(c)]
    exercises = sum(c.source.count("**Exercise ") for c in nb.cells if c.cell_type == "markdown")
    assert solutions, f"{name} has no solution cells"
    assert exercises == len(solutions), f"{name}: {exercises} exercises but {len(solutions)} solutions"
    for i in solutions:
        cell = nb.cells[i]
        assert cell.cell_type == "code"
        assert cell.source.startswith("# Solution")
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True
        note = nb.cells[i - 1]
        assert note.cell_type == "markdown" and "**Solution**" in note.source
        assert "**Exercise " in nb.cells[i - 2].source, "a solution must follow its exercise"
    # Only solutions are hidden: the lesson itself is meant to be read.
    hidden = [i for i, c in enumerate(nb.cells) if c.metadata.get("jupyter", {}).get("source_hidden")]
    assert hidden == solutions


@pytest.mark.parametrize("name", NAMES)
def test_each_stub_is_followed_by_its_check_and_has_a_solution_outside_the_notebook(name):
    nb = _read(name)
    stubs = [i for i, c in enumerate(nb.cells) if "stub" in _tags(c)]
    checks = [i for i, c in enumerate(nb.cells) if "check" in _tags(c)]
    names = set()
    for i in stubs:
        cell = nb.cells[i]
        defined = EXECUTE.stub_names(cell)
        assert defined, f"stub cell {i} of {name} defines nothing to implement"
        names |= set(defined)
        assert "raise NotImplementedError" in cell.source, f"stub cell {i} of {name} must raise NotImplementedError"
        assert "check" in _tags(nb.cells[i + 1]), f"stub cell {i} of {name} must be followed by its check cell"
        assert "raises-exception" in _tags(nb.cells[i + 1]), "a check cell fails on purpose until the stub is done"
        assert nb.cells[i - 1].cell_type == "markdown" and all(f"`{n}" in nb.cells[i - 1].source for n in defined), (
            f"the text before stub cell {i} of {name} must name what to implement: {defined}")
        EXECUTE.solution_source(name, defined)  # raises when tutorials/solutions/ lacks one of them
    assert [i + 1 for i in stubs] == checks, f"{name}: every check cell follows a stub, and only there"
    assert names == EXERCISE_STUBS.get(name, set())
    for i in checks:
        assert "raise AssertionError" in nb.cells[i].source or "assert " in nb.cells[i].source


def _imports(tree: ast.AST):
    """(module root, guarded by `except ImportError`) for every import in ``tree``."""

    def guarded(handlers) -> bool:
        names = set()
        for h in handlers:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            names |= {t.id for t in types if isinstance(t, ast.Name)}
        return bool(names & {"ImportError", "ModuleNotFoundError"})

    found = []

    def visit(node, protected):
        if isinstance(node, ast.Try):
            inner = protected or guarded(node.handlers)
            for child in node.body:
                visit(child, inner)
            for part in (node.handlers, node.orelse, node.finalbody):
                for child in part:
                    visit(child, protected)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], protected) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0] if node.level == 0 else ".", protected))
        for child in ast.iter_child_nodes(node):
            visit(child, protected)

    visit(tree, False)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_notebook_imports_only_minires_numpy_matplotlib(name):
    stdlib = set(sys.stdlib_module_names)
    for cell in _code_cells(_read(name)):
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for root, protected in _imports(ast.parse(source)):
            if root in OPTIONAL_IMPORTS:
                assert protected, f"{name}: `import {root}` must be inside try/except ImportError"
            else:
                assert root in ALLOWED_IMPORTS or root in stdlib, f"{name} imports {root!r}"


def test_import_checker_catches_what_it_should():
    # The checker above must actually flag bad imports, not pass everything.
    bad = _imports(ast.parse("import torch\nfrom tests.data import x\nimport scipy.linalg"))
    assert bad == [("torch", False), ("tests", False), ("scipy", False)]
    good = _imports(ast.parse("try:\n    import torch\nexcept ImportError:\n    torch = None"))
    assert good == [("torch", True)]
    wrong_handler = _imports(ast.parse("try:\n    import torch\nexcept ValueError:\n    pass"))
    assert wrong_handler == [("torch", False)]


# ---------------------------------------------------------------------------
# Real runs in quick mode
# ---------------------------------------------------------------------------


def run_quick(nb, monkeypatch):
    """Execute ``nb`` in place in quick mode, in a fresh kernel whose working directory is tutorials/."""
    # The kernel inherits this process's environment (MINIRES_DATA included, when CI sets it).
    monkeypatch.setenv("MINIRES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on an error outside check cells
    cells = _code_cells(nb)
    assert "quick mode: True" in _text_of(cells[0].outputs), "the kernel did not see MINIRES_QUICK=1"
    assert all(c.execution_count is not None for c in cells)
    return nb


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode_and_its_checks_reject_the_stubs(name, monkeypatch):
    before = (TUTORIALS / f"{name}.ipynb").read_bytes()
    nb = run_quick(_read(name), monkeypatch)
    for i, cell in enumerate(nb.cells):
        errors = _errors(cell)
        if "check" in _tags(cell):
            assert errors, f"check cell {i} of {name} PASSED against the stub: it cannot tell a missing answer"
            (error,) = errors
            assert error.ename == "AssertionError", f"check cell {i} of {name} failed badly: {error.ename}"
            assert "implement" in error.evalue, f"check cell {i} must tell the learner what to implement"
        else:
            assert not errors, f"cell {i} of {name} raised {errors[0].ename}"
    assert (TUTORIALS / f"{name}.ipynb").read_bytes() == before, "the committed notebook was modified"


@pytest.mark.parametrize("name", sorted(EXERCISE_STUBS))
def test_notebook_runs_with_the_solutions_and_every_check_passes(name, monkeypatch):
    nb = EXECUTE.inject_solutions(_read(name), name)
    for cell in nb.cells:  # here no cell may fail, check cells included
        if "raises-exception" in _tags(cell):
            cell.metadata["tags"].remove("raises-exception")
    run_quick(nb, monkeypatch)
    checks = [c for c in nb.cells if "check" in _tags(c)]
    assert checks
    for cell in checks:
        assert "check passed" in _text_of(cell.outputs), f"a check of {name} printed no 'check passed'"


def test_solutions_are_injected_by_name():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("def my_im2col(x):\n    raise NotImplementedError", metadata={"tags": ["stub"]}),
        nbformat.v4.new_code_cell("print(1)", metadata={"tags": ["check"]}),
    ])
    solved = EXECUTE.inject_solutions(nb, "02_convolution_im2col")
    assert "NotImplementedError" not in solved.cells[0].source
    assert "def my_im2col(" in solved.cells[0].source and "def my_col2im(" not in solved.cells[0].source
    assert solved.cells[1].source == "print(1)" and nb.cells[0].source.startswith("def my_im2col(x)")
    with pytest.raises(KeyError, match="does not define"):
        EXECUTE.solution_source("02_convolution_im2col", ["no_such_function"])


def test_staleness_record_is_what_execute_writes():
    # The hashes compare like for like: the record's paths are repository-relative files, the library's among them.
    for name in NAMES:
        record = _read(name).metadata.get("minires", {})
        files = record.get("files_sha256", {})
        assert "minires/__init__.py" in files, (name, sorted(files)[:5])
        for relative in files:
            assert (ROOT / relative).is_file() and not relative.endswith(".ipynb"), relative
        assert json.dumps(record).count("/work/") == 0


def test_the_record_holds_files_used_by_the_programs_a_notebook_runs(tmp_path):
    """A subprocess's imports and the repository files a cell reads are recorded; files it writes are not."""
    written = tmp_path / "written.txt"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import subprocess, sys, pathlib\n"
        "subprocess.run([sys.executable, '-c', 'import minires.cli.train'], check=True)\n"
        "print(len(pathlib.Path('../docs/results/README.md').read_text()) > 0)\n"
        f"pathlib.Path({str(written)!r}).write_text('output')\n"
    )])
    nb.metadata["kernelspec"] = dict(EXECUTE.KERNEL)
    files = EXECUTE.execute(nb, quick=True).metadata["minires"]["files_sha256"]
    assert "minires/cli/train.py" in files  # imported only by the subprocess, never by the kernel
    assert "docs/results/README.md" in files  # read by the kernel
    assert not any("written" in f or f.startswith("tutorials/file_record") for f in files), sorted(files)
    assert files["docs/results/README.md"] == EXECUTE.sha256_of(ROOT / "docs/results/README.md")
