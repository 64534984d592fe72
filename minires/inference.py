"""Using a trained model: load it (from a ``minires train`` checkpoint or a
``.safetensors`` export), prepare images from disk the way training saw
them, and turn logits into class probabilities.

    model, info = load_trained("runs/r20/best.ckpt")
    x = prepare_images(["cat.jpg", "ship.png"], info)     # float32 NCHW
    probs = predict_proba(model, x)                        # (2, 10), rows sum to 1

Images of any size become 32x32 the same way, torchvision's
``Resize(32)`` then ``CenterCrop(32)`` on the Pillow image: the shorter side
is scaled to 32 with Pillow's bilinear filter (antialiased when shrinking),
the longer side to ``int(32 * long / short)``, keeping the aspect ratio, then
the central 32x32 is cut out.  A 32x32 image is used as it is.  Then
``minires.data.normalize`` with the model's mean and std, as in training.
"""
import json
import os

import numpy as np

from . import backend
from .errors import ConfigError, CorruptFileError, MissingFileError, WeightsMismatchError

IMAGE_SIZE = 32  # every model minires trains sees CIFAR-10's 32x32 images


def _training_info(architecture, num_classes, classes=None, mean=None, std=None, **extra):
    from .data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
    if classes is None:
        classes = (list(CIFAR10_CLASSES) if num_classes == len(CIFAR10_CLASSES)
                   else [str(i) for i in range(num_classes)])
    return {"architecture": architecture, "num_classes": int(num_classes),
            "classes": list(classes),
            "mean": list(CIFAR10_MEAN if mean is None else mean),
            "std": list(CIFAR10_STD if std is None else std), **extra}


def checkpoint_info(state):
    """What inference needs to know about the run of a loaded checkpoint.
    Training always normalises with ``minires.data``'s CIFAR-10 mean and std
    (``normalize``'s defaults) and has ``config.NUM_CLASSES`` outputs."""
    from .config import NUM_CLASSES
    cfg = state["config"]
    return _training_info(cfg["model"], NUM_CLASSES, dtype=cfg.get("dtype", "float32"),
                          epoch=state.get("epoch"), data=cfg.get("data"),
                          tta=cfg.get("tta", "none"))


def checkpoint_weights(state, path, ema=None):
    """``(state_dict, "ema" | "live")``: the weights of a checkpoint to use.
    ``ema``: None takes the EMA's weights when the run kept an average
    (``--ema``), True insists on them, False takes the live model's."""
    averaged = (state.get("ema") or {}).get("module")
    if ema and averaged is None:
        raise ConfigError(f"--ema: {path} holds no EMA weights (its run was trained "
                               f"without --ema); leave --ema out to use its weights")
    if averaged is not None and ema is not False:
        return averaged, "ema"
    return state["model"], "live"


def _metadata_json(path, metadata, key):
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except ValueError:
        raise CorruptFileError(f"{path}: metadata {key!r} is not valid JSON: "
                               f"{metadata[key]!r}") from None


