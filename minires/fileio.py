"""The one way minires writes a file: a temp file in the same folder, fsync,
then a rename into place.

A reader (or a resumed run) therefore sees the old file or the new one, never
half of one, even if the process is killed mid-write or the disk fills up.
The temp name is unique (two runs writing the same path cannot clash), the
file gets the user's umask like any other new file, and the temp file is
removed when the write fails.  Checkpoints, the data cache, downloads, npz
exports, plots, gradflow's outputs and the benchmark results all use it.
"""
import contextlib
import os
import tempfile


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f: f.write(...)`` -- a binary file object
    whose contents replace ``path`` only when the block ends without an error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path) as f:
        f.write(data)
