"""Image folders: ``<class>/<image>`` files, in a folder or in a tar archive.

The layout is torchvision's ``ImageFolder``: the parent folder of each image
names its class.  A tar (``.tar``, ``.tar.gz``, ``.tgz``...) is read as one
sequential stream: members are decoded as they go by, with no seeking, so a
gzip archive is decompressed exactly once.  Pillow decodes the images; it is
imported only here, when an image folder is actually read (the ``jpeg``
extra), so the rest of minires runs without it.
"""
import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib

import numpy as np

from ..errors import MissingExtraError
from .cache import CorruptDataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise MissingExtraError("reading image folders (JPEG/PNG) needs Pillow: "
                          "pip install 'minires[jpeg]'") from e
    return Image


def _is_image(name):
    base = os.path.basename(name)
    # Dot-files are skipped: macOS tars carry '._x.jpg' resource forks.
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _open_decompressed(path):
    """The archive's tar bytes: gzip, bz2 and xz are told by their magic number."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def tar_files(path, keep):
    """(member name, bytes) for each regular file of a tar whose name passes
    ``keep``, in archive order, in one sequential pass.  A truncated or
    damaged archive raises ``CorruptDataError`` naming ``path``."""
    try:
        with _open_decompressed(path) as raw:
            with tarfile.open(fileobj=raw, mode="r|") as tf:
                for member in tf:
                    if member.isfile() and keep(member.name):
                        yield member.name, tf.extractfile(member).read()
                end = tf.offset
            # tarfile stops quietly when a header comes up short, so an archive
            # cut between two members would pass for a whole one.  Read to the
            # end (gzip/bz2/xz then check their trailers) and make sure the
            # end-of-archive block was really there.
            while raw.read(1 << 20):
                pass
            if raw.tell() < end + tarfile.BLOCKSIZE:
                raise EOFError("the end-of-archive marker is missing")
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        raise CorruptDataError(f"{path}: the archive is truncated or corrupt "
                               f"({type(e).__name__}: {e}); download or copy it again") from e


def _folder_members(path):
    """(relative name, bytes) for every image under a folder, in sorted order.
    A folder with neither images nor subfolders (an empty class) is an error:
    skipping it would renumber the classes after it."""
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        if dirpath != path and not dirnames and not any(_is_image(n) for n in filenames):
            raise CorruptDataError(f"{dirpath}: a class folder with no images (expected "
                                   f"files ending in one of {', '.join(IMAGE_EXTENSIONS)}); "
                                   f"remove it or add its images")
        for name in sorted(filenames):
            if _is_image(name):
                full = os.path.join(dirpath, name)
                with open(full, "rb") as f:
                    yield os.path.relpath(full, path).replace(os.sep, "/"), f.read()


def decode_image(data, name, image_size, Image):
    """One encoded image as an H×W×3 uint8 array; errors name the image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            pixels = np.asarray(im)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
        # UnidentifiedImageError's own text names only the in-memory buffer
        why = ("not a format Pillow reads" if type(e).__name__ == "UnidentifiedImageError"
               else f"{type(e).__name__}: {e}")
        raise CorruptDataError(f"{name}: cannot decode the image ({why})") from e
    if image_size is not None and pixels.shape[:2] != tuple(image_size):
        raise CorruptDataError(f"{name}: image is {pixels.shape[1]}x{pixels.shape[0]} "
                               f"(width x height); expected {image_size[1]}x{image_size[0]}")
    return pixels


def order_classes(names, known_order=None):
    """``known_order`` when the classes found are exactly its names (so CIFAR-10
    folders get CIFAR's label numbers), else the names sorted (torchvision's
    ImageFolder rule)."""
    names = set(names)
    if known_order is not None and names == set(known_order):
        return list(known_order)
    return sorted(names)


def read_image_folder(path, image_size=(32, 32), known_order=None):
    """Decode every image under ``path`` (a folder or a tar archive).

    Returns ``(images, labels, class_names)``: uint8 N×H×W×3, int64 N, and a
    list of names where ``labels`` index.  Images are sorted by (class, name),
    so the result does not depend on the order of members in an archive.

    Conversions: grey, palette and RGBA images become RGB (alpha dropped);
    files that are not images (by extension) and dot-files are skipped.
    Errors (``CorruptDataError``, naming the file): an image that does not
    decode (truncated, damaged), one of another size than ``image_size``, an
    image outside a class folder, an empty class folder, a member path that is
    absolute or holds '..'.  Nothing is written anywhere: archives are read
    in memory.
    """
    Image = _pillow()
    is_dir = os.path.isdir(path)
    members = _folder_members(path) if is_dir else tar_files(path, _is_image)
    names, classes, pixels, prefixes = [], [], [], set()
    for name, data in members:
        where = f"{path}/{name}" if is_dir else f"{path}: member {name}"
        if name.startswith("/") or ".." in name.split("/"):
            # nothing is extracted to disk, but such a name would still pick
            # the class from outside the archive's own tree: refuse it
            raise CorruptDataError(f"{where}: unsafe member path (absolute or with '..'); "
                                   f"refused")
        parts = name.strip("/").split("/")
        if len(parts) < 2:
            raise CorruptDataError(f"{where}: image is not inside a class folder "
                                   "(expected <class>/<image>)")
        pixels.append(decode_image(data, where, image_size, Image))
        names.append(name)
        classes.append(parts[-2])
        prefixes.add("/".join(parts[:-2]))
    if not pixels:
        raise CorruptDataError(f"{path}: no images found (expected <class>/<image> files "
                               f"ending in one of {', '.join(IMAGE_EXTENSIONS)})")
    if len(prefixes) > 1:
        # e.g. train/cat/... and test/cat/... in one archive: they must not merge.
        raise CorruptDataError(f"{path}: images sit under several folders "
                               f"({', '.join(sorted(prefixes))}); expected one split per archive")
    class_names = order_classes(classes, known_order)
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[c] for c in classes], dtype=np.int64)
    order = sorted(range(len(names)), key=lambda i: (labels[i], names[i]))
    images = np.stack([pixels[i] for i in order])
    return images, labels[order], class_names