def load_trained(path, device="cpu", ema=None):
    """``(model, info)``: the model in eval mode on ``device`` and a dict with
    ``architecture``, ``num_classes``, ``classes``, ``mean``, ``std``,
    ``weights`` ("ema" or "live"), ``tta`` (what the run evaluated with) and,
    from a checkpoint, ``dtype`` and ``epoch``.  ``ema``: which weights of a
    checkpoint (see ``checkpoint_weights``); an export holds one set, and
    asking for the other is an error.

    ``path`` is a checkpoint written by ``minires train`` or a
    ``.safetensors`` file written by ``minires export`` (whose metadata names
    the architecture; a file without it is an error saying so)."""
    from . import models
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        from .convert import load_safetensors
        sd, meta = load_safetensors(path)
        if "architecture" not in meta:
            raise CorruptFileError(
                f"{path} has no 'architecture' in its metadata, so minires cannot tell which "
                f"model to build; build it yourself and call "
                f"minires.convert.load_pretrained(model, {path!r})")
        try:
            num_classes = int(meta.get("num_classes", "10"))
        except ValueError:
            raise CorruptFileError(f"{path}: metadata 'num_classes' is not a whole number: "
                                   f"{meta['num_classes']!r}") from None
        info = _training_info(meta["architecture"], num_classes,
                              classes=_metadata_json(path, meta, "classes"),
                              mean=_metadata_json(path, meta, "mean"),
                              std=_metadata_json(path, meta, "std"),
                              dtype=next((str(v.dtype) for v in sd.values()
                                          if v.dtype.kind == "f"), "float32"),
                              weights=meta.get("weights", "live"), tta=meta.get("tta", "none"))
        if ema is not None and info["weights"] != ("ema" if ema else "live"):
            raise ConfigError(
                f"--{'' if ema else 'no-'}ema: {path} holds the {info['weights']} weights only "
                f"(an export keeps one set); leave the flag out")
    else:
        from .checkpoint import load_checkpoint
        state = load_checkpoint(path)
        info = checkpoint_info(state)
        sd, info["weights"] = checkpoint_weights(state, path, ema)
    model = models.get(info["architecture"], num_classes=info["num_classes"])
    try:
        model.load_state_dict(sd)
    except KeyError as e:
        raise WeightsMismatchError(f"the weights in {path} do not fit a "
                                   f"{info['architecture']}: {e.args[0]}") from None
    model.to(device, dtype=np.dtype(info.get("dtype", "float32")))
    model.eval()
    return model, info


# ---------------------------------------------------------------- images
def center_crop_resize(pixels, size=IMAGE_SIZE):
    """An H x W x 3 uint8 image as ``size`` x ``size``: torchvision's
    ``Resize(size)`` + ``CenterCrop(size)`` on a Pillow image (see the module
    docstring).  Needs Pillow."""
    from .data.imagefolder import _pillow
    h, w = pixels.shape[:2]
    if (h, w) == (size, size):
        return pixels
    # torchvision's rule for the longer side: truncated, not rounded
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        Image = _pillow()
        pixels = np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.BILINEAR))
    # torchvision's CenterCrop corner: round((H - size) / 2)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def read_image(path, size=IMAGE_SIZE):
    """An image file (PNG, JPEG, or anything Pillow reads; grey, palette and
    RGBA become RGB) as a ``size`` x ``size`` x 3 uint8 array.  A missing or
    unreadable file raises an error naming it."""
    from .data.imagefolder import _pillow, decode_image
    Image = _pillow()
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"image not found: {path}") from None
    except OSError as e:  # a folder, no permission, ...
        raise CorruptFileError(f"{path}: cannot read the image ({e.strerror or e})") from None
    return center_crop_resize(decode_image(data, path, None, Image), size)


def prepare_images(paths, info, dtype=np.float32):
    """Read, resize and normalise image files: a float NCHW batch, normalised
    with ``info``'s mean and std exactly as training normalises."""
    from .data import normalize
    batch = np.stack([read_image(p) for p in paths])
    return normalize(batch, mean=info["mean"], std=info["std"], dtype=dtype)


# ---------------------------------------------------------------- predictions
def softmax(logits):
    """Row-wise softmax in float64 (the largest logit subtracted first, so
    exp never overflows)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict_proba(model, x, batch_size=256, device="cpu", tta="none"):
    """Class probabilities (N x classes, float64 on the host) of a normalised
    NCHW batch, in eval mode, keeping no caches; ``tta="flip"``: of the mean
    logits of each image and its mirror (``engine.tta_logits``)."""
    from .engine import tta_logits
    from .grad_mode import no_grad
    was_training = model.training
    model.eval()
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            logits = tta_logits(model, backend.to_device(x[i:i + batch_size], device), tta)
            out.append(softmax(backend.to_numpy(logits)))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


def top_k(probs, k, classes):
    """Per row, the ``k`` most probable classes, most probable first, as
    ``[{"class", "index", "probability"}, ...]`` (ties: the lower index first)."""
    rows = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[:k]
        rows.append([{"class": classes[i], "index": int(i), "probability": float(p[i])}
                     for i in order])
    return rows
