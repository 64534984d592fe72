"""One version, in one place: ``minires.__version__``.  `minires --version`,
the installed metadata and freshly built metadata all say the same; the
package ships its LICENSE and says where its changelog is."""
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

import minires
from minires.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_flag_prints_minires_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"minires {minires.__version__}\n"
    out = subprocess.run([sys.executable, "-m", "minires", "--version"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out == f"minires {minires.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", minires.__version__)


def test_pyproject_has_no_second_copy_of_the_version():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "minires.__version__"}


def test_installed_metadata_has_the_version():
    # an editable install records the version when it was installed: reinstall
    # (pip install -e .) after changing minires.__version__
    assert importlib.metadata.version("minires") == minires.__version__


def test_built_metadata_has_the_version_the_license_and_the_urls(tmp_path):
    # the PEP 517 hook pip and `python -m build` call; it writes only into tmp_path.
    # It runs in this venv, so the setuptools here must be what [build-system]
    # asks for: the test extra pins the same bound (checked first).
    import setuptools
    required = re.search(r'requires = \["setuptools>=(\d+)"\]',
                         open(os.path.join(ROOT, "pyproject.toml")).read()).group(1)
    assert int(setuptools.__version__.split(".")[0]) >= int(required)
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    info = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.split()[-1]
    meta = (tmp_path / info / "METADATA").read_text()
    assert re.search(r"^Version: (.*)$", meta, re.M).group(1) == minires.__version__
    assert re.search(r"^License-Expression: MIT$", meta, re.M)
    assert (tmp_path / info / "licenses" / "LICENSE").read_text() == \
        open(os.path.join(ROOT, "LICENSE")).read()
    urls = dict(re.findall(r"^Project-URL: ([^,]+), (.*)$", meta, re.M))
    assert set(urls) == {"Homepage", "Documentation", "Issues", "Changelog"}
    assert urls["Changelog"].endswith("/CHANGELOG.md")
    assert re.search(r"^Provides-Extra: tensorboard$", meta, re.M)


def test_license_is_the_mit_text_and_changelog_lists_this_version():
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the minires authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
    log = open(os.path.join(ROOT, "CHANGELOG.md")).read()
    assert re.search(rf"^## \[{re.escape(minires.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$",
                     log, re.M), "CHANGELOG.md has no section for minires.__version__"
