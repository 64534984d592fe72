"""docs/guide.ipynb cannot rot either: its cells are the ones docs/make_notebook.py
makes from the current docs/guide.md, it is stored with its plots inline,
and it runs from top to bottom in a fresh Jupyter kernel."""
import importlib.util
import os

import pytest

for _name in ("jupytext", "nbformat", "nbclient", "ipykernel", "matplotlib"):
    pytest.importorskip(_name)
import nbformat  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "docs", "guide.md")
NOTEBOOK = os.path.join(REPO, "docs", "guide.ipynb")


def _make_notebook():
    spec = importlib.util.spec_from_file_location(
        "make_notebook", os.path.join(REPO, "docs", "make_notebook.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def _images(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]


def test_notebook_has_the_guides_cells():
    with open(GUIDE, encoding="utf-8") as f:
        expected = _make_notebook().build_notebook(f.read())
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert _cells(stored) == _cells(expected), \
        "docs/guide.ipynb is out of date: run python docs/make_notebook.py"
    code = [src for kind, src in _cells(stored) if kind == "code"]
    assert len(code) >= 6 and not [s for s in code if s.startswith("%%")]  # no shell cells


def test_stored_notebook_shows_its_plot():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(c.execution_count for c in stored.cells if c.cell_type == "code"), \
        "store it executed: python docs/make_notebook.py"
    assert len(_images(stored)) >= 1


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    make = _make_notebook()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    make.execute(nb, str(tmp_path), timeout=120)  # a failing cell raises CellExecutionError
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    assert len(_images(nb)) >= 1  # the plot is drawn inline
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    assert "skip part: exact formula and finite differences agree" in printed
