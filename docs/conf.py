"""Sphinx configuration of the minires documentation site.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

``-W`` turns every warning into an error (a broken cross-reference, a public
name without a docstring, a page that fails to execute), ``-n`` (nitpicky)
makes every unresolved reference a warning.  ``make -C docs html`` runs the
same command.  Nothing in the build uses the network (see the choices below).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, ROOT)
# The executed pages import minires (installed) and benchmarks.tables (the
# repository's own folder): the kernels myst-nb starts inherit this variable.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the plots

import minires  # noqa: E402
import apiref  # noqa: E402

# The reference's pages (docs/api/<module>.rst), written from the packages'
# __all__ before Sphinx looks for source files.
apiref.write_pages(HERE)

project = "minires"
author = "the minires authors"
copyright = "2026, the minires authors"
release = version = minires.__version__

extensions = [
    "myst_nb",                     # MyST Markdown pages; executes the student's pages
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",                    # the API reference from the numpydoc-style docstrings
    "mathml",                      # _ext/mathml.py: math rendered at build time
    "rtl",                         # _ext/rtl.py: docs/he/ pages read right to left
]

# --- Pages
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}  # .rst first: autosummary's stubs
root_doc = "index"
exclude_patterns = [
    "_build", "README.md",         # docs/README.md describes this folder, for GitHub
    "guide.ipynb",                 # generated from guide.md for Jupyter (make_notebook.py)
    "screenshots", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store",
]
templates_path = ["_templates"]
myst_enable_extensions = ["dollarmath", "colon_fence", "attrs_block", "attrs_inline"]
myst_heading_anchors = 3           # [text](page.md#a-heading) links resolve (and are checked)
nitpicky = True
# The committed result files (included on Benchmarks) go from a title straight to
# "###" subsections (bench_conv.md, gradflow.md): a skipped level there is fine.
suppress_warnings = ["myst.header"]

# --- Executing the pages (myst-nb): every code cell of guide.md and he/guide.md
# runs at build time; a failing cell fails the build.  The cache only skips a
# page whose code has not changed since the last build in the same folder.
nb_execution_mode = "cache"
nb_execution_cache_path = os.path.join(HERE, "_build", ".jupyter_cache")
nb_execution_timeout = 180
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns = ["testing.md", "train.md", "architecture.md",
                                "benchmarks.md", "index.md", "api/*"]

# --- Math: MathML made at build time (docs/_ext/mathml.py), not MathJax.
# MathJax is a script fetched from a CDN when a page is viewed, so offline (and
# in the headless screenshot) the equations would stay raw TeX.  latex2mathml is
# pure Python from PyPI; browsers render MathML natively.
html_math_renderer = "mathml"

# --- Diagrams: hand-written SVG files in _static/ (the ResBlockConv forward and
# backward, the layer map).  sphinxcontrib-mermaid draws in the browser from
# mermaid's JavaScript, which the CDN serves and PyPI does not ship (its ES
# module also loads dozens of chunks, and a file:// page may not import them),
# so a Mermaid diagram would be blank offline.  An SVG needs no script, renders
# in any browser, and reads the same in the Hebrew page.

# --- API reference
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"         # the docstrings say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False
numpydoc_xref_param_type = False
# GL08: "the object does not have a docstring" -- a public name without one
# fails the build.  The other numpydoc checks (sections, parameter lists) are
# not turned on: the docstrings are prose, in numpydoc's summary + extended
# summary form, and say their parameters in sentences.
numpydoc_validation_checks = {"GL08"}
numpydoc_validation_exclude = {
    r"\.__init__$", r"\.__call__$",
    r"\.forward$", r"\.backward$",  # documented once, by Module's contract
}


def _gl08_only_when_no_source():
    """numpydoc's validate() reads every object's source, for checks not turned
    on here; hypothesis's @composite strategies (minires.testing.cases, ...)
    have none to read.  For those, judge GL08 (the one check on) directly."""
    import numpydoc.numpydoc as npd
    from numpydoc.validate import Validator
    validate = npd.validate

    def validate_or_gl08(doc, *args, **kwargs):
        try:
            return validate(doc, *args, **kwargs)
        except OSError:
            missing = not Validator(doc).raw_doc.strip()
            return {"errors": [("GL08", "The object does not have a docstring")] if missing
                    else []}
    npd.validate = validate_or_gl08


_gl08_only_when_no_source()

def _skip_listed(app, what, name, obj, skip, options):
    module = getattr(obj, "__module__", None)
    if name in apiref.SKIPPED_UNTIL_FIXED.get(module, ()):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_listed)


# References the docstrings make to things outside this site (no intersphinx:
# the build must not need the network).
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|cupy|cp|torch|hypothesis|collections|abc|typing)\..*"),
    (r"py:.*", r"(ndarray|array|array_like|callable|optional|iterable|sequence|dict|list|"
               r"tuple|int|float|bool|str|None|object|module|generator)"),
]

# --- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"minires {version}"
html_static_path = ["_static"]
html_css_files = ["minires.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "guide": [], "he/guide": []}  # the student's pages: the whole width
html_show_sourcelink = False
