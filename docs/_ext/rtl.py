"""Right-to-left pages: every page under ``docs/he/`` is wrapped in
``<div class="rtl" dir="rtl" lang="he">``.  The prose then reads right to left,
while _static/minires.css keeps code, its output, math and the diagram left to
right, as they are written.  (A wrapper per page, rather than a directive
around the text, because myst-nb executes only the code cells at a page's top
level, not ones nested inside a directive.)"""

RTL_FOLDERS = {"he/": "he"}


def _wrap(app, pagename, templatename, context, doctree):
    for folder, lang in RTL_FOLDERS.items():
        if pagename.startswith(folder) and "body" in context:
            context["body"] = f'<div class="rtl" dir="rtl" lang="{lang}">{context["body"]}</div>'


def setup(app):
    app.connect("html-page-context", _wrap)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
