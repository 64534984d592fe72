"""Fetch the official CIFAR-10 archive, as torchvision does.

The archive is streamed to a temp file in ``root`` while its MD5 is computed,
and renamed into place only when the MD5 matches: an interrupted or altered
download never leaves a file under the real name.  It is not extracted, since
``load_cifar10`` reads the ``.tar.gz`` directly.
"""
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request

from ..fileio import atomic_write
from .cache import CorruptDataError, file_digest

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CHUNK = 1 << 20


def _progress_bar(total, enabled, name):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name)


def download_cifar10(root, url=CIFAR10_URL, md5=CIFAR10_MD5, progress=True, timeout=60):
    """Download ``url`` into the folder ``root`` and return the file's path.

    The file is named after the URL's last path component
    (``cifar-10-python.tar.gz``).  When it is already there with the right
    MD5, nothing is downloaded.  ``md5=None`` skips the check (tests, mirrors).
    Raises ``CorruptDataError`` on an MD5 mismatch (the partial file is
    removed) and ``OSError`` naming the URL when the download fails.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    filename = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    path = os.path.join(root, filename)
    if os.path.isfile(path) and md5 is not None and file_digest(path, "md5") == md5:
        return path
    h = hashlib.md5(usedforsecurity=False)
    received = 0
    # any error below (network, size, checksum) leaves nothing under ``path``
    with atomic_write(path) as f:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                bar = _progress_bar(total, progress, filename)
                try:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        f.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            # HTTPError's text has the status code; URLError's is in .reason
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
            raise OSError(f"could not download {url}: {reason}") from e
        if total is not None and received != total:
            raise CorruptDataError(f"download of {url} stopped after {received} of {total} "
                                   "bytes; nothing was saved, try again")
        if md5 is not None and h.hexdigest() != md5:
            raise CorruptDataError(f"download of {url} failed its MD5 check: expected {md5}, "
                                   f"got {h.hexdigest()}; nothing was saved (the server may "
                                   "have sent an error page, or the file changed)")
    return path
