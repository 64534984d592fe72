"""The guide cannot rot: every code cell of docs/guide.md (the student's page,
a MyST notebook the site executes) runs, in order, in one namespace (as a
reader pasting them into one session would), and every file the guide links
to exists.  The same cells run when the site is built (myst-nb); this test
keeps them checked without Sphinx."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "docs", "guide.md")
# Written by the heavy benchmark (about an hour), which CI does not run.
MADE_BY_HEAVY_BENCHMARK = ("benchmarks/results/degradation",)


def python_blocks(text):
    """(first line number, source) of each ```python fenced block and each
    MyST-NB ```{code-cell} ipython3 cell."""
    out = []
    for m in re.finditer(r"^```(?:python|\{code-cell\} ipython3)[ \t]*\n(.*?)^```[ \t]*$",
                         text, re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


def test_guide_python_blocks_run_in_order(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    with open(GUIDE, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 12, "the guide lost its code"
    monkeypatch.chdir(tmp_path)  # whatever a snippet writes lands here
    monkeypatch.syspath_prepend(REPO)
    namespace = {"__name__": "guide"}
    for line, source in blocks:
        code = compile(source, f"{GUIDE}:{line}", "exec")  # tracebacks name the guide's line
        exec(code, namespace)


def test_guide_links_point_to_files_that_exist():
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", text)
    assert links, "the guide links to no results"
    missing = []
    for link in links:
        path = os.path.normpath(os.path.join(os.path.dirname(GUIDE), link.split("#")[0]))
        rel = os.path.relpath(path, REPO).replace(os.sep, "/")
        if not os.path.exists(path) and not rel.startswith(MADE_BY_HEAVY_BENCHMARK):
            missing.append(link)
    assert not missing, f"docs/guide.md links to missing files: {missing}"


def test_python_blocks_parser():
    text = "a\n```python\nx = 1\n```\nb\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = 2\n")]
    cell = "```{code-cell} ipython3\nz = 3\n```\n"
    assert python_blocks(text + cell) == [(3, "x = 1\n"), (10, "y = 2\n"), (13, "z = 3\n")]
