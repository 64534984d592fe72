"""Mini-batches for training: shuffle, augment, normalise, prefetch.

A background thread prepares the next batches (gather, crop, flip,
normalise) while the model computes on the current one; a bounded queue of
``prefetch`` batches keeps memory fixed.  NumPy releases the GIL inside its
copies and arithmetic, so this overlaps on a CPU too, and fully on a GPU.

Determinism: every random number of an epoch (the order, every crop offset,
every flip) is drawn in the caller's thread when iteration starts.  The
thread only applies them, so the batches, and the state the generators are
left in, do not depend on thread timing, on ``prefetch``, or on where a
consumer stopped reading.
"""
import queue
import threading

import numpy as np

from .. import backend
from .. import random as mr_random
from .transforms import CIFAR10_MEAN, CIFAR10_STD, crop_at, crop_offsets, flip_mask, flip_where
from .transforms import normalize


class _Failure:
    """An exception raised in the producer thread, carried to the consumer."""

    def __init__(self, error):
        self.error = error


def _put(q, item, stop):
    """Put ``item`` unless ``stop`` is set first; True when it went in."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(make_batch, batches, q, stop):
    try:
        for k in batches:
            if stop.is_set() or not _put(q, make_batch(k), stop):
                return
    except BaseException as e:  # handed to the consumer, which re-raises it
        _put(q, _Failure(e), stop)


class BatchLoader:
    """Iterate over ``(x, y)`` mini-batches of a uint8 NHWC image array.

    ``x`` is ``dtype`` (float32) NCHW, normalised with ``mean``/``std``
    (CIFAR-10's by default), and ``y`` int64, both on ``device``.  With
    ``shuffle``, each epoch (each ``iter(loader)``) visits the samples in a
    new order drawn from ``rng`` (default: the ``data`` stream of
    ``minires.random``).  With ``augment``, each image is zero-padded by
    ``padding``, randomly cropped back and flipped left-right with p=0.5,
    drawing from ``augment_rng`` (default: the ``augment`` stream);
    ``crop_size`` cuts smaller square windows instead (progressive resizing:
    cheaper early epochs; with ``padding=0`` they lie inside the image).  The last,
    smaller batch is kept unless ``drop_last``; ``len(loader)`` counts batches.
    ``prefetch`` batches are prepared ahead in a background thread (0: none,
    everything happens in the caller's thread).  Errors in the thread are
    re-raised by the iterator; an abandoned iterator stops its thread.
    """

    def __init__(self, images, labels, batch_size, shuffle=True, drop_last=False, augment=False,
                 rng=None, augment_rng=None, prefetch=2, device="cpu", padding=4,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=np.float32, crop_size=None):
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
            got = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
                   else type(images).__name__)
            raise TypeError(f"BatchLoader: images must be a uint8 NumPy array (N, H, W, C), "
                            f"got {got}")
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"BatchLoader: labels must be integers of shape ({len(images)},), "
                             f"got {labels.dtype} {labels.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"BatchLoader: batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ValueError(f"BatchLoader: prefetch must be an int >= 0, got {prefetch!r}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.augment, self.padding = augment, padding
        if crop_size is not None and not (augment and 1 <= crop_size <= min(images.shape[1:3])):
            raise ValueError(f"BatchLoader: crop_size needs augment=True and a size from 1 to "
                             f"{min(images.shape[1:3])}, got {crop_size!r}")
        self.crop_size = crop_size
        self.rng, self.augment_rng = rng, augment_rng
        self.prefetch, self.device = int(prefetch), backend.normalize_device(device)
        self.mean, self.std, self.dtype = mean, std, dtype

    def __len__(self):
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _plan_epoch(self):
        """Draw everything random about one epoch, here in the caller's thread."""
        n = len(self.images)
        if self.shuffle:
            rng = self.rng if self.rng is not None else mr_random.generator("data")
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        offsets = flips = None
        if self.augment:
            # Resolved per epoch, not in __init__: manual_seed replaces the generators.
            arng = (self.augment_rng if self.augment_rng is not None
                    else mr_random.generator("augment"))
            offsets = crop_offsets(n, self.padding, arng, self.crop_slack())
            flips = flip_mask(n, 0.5, arng)
        return order, offsets, flips

    def crop_slack(self):
        """How much larger than the crop the images are (0 for full-size crops)."""
        return 0 if self.crop_size is None else self.images.shape[2] - self.crop_size

    def _batch_slice(self, k):
        """Where batch k lies in the epoch's order (a distributed loader takes
        this rank's share of it instead)."""
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def _batch_maker(self, plan):
        order, offsets, flips = plan

        def make_batch(k):
            sl = self._batch_slice(k)
            idx = order[sl]
            x = self.images[idx]
            if self.augment:
                x = flip_where(crop_at(x, offsets[sl], self.padding, self.crop_size), flips[sl])
            return normalize(x, self.mean, self.std, self.dtype), self.labels[idx]
        return make_batch

    def _to_device(self, batch):
        x, y = batch
        return backend.to_device(x, self.device), backend.to_device(y, self.device)

    def __iter__(self):
        return self.iterate()

    def iterate(self, start=0):
        """The epoch's batches from batch ``start`` on (a run resumed in the
        middle of an epoch).  The whole epoch's randomness is drawn as usual,
        so batch ``start`` is the one an uninterrupted epoch yields there; the
        batches before it are never made."""
        if not 0 <= start <= len(self):
            raise ValueError(f"BatchLoader.iterate: start must be in [0, {len(self)}], "
                             f"got {start!r}")
        # Draw now (not lazily in the generator) so iter() fixes the epoch.
        make_batch = self._batch_maker(self._plan_epoch())
        batches = range(start, len(self))
        if self.prefetch == 0:
            return (self._to_device(make_batch(k)) for k in batches)
        return self._prefetched(make_batch, batches)

    def _prefetched(self, make_batch, batches):
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        # The thread holds no reference to this generator, so dropping the
        # generator closes it, and the finally below stops the thread.
        thread = threading.Thread(target=_produce, args=(make_batch, batches, q, stop),
                                  name="minires-BatchLoader", daemon=True)
        thread.start()
        try:
            for _ in batches:
                item = q.get()
                if isinstance(item, _Failure):
                    raise item.error
                yield self._to_device(item)
        finally:
            stop.set()
            try:  # make room, so a producer blocked in put() sees the stop at once
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            thread.join()

    def __repr__(self):
        return (f"BatchLoader(n={len(self.images)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, augment={self.augment}, "
                f"prefetch={self.prefetch}, device='{self.device}')")
