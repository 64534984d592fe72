"""Checkpoints that cannot run code: arrays in an npz, everything else in JSON.

File layout: a magic line, the SHA-256 of the payload, a newline, then the
payload: an 8-byte length, a JSON tree, and an npz (``allow_pickle=False``)
holding every array the tree points to.  Loading parses JSON and reads plain
arrays, so a checkpoint from someone else can at worst be wrong, never
execute anything.  Arrays are stored as NumPy (a GPU run's checkpoint loads
on a CPU machine).

Older checkpoints (``MINIRES-CKPT-1``, a pickled dict) still load, through an
unpickler that accepts only NumPy arrays, dtypes and scalars and plain
containers, and refuses anything else with a clear error.
"""
import hashlib
import io
import json
import pickle
import struct

import numpy as np

from .errors import CorruptFileError, MissingFileError
from .fileio import atomic_write_bytes

MAGIC = b"MINIRES-CKPT-2\n"
MAGIC_PICKLED = b"MINIRES-CKPT-1\n"  # written before checkpoints stopped using pickle


def _to_host(obj):
    from . import backend
    if backend.is_cupy_array(obj):
        return backend.to_numpy(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_host(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


# ---------------------------------------------------------------- JSON tree + arrays

def _encode(obj, arrays):
    """A JSON-ready copy of ``obj``; arrays go to ``arrays`` and are referenced."""
    if isinstance(obj, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"__array__": name}
    if isinstance(obj, np.generic):
        return {"__scalar__": obj.dtype.str, "value": obj.item()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} "
                    "(arrays, numbers, strings, None and lists/tuples/dicts of them only)")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return arrays[obj["__array__"]]
    if "__scalar__" in obj:
        return np.dtype(obj["__scalar__"]).type(obj["value"])
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in obj["__items__"]}
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def _pack(state):
    arrays = {}
    tree = json.dumps(_encode(_to_host(state), arrays)).encode()
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    return struct.pack("<Q", len(tree)) + tree + npz.getvalue()


def _unpack(payload):
    (n,) = struct.unpack("<Q", payload[:8])
    tree = json.loads(payload[8:8 + n])
    with np.load(io.BytesIO(payload[8 + n:]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _decode(tree, arrays)


# ---------------------------------------------------------------- older, pickled files

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, dtypes, scalars and plain containers only."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: an old-format checkpoint "
                                     "may hold only arrays, numbers and containers")


# ---------------------------------------------------------------- save / load

def save_checkpoint(path, state):
    payload = _pack(state)
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload)


def load_checkpoint(path):
    """Load and verify a checkpoint; a truncated, altered or unsafe file raises ValueError."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"checkpoint not found: {path}") from None
    magic = next((m for m in (MAGIC, MAGIC_PICKLED) if blob.startswith(m)), None)
    if magic is None:
        raise CorruptFileError(f"{path} is not a minires checkpoint (bad header)")
    digest, payload = blob[len(magic):len(magic) + 64], blob[len(magic) + 65:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptFileError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    try:
        if magic == MAGIC_PICKLED:
            return _ArraysOnlyUnpickler(io.BytesIO(payload)).load()
        return _unpack(payload)
    except (pickle.UnpicklingError, ValueError, KeyError, struct.error) as e:
        raise CorruptFileError(f"checkpoint {path} cannot be loaded safely: {e}") from None
