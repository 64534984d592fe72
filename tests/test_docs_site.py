"""The documentation site (docs/, built by Sphinx in .ci/run) and the README,
checked as code where that needs no build: the API reference lists every
public name and each has a docstring; the README stays a short front door
whose first block is the two quick-start commands, and its examples run; the
Hebrew page runs the English page's code; every committed result is on a
page; every command a page shows parses; the internal-link checker works.
What needs Sphinx itself is skipped, with the reason, where it is missing."""
import inspect
import os
import re
import shlex
import sys

import pytest

from tests.test_docs import python_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, os.path.join(DOCS, "_ext"))
sys.path.insert(0, DOCS)
import apiref  # noqa: E402  (docs/_ext/apiref.py: stdlib only)

QUICK_START = [
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[jpeg,plot]" && '
    'minires train --data ../shared/datasets/cifar10-jpeg --time-budget 15 --out runs/quick',
    'pip install -e ".[test]" && python -m pytest',
]


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _fences(text):
    """(language, body) of each ``` fenced block, in order."""
    out, lang, body = [], None, []
    for line in text.splitlines():
        if lang is None and line.startswith("```"):
            lang, body = line[3:].strip(), []
        elif lang is not None and line.strip() == "```":
            out.append((lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def _fenced(text, lang):
    return [body for kind, body in _fences(text) if kind == lang]


# --- the API reference

@pytest.mark.parametrize("module_name", apiref.MODULES)
def test_every_public_name_is_in_the_reference_with_a_docstring(module_name):
    page = apiref._page(module_name)
    names = apiref.public_names(module_name)
    assert names, f"{module_name} has no public names?"
    undocumented = []
    for name in names:
        assert re.search(rf"(^   {re.escape(name)}$|:doc:`{re.escape(module_name)}\.{re.escape(name)}`"
                         rf"|^\.\. py:data:: {re.escape(name)}$)", page, re.M), \
            f"{module_name}.{name} is not on its reference page"
        obj = apiref.resolve(module_name, name)
        if apiref.kind(obj) != "data" and not (obj.__doc__ or "").strip():
            undocumented.append(name)
    assert undocumented == [], f"public names of {module_name} without a docstring: {undocumented}"


def test_functional_ops_have_docstrings_but_the_listed_ones():
    # nn.functional's public names are its modules; their functions and classes
    # are on the reference too (automodule :members:)
    missing = []
    for sub in apiref.public_names("minires.nn.functional"):
        mod = apiref.resolve("minires.nn.functional", sub)
        if not inspect.ismodule(mod):  # reference(), the switch: checked with the other names
            continue
        skipped = apiref.SKIPPED_UNTIL_FIXED.get(mod.__name__, set())
        for name, obj in vars(mod).items():
            if name.startswith("_") or name in skipped:
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod.__name__ \
                    and not (obj.__doc__ or "").strip():
                missing.append(f"{mod.__name__}.{name}")
    assert missing == []


def test_the_reference_index_lists_every_module_page():
    index = _read("docs", "api", "index.md")
    for module_name in apiref.MODULES:
        assert re.search(rf"^{re.escape(module_name)}$", index, re.M), module_name


# --- the README, the front door

def test_readme_is_short():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move text into docs/"


def test_readme_first_block_is_the_two_quick_start_commands():
    readme = _read("README.md")
    first = re.search(r"^```(\w*)\n(.*?)^```", readme, re.S | re.M)
    assert first.group(1) == "bash"
    commands = [l for l in first.group(2).splitlines() if l.strip() and not l.startswith("#")]
    assert commands == QUICK_START
    assert readme.index("## Quick start") < readme.index("## ", readme.index("## Quick start") + 3)


def test_train_page_includes_the_readme_blocks_rather_than_copies():
    page = _read("docs", "train.md")
    readme = _read("README.md")
    for marker in ("quick-start", "install"):
        assert f'start-after: "<!-- {marker} -->"' in page
        assert f"<!-- {marker} -->" in readme and f"<!-- /{marker} -->" in readme
    assert QUICK_START[0] not in page  # included, not pasted


def test_readme_python_examples_run(monkeypatch, tmp_path):
    blocks = _fenced(_read("README.md"), "python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for source in blocks:
        exec(compile(source, "README.md", "exec"), {"__name__": "readme"})


def test_readme_install_block_and_ci_run_are_in_step():
    readme = _read("README.md")
    block = readme[readme.index("<!-- install -->"):readme.index("<!-- /install -->")]
    def extras(pattern, text):
        return {e for group in re.findall(pattern, text, re.M) for e in group.split(",")}
    listed = extras(r'^pip install -e "\.\[([\w,]+)\]"', block)
    ci = extras(r'^pip install -q -e "\.\[([\w,]+)\]"', _read(".ci", "run"))
    assert "docs" in listed and "gpu" in listed
    assert ci == listed - {"gpu"}, "README's Install and .ci/run differ"


def test_readme_links_point_to_files_that_exist():
    readme = _read("README.md")
    links = re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", readme)
    missing = [l for l in links if not os.path.exists(os.path.join(ROOT, l.split("#")[0]))]
    assert links and missing == []


# --- the pages

def _code_cells(path):
    return [src for _, src in python_blocks(_read(*path.split("/")))]


def test_hebrew_page_runs_the_english_pages_code():
    english, hebrew = _code_cells("docs/guide.md"), _code_cells("docs/he/guide.md")
    assert len(english) >= 12
    assert hebrew == english, "docs/he/guide.md's code cells differ from docs/guide.md's"


def test_hebrew_page_has_the_glossary_terms():
    page = _read("docs", "he", "guide.md")
    for term in ("בלוק שיורי", "חיבור דילוג", "בעיית ההתדרדרות", "degradation problem",
                 "residual block", "skip connection"):
        assert term in page, term


def test_every_committed_result_is_on_a_page():
    pages = "".join(_read("docs", name) for name in os.listdir(DOCS) if name.endswith(".md"))
    results = sorted(n for n in os.listdir(os.path.join(ROOT, "benchmarks", "results"))
                     if n.endswith(".md"))
    missing = [n for n in results if f"../benchmarks/results/{n}" not in pages]
    assert missing == [], f"results not included on any docs page: {missing}"


def _minires_commands(text):
    """Each ``minires ...`` line of the page's bash blocks, continuation lines
    joined, comments, prompts and [optional] parts removed."""
    out = []
    blocks = [(b, "") for b in _fenced(text, "bash")] + [(b, "$ ") for b in _fenced(text, "")]
    for block, prompt in blocks:  # a transcript's commands are its "$ " lines
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line.startswith(prompt):
                continue
            line = line[len(prompt):]
            line = re.sub(r"\s+#.*$", "", line)
            if not line.startswith("minires ") or "..." in line:
                continue
            line = re.sub(r"\[[^\]]*\]", "", line)  # [--flag VALUE] / [a|b]: optional parts
            out.append(line)
    return out


@pytest.mark.parametrize("page", ["README.md", "docs/train.md", "docs/guide.md",
                                  "docs/architecture.md", "docs/benchmarks.md"])
def test_every_minires_command_on_a_page_parses(page):
    from minires.cli import build_parser
    commands = _minires_commands(_read(*page.split("/")))
    bad = []
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            bad.append(command)
    assert bad == [], f"{page} shows commands minires does not accept: {bad}"


def test_the_command_finder_finds_commands():
    text = ("```bash\nminires train --data D \\\n   --epochs 2   # two\n```\n"
            "```\n$ minires info\nminires info: not a command, output\n```\n")
    assert _minires_commands(text) == ["minires train --data D --epochs 2", "minires info"]
    assert len(_minires_commands(_read("docs", "train.md"))) >= 15


def test_link_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    from check_links import check
    (tmp_path / "a.html").write_text('<a href="b.html#here">x</a><a href="b.html#gone">y</a>'
                                     '<img src="missing.png"><a href="https://example.org">z</a>')
    (tmp_path / "b.html").write_text('<h1 id="here">b</h1>')
    n, broken = check(str(tmp_path))
    assert n == 2
    assert broken == ["a.html: b.html#gone (no such anchor)", "a.html: missing.png (no such file)"]


# --- what needs Sphinx

def test_site_configuration_builds_offline_and_fails_on_missing_docstrings():
    pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("numpydoc", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("latex2mathml", reason="the docs extra is not installed: pip install -e '.[docs]'")
    namespace = {"__file__": os.path.join(DOCS, "conf.py")}
    exec(compile(_read("docs", "conf.py"), "docs/conf.py", "exec"), namespace)
    assert "GL08" in namespace["numpydoc_validation_checks"]
    assert namespace["nitpicky"] is True
    assert namespace["html_math_renderer"] == "mathml"  # no MathJax from a CDN
    assert "sphinx.ext.intersphinx" not in namespace["extensions"]  # nothing fetched
    assert namespace["nb_execution_raise_on_error"] is True
    from mathml import _mathml
    assert "<math" in _mathml(r"\frac{\partial C}{\partial X} = \mathbb{1}\{Y_2 \ge 0\}", True)
