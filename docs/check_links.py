"""Check the built site's internal links (no network: external links are not fetched).

    python docs/check_links.py docs/_build/html

Every ``href`` and ``src`` in every page that is not an external URL must name
a file of the build, and a ``#fragment`` must be an ``id`` in that page.
Sphinx's ``-n`` already fails the build on an unresolved cross-reference;
this catches what it does not see: a Markdown link to a heading that does not
exist, an image or download that was not copied, a hand-written HTML link.
Exits 1, listing every broken link, if there is one.
"""
import os
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and key == "href" and
                                       attrs.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append(attrs[key])


def check(root):
    pages = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("_static", "_sources")]  # the theme's templates
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(folder, name)
                parser = _Page()
                with open(path, encoding="utf-8") as f:
                    parser.feed(f.read())
                pages[os.path.normpath(path)] = parser
    broken = []
    for path, page in sorted(pages.items()):
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue
            target = path if not parts.path else os.path.normpath(
                os.path.join(os.path.dirname(path), unquote(parts.path)))
            if os.path.isdir(target):
                target = os.path.join(target, "index.html")
            if not os.path.exists(target):
                broken.append(f"{os.path.relpath(path, root)}: {link} (no such file)")
            elif parts.fragment and target.endswith(".html") and target in pages \
                    and unquote(parts.fragment) not in pages[target].ids:
                broken.append(f"{os.path.relpath(path, root)}: {link} (no such anchor)")
    return len(pages), broken


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "_build", "html")
    n, broken = check(root)
    for line in broken:
        print(line)
    print(f"checked the internal links of {n} pages: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
