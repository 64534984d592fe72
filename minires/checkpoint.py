"""Checkpoints: one pickled dict, written to a temp name then renamed, with a
SHA-256 of the payload in a header that is verified on load.

Arrays are stored as NumPy (a GPU run's checkpoint loads on a CPU machine).
"""
import hashlib
import os
import pickle
import tempfile

MAGIC = b"MINIRES-CKPT-1\n"


def _to_host(obj):
    from . import backend
    if backend.is_cupy_array(obj):
        return backend.to_numpy(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_host(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temp file in the same folder + os.replace,
    so a crash never leaves a half-written file under the real name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(path, state):
    payload = pickle.dumps(_to_host(state), protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload)


def load_checkpoint(path):
    """Load and verify a checkpoint; a truncated or altered file raises ValueError."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    if not blob.startswith(MAGIC):
        raise ValueError(f"{path} is not a minires checkpoint (bad header)")
    digest, payload = blob[len(MAGIC):len(MAGIC) + 64], blob[len(MAGIC) + 65:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    return pickle.loads(payload)
