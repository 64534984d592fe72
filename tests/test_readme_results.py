"""Every number the results prose quotes (the README's headline, and the
Benchmarks page of the documentation site, docs/benchmarks.md, whose tables
are the committed files themselves) comes from a committed result file: a
figure with no file behind it (a run nobody kept, a number from an issue, an
old result overwritten since) fails here."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a number worth tracing: one with a decimal point, or three digits or more
# (small integers such as "2 cores" or "batch 64" are settings, not results)
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d{3,})(?![\w.])")


def _results_section():
    readme = open(os.path.join(ROOT, "README.md")).read()
    start = readme.index("\n## Results")
    end = readme.index("\n## ", start + 1)
    page = open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8").read()
    # the {include} directives name result files (bench_budget15, ...): not figures
    page = re.sub(r"^```\{include\}.*?^```$", "", page, flags=re.S | re.M)
    return readme[start:end] + page


# The prose of the pages that quote measurements (code cells and blocks left
# out: their numbers are settings, or outputs the build itself prints).
# docs/performance.md is left out on purpose: it says its figures are the ones
# measured when each choice was made, not committed results.
PROSE_PAGES = ("guide.md", os.path.join("he", "guide.md"), "train.md", "architecture.md")
# Figures cited from the literature, not measured here: He et al. (2016)'s
# ResNet-20 test accuracy.
CITED = {"91.25"}


def _pages_prose():
    text = ""
    for name in PROSE_PAGES:
        page = open(os.path.join(ROOT, "docs", name), encoding="utf-8").read()
        text += re.sub(r"^```.*?^```$", "", page, flags=re.S | re.M)
    return text


def test_every_number_the_pages_quote_is_in_a_result_file():
    prose, results = _pages_prose(), _results_text()
    numbers = set(NUMBER.findall(prose))
    assert len(numbers) > 50  # the pages and the pattern are what this test thinks
    missing = sorted(n for n in numbers if n not in results and n not in CITED)
    assert not missing, (f"the docs pages' prose quotes {missing}, which no file under "
                         "benchmarks/results/ holds: rerun and commit, or remove them")


def _results_text():
    paths = glob.glob(os.path.join(ROOT, "benchmarks", "results", "*"))
    return "\n".join(open(p).read() for p in paths if p.endswith((".md", ".json", ".txt")))


def test_every_number_in_the_results_section_is_in_a_result_file():
    section, results = _results_section(), _results_text()
    numbers = set(NUMBER.findall(section))
    assert len(numbers) > 50  # the section and the pattern are what this test thinks
    missing = sorted(n for n in numbers if n not in results)
    assert not missing, (f"the results prose (README, docs/benchmarks.md) quotes {missing}, which no file under "
                         "benchmarks/results/ holds: rerun and commit, or remove them")


def test_the_check_catches_a_number_without_a_source():
    assert "4242.42" not in _results_text()
    assert NUMBER.findall("minires reached 4242.42% in 1234 s on 2 cores") == ["4242.42", "1234"]
