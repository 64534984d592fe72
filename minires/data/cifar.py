"""CIFAR-10 from any of its usual forms, as uint8 NHWC arrays.

Two formats are read:

* the official "python version": pickled batches ``data_batch_1..5``,
  ``test_batch`` and ``batches.meta`` in ``cifar-10-batches-py/``, or the
  ``cifar-10-python.tar.gz`` archive holding them (read without extracting;
  its MD5 is checked first);
* image folders, ``<split>/<class>/<image>``, as a folder or a tar archive
  (``<split>.tar.gz``), such as the JPEG copy of CIFAR-10.  These are decoded
  once and cached (see ``cache.py``).
"""
import hashlib
import importlib
import io
import os
import pickle

import numpy as np

from ..errors import MissingFileError
from .cache import CorruptDataError, file_digest, load_or_build, source_digest
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .imagefolder import read_image_folder, tar_files

# CIFAR-10's label order (batches.meta); image folders with exactly these
# class names get these label numbers rather than alphabetical ones.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
PYTHON_FOLDER = "cifar-10-batches-py"
PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
BATCH_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
META_FILE = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)


def resolve_data_root(root=None):
    """The data folder: ``root`` if given, else ``$MINIRES_DATA``, else
    ``~/.cache/minires/data``."""
    if root is None:
        root = os.environ.get("MINIRES_DATA") or os.path.join("~", ".cache", "minires", "data")
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def candidates(root, split):
    """What ``load_cifar10`` looks for under ``root``, in order: (kind, path)."""
    return [("python-folder", os.path.join(root, PYTHON_FOLDER)),
            ("python-archive", os.path.join(root, PYTHON_ARCHIVE)),
            ("image-archive", os.path.join(root, f"{split}.tar.gz")),
            ("image-archive", os.path.join(root, f"{split}.tar")),
            ("image-folder", os.path.join(root, split))]


def find_cifar10(root, split):
    """The first (kind, path) of ``candidates`` that exists, else None."""
    for kind, path in candidates(root, split):
        if os.path.isdir(path) if kind.endswith("folder") else os.path.isfile(path):
            return kind, path
    return None


# -- the python format ---------------------------------------------------------

# The batches hold a dict of bytes, lists and one NumPy array; nothing else may
# be built while unpickling (a pickle can run any callable it names).
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        # NumPy 2 renamed numpy.core to numpy._core; the official files (2009)
        # name numpy.core.  Take whichever this NumPy has, without the alias's
        # deprecation warning.
        if module.startswith(("numpy.core.", "numpy._core.")):
            tail = module.split(".", 2)[2]
            for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except ImportError:
                    continue
        return super().find_class(module, name)


