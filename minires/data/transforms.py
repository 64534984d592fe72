"""Augmentation and normalisation on whole uint8 NHWC batches.

Every function takes a batch at once: no Python loop runs over images.  The
random ones draw their parameters from a NumPy ``Generator`` (by default the
``augment`` stream of ``minires.random``), so a seed fixes them.  Each has a
deterministic twin taking the drawn parameters (``crop_at``, ``flip_where``):
the loader draws a whole epoch's parameters up front and applies them in its
background thread, which keeps the result independent of thread timing.
"""
import numpy as np

from .. import random as mr_random

# Per-channel mean and standard deviation of CIFAR-10's training pixels (in
# [0, 1]), the constants torchvision recipes use.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _check_batch(fn, batch):
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.dtype != np.uint8:
        got = (f"{batch.dtype} array of shape {batch.shape}" if isinstance(batch, np.ndarray)
               else type(batch).__name__)
        raise TypeError(f"{fn}: expected a uint8 NumPy array of shape (N, H, W, C), got {got}")


def _rng(rng):
    return mr_random.generator("augment") if rng is None else rng


def crop_offsets(n, padding, rng=None, slack=0):
    """(n, 2) int64 top-left corners (row, column) in the padded image, each
    uniform in 0..2*padding + slack (``slack``: how much the image is larger
    than the crop)."""
    return _rng(rng).integers(0, 2 * padding + slack + 1, size=(n, 2))


def crop_at(batch, offsets, padding=4, size=None):
    """Zero-pad every image by ``padding`` on each side, then cut a
    ``size`` x ``size`` window (default: H x W) whose top-left corner in the
    padded image is ``offsets[i]``."""
    _check_batch("crop_at", batch)
    n, h, w, c = batch.shape
    sh, sw = (h, w) if size is None else (int(size), int(size))
    if size is not None and not 1 <= sh <= min(h, w) + 2 * padding:
        raise ValueError(f"crop_at: a crop of {size} does not fit {h}x{w} images padded by "
                         f"{padding}")
    padded = batch
    if padding:
        padded = np.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=batch.dtype)
        padded[:, padding:padding + h, padding:padding + w] = batch
    # Every window of every image as a view, then one gather of each image's
    # own: two NumPy calls for the batch.  (A loop over the corners took
    # 4-7x as long, 289 of them for 24-pixel windows, and its hundreds of
    # small calls each took the GIL from the training threads.)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (sh, sw), axis=(1, 2))
    offsets = np.asarray(offsets)
    most = (windows.shape[1] - 1, windows.shape[2] - 1)
    if offsets.shape != (n, 2) or offsets.dtype.kind not in "iu" or (
            n and (offsets.min() < 0 or offsets[:, 0].max() > most[0]
                   or offsets[:, 1].max() > most[1])):
        raise ValueError(f"crop_at: expected ({n}, 2) whole-number corners from (0, 0) to {most}, "
                         f"got shape {offsets.shape}, dtype {offsets.dtype}"
                         + (f", from {offsets.min()} to {offsets.max()}" if offsets.size else ""))
    picked = windows[np.arange(n), offsets[:, 0], offsets[:, 1]]  # (n, c, sh, sw)
    return np.ascontiguousarray(picked.transpose(0, 2, 3, 1))


def random_crop(batch, padding=4, rng=None):
    """Pad with zeros by ``padding`` and crop back to H×W at a random offset,
    drawn per image (torchvision's ``RandomCrop(32, padding=4)``)."""
    _check_batch("random_crop", batch)
    return crop_at(batch, crop_offsets(len(batch), padding, rng), padding)


def flip_where(batch, mask):
    """A copy of ``batch`` with the images where ``mask`` is True mirrored
    left-right."""
    _check_batch("flip_where", batch)
    out = batch.copy()
    out[mask] = batch[mask, :, ::-1]
    return out


def flip_mask(n, p=0.5, rng=None):
    """(n,) bool: which images to flip, each with probability ``p``."""
    return _rng(rng).random(n) < p


def random_flip(batch, rng=None, p=0.5):
    """Mirror each image left-right with probability ``p``
    (torchvision's ``RandomHorizontalFlip``)."""
    _check_batch("random_flip", batch)
    return flip_where(batch, flip_mask(len(batch), p, rng))


def normalize(batch, mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=np.float32):
    """uint8 NHWC -> ``dtype`` NCHW, ``(x / 255 - mean) / std`` per channel
    (torchvision's ``ToTensor()`` followed by ``Normalize(mean, std)``)."""
    _check_batch("normalize", batch)
    c = batch.shape[-1]
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(f"normalize: mean and std need {c} values (one per channel), "
                         f"got {mean.shape} and {std.shape}")
    # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std: two in-place
    # passes over the output and no temporary.
    scale = (1.0 / (255.0 * std)).astype(dtype).reshape(c, 1, 1)
    shift = (mean / std).astype(dtype).reshape(c, 1, 1)
    out = batch.transpose(0, 3, 1, 2).astype(dtype, order="C")
    out *= scale
    out -= shift
    return out
