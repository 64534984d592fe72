"""Weights in and out: torch checkpoints (.pth/.pt) and NumPy archives (.npz).

minires never needs torch; ``load_torch_state_dict`` imports it only when
called, to read a file torch wrote (a torchvision checkpoint, say).  Since
minires uses torch's key names, such a state_dict loads as it is:

    model = minires.models.resnet18()
    minires.convert.load_pretrained(model, "resnet18-f37072fd.pth")

``.npz`` is the torch-free format: ``save_npz_state_dict`` writes one array
per key, in state_dict order.

``.safetensors`` is the format to share weights in: torch, JAX and many
other tools read it, and reading it runs no code.  ``save_safetensors`` /
``load_safetensors`` use the ``safetensors`` package's NumPy side only (the
``safetensors`` extra; it does not pull in torch), with torch's key names, so
``safetensors.torch.load_file`` gives a state_dict torch's model loads as is.
"""
import json
import os
import zipfile
from collections import OrderedDict

import numpy

from . import backend
from .errors import CorruptFileError, MissingExtraError, MissingFileError, WeightsMismatchError
from .fileio import atomic_write, atomic_write_bytes

__all__ = ["load_torch_state_dict", "load_npz_state_dict", "save_npz_state_dict",
           "save_safetensors", "load_safetensors", "load_pretrained"]

TORCH_EXTENSIONS = (".pth", ".pt")
NPZ_EXTENSIONS = (".npz",)
SAFETENSORS_EXTENSIONS = (".safetensors",)


def load_torch_state_dict(path):
    """Read a torch checkpoint into an OrderedDict of NumPy arrays (keys in file order).

    The file may hold a state_dict, or a dict with the state_dict under
    ``'state_dict'`` or ``'model'`` (training checkpoints).  A ``module.``
    prefix on every key (saved from DataParallel) is removed.
    """
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError(f"reading the torch checkpoint {path!r} needs PyTorch, which is not "
                          "installed (pip install torch); or convert it once, on a machine "
                          "with torch, with minires.convert.save_npz_state_dict") from e
    # weights_only: tensors and plain containers only, never arbitrary pickled code.
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    sd = _unwrap_checkpoint(obj, path)
    out = OrderedDict()
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"load_torch_state_dict: {path!r}: entry {key!r} is "
                            f"{type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16
            value = value.float()
        out[key] = value.numpy().copy()
    return _strip_prefix(out, "module.")


def _unwrap_checkpoint(obj, path):
    if not isinstance(obj, dict):
        raise TypeError(f"load_torch_state_dict: {path!r} holds a {type(obj).__name__}, "
                        "expected a state_dict (a dict of tensors); if it is a whole "
                        "pickled model, save model.state_dict() instead")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _strip_prefix(sd, prefix):
    if sd and all(k.startswith(prefix) for k in sd):
        return OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def load_npz_state_dict(path):
    """Read a ``.npz`` written by ``save_npz_state_dict`` (or ``numpy.savez``) into an
    OrderedDict of NumPy arrays, in the stored order."""
    with numpy.load(os.fspath(path), allow_pickle=False) as archive:
        return OrderedDict((k, archive[k]) for k in archive.files)


def save_npz_state_dict(model_or_state_dict, path):
    """Write a module's state_dict (or a dict of arrays) to ``path`` as ``.npz``.

    GPU arrays are copied to the host.  The file is written under a temporary
    name in the same directory and renamed into place, so an interrupted save
    never leaves a truncated archive at ``path``.
    """
    sd = model_or_state_dict
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    arrays = OrderedDict((k, numpy.asarray(backend.to_numpy(v))) for k, v in sd.items())
    path = os.fspath(path)
    # numpy.savez's own layout (one ``key.npy`` per array), written directly so
    # that no key can clash with savez's keyword arguments and the name stays ours.
    with atomic_write(path) as out, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                numpy.lib.format.write_array(f, a, allow_pickle=False)
    return path


