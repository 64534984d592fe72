"""The one way minires writes a file: a temp file in the same folder, fsync,
then a rename into place.

A reader (or a resumed run) therefore sees the old file or the new one, never
half of one, even if the process is killed mid-write or the disk fills up.
The temp name is unique (two runs writing the same path cannot clash) and
holds the writer's process id, the file gets the user's umask like any other
new file, and the temp file is removed when the write fails.  A temp file
left by a killed writer (a dead process id) is removed the next time the
same path is written.  A write that fails for lack of space (or a file-size
limit) raises ``DiskFullError`` naming the file; the old file is untouched.  Checkpoints, the data cache, downloads, npz
exports, plots, gradflow's outputs and the benchmark results all use it.
"""
import contextlib
import errno
import os
import tempfile

from .errors import DiskFullError

_NO_SPACE = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(path):
    """Remove the temp files of ``path`` whose writer died mid-write; returns
    their names.  A live writer's temp file (another run) is left alone."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    prefix, removed = f".{base}.", []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f: f.write(...)`` -- a binary file object
    whose contents replace ``path`` only when the block ends without an error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            kept = "the previous version is kept" if os.path.exists(path) else "nothing was written"
            full = DiskFullError(f"could not write {path}: {e.strerror} ({kept})")
            full.errno = e.errno
            raise full from None
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically (see ``atomic_write``)."""
    with atomic_write(path) as f:
        f.write(data)
