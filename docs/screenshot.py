"""Screenshots of the student's pages, as a browser shows them.

    python docs/screenshot.py            # builds the site first if it is not built

Renders docs/_build/html/guide.html and he/guide.html in headless Chromium
(Debian's ``chromium`` package: ``apt-get install chromium``) and saves
``docs/screenshots/guide.png`` and ``guide_he.png``: the top of each page,
down to past the ResBlockConv diagram and the first printed backward
numbers, so a look at them shows that the math (MathML), the diagram (SVG) and
the right-to-left layout render without a network.  Run it when those pages
change, look at the pictures, and commit them.  The PNGs are reduced to a
256-colour palette (Pillow) to stay small.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "_build", "html")
OUT = os.path.join(HERE, "screenshots")
PAGES = {"guide.png": "guide.html", "guide_he.png": os.path.join("he", "guide.html")}
WIDTH, HEIGHT = 1280, 3600


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("screenshot.py: no chromium on PATH (Debian: apt-get install chromium)")


def build():
    subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-b", "html",
                    HERE, BUILD], check=True)


def shoot(browser, page, png):
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile, nothing remembered
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--user-data-dir={profile}",
                        "--virtual-time-budget=5000", f"--window-size={WIDTH},{HEIGHT}",
                        f"--screenshot={png}", "file://" + os.path.join(BUILD, page)],
                       check=True, capture_output=True, timeout=120)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as img:
        small = img.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)


def main():
    if not os.path.exists(os.path.join(BUILD, "guide.html")):
        build()
    os.makedirs(OUT, exist_ok=True)
    browser = chromium()
    for name, page in PAGES.items():
        png = os.path.join(OUT, name)
        shoot(browser, page, png)
        print(f"wrote {os.path.relpath(png)} ({os.path.getsize(png) // 1024} KB)")


if __name__ == "__main__":
    main()
