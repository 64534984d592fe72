"""Generate docs/guide.ipynb from docs/guide.md (the Markdown is the source).

    python docs/make_notebook.py              # regenerate and execute (outputs stored)
    python docs/make_notebook.py --no-execute # cells only

guide.md is a MyST Markdown notebook (the format myst-nb executes when the
site is built): jupytext turns every ```{code-cell} block into a code cell and
the text between into Markdown cells; the ```bash blocks (long commands:
`minires gradflow` on real data, an hour-long benchmark) stay Markdown, and
the site's own directives (the hidden table of contents) are left out.  The notebook is stored executed, so its plots show inline wherever
it is viewed (GitHub included) before anyone runs it.  tests/test_notebook.py
checks that the notebook's cells are the ones this script makes from the
current guide, and executes it.
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GUIDE = os.path.join(HERE, "guide.md")
NOTEBOOK = os.path.join(HERE, "guide.ipynb")
HEADER = ("*This notebook is generated from [guide.md](guide.md) by "
          "`python docs/make_notebook.py`: edit the Markdown, then regenerate.  Run the cells "
          "in order (needs `pip install 'minires[notebook]'`, or `minires[plot]` and Jupyter).*")
# the site's table-of-contents directive: no meaning in Jupyter
SITE_ONLY = re.compile(r"^```\{toctree\}.*?^```[ \t]*$\n?", re.S | re.M)
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def build_notebook(text):
    """The notebook (nbformat v4, not executed) of the guide's Markdown ``text``."""
    import jupytext
    import nbformat
    parsed = jupytext.reads(text, fmt="md:myst")
    cells = [nbformat.v4.new_markdown_cell(HEADER)]
    for cell in parsed.cells:
        src = cell.source
        if cell.cell_type == "code" and src.startswith("%%"):
            magic, _, body = src.partition("\n")
            cell = nbformat.v4.new_markdown_cell(f"```{magic[2:].strip()}\n{body}\n```")
        if cell.cell_type == "markdown":
            cell.source = SITE_ONLY.sub("", cell.source).strip()
            if not cell.source:
                continue
        if cell.cell_type == "markdown" and cells[-1].cell_type == "markdown" and len(cells) > 1:
            cells[-1].source += "\n\n" + cell.source
        elif cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(cell.source))
        else:
            cells.append(nbformat.v4.new_code_cell(src))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes nothing
        cell.id = f"cell-{i}"
    return nb


def execute(nb, cwd, timeout=300):
    """Run every cell in a fresh kernel started in ``cwd``; returns ``nb`` with outputs."""
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": cwd}}).execute()
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-execute", action="store_true", help="store the cells without outputs")
    args = p.parse_args(argv)
    import tempfile
    import nbformat
    sys.path.insert(0, os.path.dirname(HERE))
    from minires.fileio import atomic_write_bytes
    with open(GUIDE, encoding="utf-8") as f:
        nb = build_notebook(f.read())
    if not args.no_execute:
        # the kernel imports benchmarks.tables (the committed results' tables)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        with tempfile.TemporaryDirectory() as tmp:  # whatever a cell writes lands there
            execute(nb, tmp)
    atomic_write_bytes(NOTEBOOK, (nbformat.writes(nb) + "\n").encode("utf-8"))
    print(f"wrote {os.path.relpath(NOTEBOOK)} ({len(nb.cells)} cells"
          f"{'' if args.no_execute else ', executed'})")


if __name__ == "__main__":
    main()
