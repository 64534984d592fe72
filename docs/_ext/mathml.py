"""Math as MathML, made at build time: the site needs no JavaScript and no
network to show its equations.

Sphinx's default, MathJax, is a script loaded from a CDN when the page is
viewed, so a page read offline (or in CI's screenshot) shows raw TeX.  Here
each ``$...$`` / ``$$...$$`` / ``{math}`` node is converted by latex2mathml
(pure Python, from PyPI) into a ``<math>`` element that browsers render
natively (Chromium 109+, Firefox, Safari).
"""
from docutils import nodes
from latex2mathml.converter import convert
from sphinx.errors import ExtensionError


def _mathml(latex, display):
    try:
        return convert(latex, display="block" if display else "inline")
    except Exception as exc:  # a TeX typo fails the build, naming the formula
        raise ExtensionError(f"latex2mathml cannot convert {latex!r}: {exc}") from exc


def html_visit_math(self, node):
    self.body.append(f'<span class="math notranslate nohighlight">'
                     f'{_mathml(node.astext(), display=False)}</span>')
    raise nodes.SkipNode


def html_visit_displaymath(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math notranslate nohighlight"))
    if node.get("number"):
        number = self.builder.env.toc_fignumbers  # noqa: F841 (numbers: not used here)
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    latex = node.astext() if node.get("nowrap") else "\\begin{aligned}" + node.astext() \
        + "\\end{aligned}" if "\\\\" in node.astext() else node.astext()
    self.body.append(_mathml(latex, display=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (html_visit_math, None),
                               (html_visit_displaymath, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