def _unpickle(data, where):
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise CorruptDataError(f"{where}: not a readable CIFAR batch "
                               f"({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    # Python 2 pickles give bytes keys (b'data'); Python 3 ones may give str.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(data, where):
    batch = _unpickle(data, where)
    if "data" not in batch or "labels" not in batch:
        raise CorruptDataError(f"{where}: missing b'data' or b'labels' "
                               f"(keys: {sorted(batch)})")
    pixels, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    n = int(np.prod(IMAGE_SHAPE))
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != n:
        raise CorruptDataError(f"{where}: b'data' is {pixels.dtype} {pixels.shape}; "
                               f"expected uint8 N x {n}")
    if labels.shape != (len(pixels),):
        raise CorruptDataError(f"{where}: {labels.size} labels for {len(pixels)} images")
    # Rows are planar (1024 red, 1024 green, 1024 blue): CHW -> HWC.
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _class_names(meta, where):
    if meta is None:
        return list(CIFAR10_CLASSES)
    names = _unpickle(meta, where).get("label_names")
    if names is None:
        raise CorruptDataError(f"{where}: no b'label_names'")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _assemble(blobs, split, source, where):
    """Arrays from {file name: bytes} of one split's batches (+ meta)."""
    missing = [f for f in BATCH_FILES[split] if f not in blobs]
    if missing:
        raise CorruptDataError(f"{source}: missing {', '.join(missing)}")
    parts = [_batch_arrays(blobs[f], where(f)) for f in BATCH_FILES[split]]
    class_names = _class_names(blobs.get(META_FILE), where(META_FILE))
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and not 0 <= labels.min() <= labels.max() < len(class_names):
        raise CorruptDataError(f"{source}: labels outside 0..{len(class_names) - 1}")
    return images, labels, class_names


def read_python_folder(folder, split):
    """One split from an extracted ``cifar-10-batches-py`` folder."""
    blobs = {}
    for name in BATCH_FILES[split] + (META_FILE,):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                blobs[name] = f.read()
    return _assemble(blobs, split, folder, lambda name: os.path.join(folder, name))


def read_python_archive(path, split, md5=None):
    """One split from ``cifar-10-python.tar.gz``, read as a stream (nothing is
    extracted).  ``md5`` (hex) is checked first when given."""
    if md5 is not None:
        got = file_digest(path, "md5")
        if got != md5:
            raise CorruptDataError(
                f"{path}: MD5 is {got}, expected {md5}: the archive is incomplete or not "
                "the official CIFAR-10 python archive; delete it and download again")
    wanted = set(BATCH_FILES[split] + (META_FILE,))
    blobs = {os.path.basename(name): data
             for name, data in tar_files(path, lambda name: os.path.basename(name) in wanted)}
    return _assemble(blobs, split, path, lambda name: f"{path}: member {name}")


# -- the entry point -----------------------------------------------------------

def _read_images_cached(path, split, cache_dir):
    # The key covers the source's bytes and how they are turned into arrays.
    recipe = f"{source_digest(path)}|{IMAGE_SHAPE}|{','.join(CIFAR10_CLASSES)}"
    key = hashlib.sha256(recipe.encode()).hexdigest()
    return load_or_build(f"cifar10-{split}", key,
                         lambda: read_image_folder(path, IMAGE_SHAPE[:2], CIFAR10_CLASSES),
                         cache_dir)


def load_cifar10(root=None, split="train", download=False, cache_dir=None):
    """Load one split of CIFAR-10.

    Returns ``(images, labels, class_names)``: uint8 N×32×32×3 (NHWC), int64 N,
    and the list of class names that ``labels`` index.

    ``root`` is the folder holding the data: the argument, else the
    ``$MINIRES_DATA`` environment variable, else ``~/.cache/minires/data``.
    Under it, the first of these that exists is read:

    1. ``cifar-10-batches-py/`` (the extracted official python version),
    2. ``cifar-10-python.tar.gz`` (the official archive; its MD5 is checked),
    3. ``<split>.tar.gz``, ``<split>.tar`` or ``<split>/``: an image folder
       ``<class>/<image>`` (e.g. JPEGs).  Class labels follow CIFAR-10's order
       (airplane, automobile, ..., truck) when the folders are exactly those
       ten names, else sorted names.  Decoding needs Pillow
       (``pip install 'minires[jpeg]'``); it happens once, and the arrays
       are cached under ``cache_dir`` (else ``$MINIRES_CACHE``, else
       ``~/.cache/minires``), keyed by the source's checksum.

    With ``download=True`` and nothing found, the official archive is
    downloaded into ``root`` first (163 MB, MD5-checked).  Raises
    ``FileNotFoundError`` when nothing is found, ``CorruptDataError`` naming
    the file when a file is truncated or damaged.
    """
    if split not in SPLITS:
        raise ValueError(f"load_cifar10: split must be one of {SPLITS}, got {split!r}")
    root = resolve_data_root(root)
    found = find_cifar10(root, split)
    if found is None:
        if not download:
            looked = ", ".join(os.path.basename(path) + ("/" if kind.endswith("folder") else "")
                               for kind, path in candidates(root, split))
            raise MissingFileError(
                f"CIFAR-10 ({split}) not found under {root} (looked for {looked}); pass "
                "download=True (--download on the command line) to fetch the official "
                "archive, or point root (--data, $MINIRES_DATA) at a folder holding one of these")
        found = ("python-archive", download_cifar10(root, url=CIFAR10_URL, md5=CIFAR10_MD5))
    kind, path = found
    if kind == "python-folder":
        return read_python_folder(path, split)
    if kind == "python-archive":
        return read_python_archive(path, split, md5=CIFAR10_MD5)
    return _read_images_cached(path, split, cache_dir)