# ---------------------------------------------------------------- safetensors
def _safetensors_numpy():
    """``safetensors.numpy``, or a MissingExtraError naming the extra."""
    try:
        import safetensors.numpy
    except ImportError:
        raise MissingExtraError("reading and writing .safetensors files needs the safetensors "
                                "package: install the safetensors extra: "
                                "pip install 'minires[safetensors]' (from a checkout: "
                                "pip install -e '.[safetensors]')") from None
    return safetensors.numpy


def save_safetensors(model_or_state_dict, path, metadata=None):
    """Write a module's state_dict (or a dict of arrays) to ``path`` as
    ``.safetensors``, with ``metadata`` (a dict; values other than strings are
    stored as JSON, since the format holds only strings).  GPU arrays are
    copied to the host.  Returns ``path``."""
    st = _safetensors_numpy()
    sd = model_or_state_dict
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    # C order, as the format stores it; not ascontiguousarray, which makes a
    # 0-d array (num_batches_tracked) 1-d
    arrays = {k: numpy.asarray(backend.to_numpy(v), order="C") for k, v in sd.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in (metadata or {}).items()}
    path = os.fspath(path)
    # Not safetensors.numpy.save_file: it writes the final path in place, so a
    # killed or out-of-space export would leave half a file there.  The bytes
    # go through minires's one atomic-write helper instead (temp file, fsync,
    # rename).  A state_dict is small next to the memory a model needs anyway.
    atomic_write_bytes(path, st.save(arrays, metadata=meta or None))
    return path


def load_safetensors(path):
    """Read a ``.safetensors`` file: ``(state_dict, metadata)``, an OrderedDict
    of NumPy arrays (sorted by key) and the file's metadata dict of strings
    (empty when it has none).  Parsing the header and reading tensors runs no
    code from the file.  A missing file raises ``MissingFileError``; one that is
    not a readable safetensors file, or holds a dtype NumPy lacks (bfloat16,
    float8), raises ``CorruptFileError`` naming it."""
    _safetensors_numpy()  # a clear error when the extra is missing
    from safetensors import safe_open
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"weights file not found: {path}")
    sd = OrderedDict()
    try:
        with safe_open(path, framework="np") as f:
            metadata = dict(f.metadata() or {})
            for key in sorted(f.keys()):
                dtype = f.get_slice(key).get_dtype()
                if dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
                    raise CorruptFileError(
                        f"{path}: entry {key!r} is {dtype}, which NumPy cannot hold; save the "
                        f"state_dict as float32 first ({{k: v.float() ...}} in torch)")
                sd[key] = f.get_tensor(key)
    except CorruptFileError:
        raise
    except Exception as e:  # SafetensorError, OSError: a damaged or foreign file
        raise CorruptFileError(f"{path} is not a readable safetensors file "
                               f"({type(e).__name__}: {e})") from None
    return sd, metadata


def load_pretrained(model, path):
    """Load weights from ``path`` (``.pth``/``.pt`` via torch, ``.npz``, or
    ``.safetensors``) into ``model`` with ``load_state_dict(strict=True)``.
    Every missing, unexpected or mis-shaped key (with both shapes) is named in
    one ``WeightsMismatchError`` (a ``KeyError``).  Returns the model."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    known = TORCH_EXTENSIONS + NPZ_EXTENSIONS + SAFETENSORS_EXTENSIONS
    if ext not in known:
        raise CorruptFileError(f"load_pretrained: unknown weights format "
                               f"{ext or '(no extension)'!r} for {path!r}; expected one of "
                               f"{', '.join(known)}")
    if not os.path.isfile(path):
        raise MissingFileError(f"weights file not found: {path}")
    note = ""
    if ext in TORCH_EXTENSIONS:
        sd = load_torch_state_dict(path)
    elif ext in NPZ_EXTENSIONS:
        sd = load_npz_state_dict(path)
    else:
        sd, metadata = load_safetensors(path)
        if "architecture" in metadata:
            note = f" (a {metadata['architecture']}, says its metadata)"
    try:
        model.load_state_dict(sd, strict=True)
    except KeyError as e:
        raise WeightsMismatchError(f"the weights in {path}{note} do not fit the model: "
                                   f"{e.args[0] if e.args else e}") from None
    return model
