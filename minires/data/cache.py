"""Checksums, and the on-disk cache of decoded images.

Decoding 60,000 JPEGs takes seconds; loading the same pixels from an ``.npz``
takes a fraction of one.  So an image folder is decoded once and its arrays
are kept under the cache folder (``$MINIRES_CACHE``, default
``~/.cache/minires``), never next to the data, which may be read-only.

A cache file is keyed by a checksum of its source (the archive's SHA-256, or
for a folder a hash of its member names, sizes and mtimes), so an edited
source is decoded again.  The file also stores a CRC-32 of its own arrays: a
truncated or damaged cache file is detected on load, reported in a warning,
and rebuilt, rather than silently feeding wrong pixels to training.
"""
import hashlib
import os
import warnings
import zlib

import numpy as np

from ..errors import CorruptFileError
from ..fileio import atomic_write

# Bump when the stored layout or the decoding changes: old files then miss.
CACHE_FORMAT = 1
_CHUNK = 1 << 20


class CorruptDataError(CorruptFileError, RuntimeError):
    """A data file (archive, member, download or cache) is truncated, damaged
    or fails its checksum.  The message names the file."""


def resolve_cache_dir(cache_dir=None):
    """The cache folder: ``cache_dir`` if given, else ``$MINIRES_CACHE``, else
    ``~/.cache/minires``."""
    if cache_dir is None:
        cache_dir = os.environ.get("MINIRES_CACHE") or os.path.join("~", ".cache", "minires")
    return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file, read in 1 MiB chunks (a 160 MB archive never sits
    in memory at once)."""
    # usedforsecurity=False keeps md5 usable on FIPS-mode Pythons: it is an
    # integrity check here, not a security one.
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(path):
    """SHA-256 over the sorted relative names, sizes and mtimes of every file
    under ``path``: cheap (no file is read) and changes when any file does."""
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            entries.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n")
    for entry in sorted(entries):
        h.update(entry.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def source_digest(path):
    """The cache key of a data source: ``file_digest`` of a file, or
    ``folder_digest`` of a folder."""
    return folder_digest(path) if os.path.isdir(path) else file_digest(path)


def _arrays_crc(images, labels):
    crc = zlib.crc32(np.ascontiguousarray(images).data)
    return zlib.crc32(np.ascontiguousarray(labels).data, crc)


def cache_file(cache_dir, name, key):
    """Where the decoded arrays of one source live: ``<cache>/decoded/<name>-<key>.npz``."""
    return os.path.join(resolve_cache_dir(cache_dir), "decoded", f"{name}-{key[:20]}.npz")


def load_cached(path, key):
    """``(images, labels, class_names)`` from a cache file, or None when the
    file is absent or fails any check (a warning then names the file)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            class_names = [str(c) for c in z["class_names"]]
            stored_key, fmt, crc = str(z["key"]), int(z["format"]), int(z["crc32"])
        problem = None
        if fmt != CACHE_FORMAT or stored_key != key:
            problem = "it was written for another source or format"
        elif images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            problem = f"images are {images.dtype} {images.shape}, not uint8 NHWC"
        elif labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            problem = f"labels are {labels.dtype} {labels.shape} for {len(images)} images"
        elif labels.size and not 0 <= labels.min() <= labels.max() < len(class_names):
            problem = "labels fall outside the class list"
        elif _arrays_crc(images, labels) != crc:
            problem = "its CRC-32 does not match its contents"
    except Exception as e:  # a truncated zip, a missing key, a garbled header...
        problem = f"it cannot be read ({type(e).__name__}: {e})"
    if problem:
        warnings.warn(f"ignoring the cache file {path}: {problem}; decoding the source again",
                      RuntimeWarning, stacklevel=3)
        return None
    return images, labels, class_names


def save_cached(path, key, images, labels, class_names):
    """Write the arrays through ``fileio.atomic_write``, so a crash (or a
    second process) never sees half a file.
    A cache folder that cannot be written is reported and skipped."""
    try:
        with atomic_write(path) as f:
            np.savez(f, images=images, labels=labels,
                     class_names=np.array(class_names, dtype=str), key=np.array(key),
                     format=np.array(CACHE_FORMAT), crc32=np.array(_arrays_crc(images, labels)))
    except OSError as e:
        warnings.warn(f"could not write the cache file {path} ({e}); the images will be "
                      "decoded again next time (set $MINIRES_CACHE to a writable folder)",
                      RuntimeWarning, stacklevel=3)


def load_or_build(name, key, build, cache_dir=None):
    """The cached ``(images, labels, class_names)`` for ``key``, else ``build()``
    and store the result.  ``name`` only makes the file name readable."""
    path = cache_file(cache_dir, name, key)
    cached = load_cached(path, key)
    if cached is not None:
        return cached
    images, labels, class_names = build()
    save_cached(path, key, images, labels, class_names)
    return images, labels, class_names
