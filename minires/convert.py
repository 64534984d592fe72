"""Weights in and out: torch checkpoints (.pth/.pt) and NumPy archives (.npz).

minires never needs torch; ``load_torch_state_dict`` imports it only when
called, to read a file torch wrote (a torchvision checkpoint, say).  Since
minires uses torch's key names, such a state_dict loads as it is:

    model = minires.models.resnet18()
    minires.convert.load_pretrained(model, "resnet18-f37072fd.pth")

``.npz`` is the torch-free format: ``save_npz_state_dict`` writes one array
per key, in state_dict order.
"""
import os
import zipfile
from collections import OrderedDict

import numpy

from . import backend
from .fileio import atomic_write

__all__ = ["load_torch_state_dict", "load_npz_state_dict", "save_npz_state_dict",
           "load_pretrained"]

TORCH_EXTENSIONS = (".pth", ".pt")
NPZ_EXTENSIONS = (".npz",)


def load_torch_state_dict(path):
    """Read a torch checkpoint into an OrderedDict of NumPy arrays (keys in file order).

    The file may hold a state_dict, or a dict with the state_dict under
    ``'state_dict'`` or ``'model'`` (training checkpoints).  A ``module.``
    prefix on every key (saved from DataParallel) is removed.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading the torch checkpoint {path!r} needs PyTorch, which is not "
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


def load_pretrained(model, path):
    """Load weights from ``path`` (``.pth``/``.pt`` via torch, or ``.npz``) into ``model``
    with ``load_state_dict(strict=True)``: every missing, unexpected or mis-shaped key
    is an error that names it.  Returns the model."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in TORCH_EXTENSIONS:
        sd = load_torch_state_dict(path)
    elif ext in NPZ_EXTENSIONS:
        sd = load_npz_state_dict(path)
    else:
        raise ValueError(f"load_pretrained: unknown weights format {ext or '(no extension)'!r} "
                         f"for {os.fspath(path)!r}; expected one of "
                         f"{', '.join(TORCH_EXTENSIONS + NPZ_EXTENSIONS)}")
    model.load_state_dict(sd, strict=True)
    return model
