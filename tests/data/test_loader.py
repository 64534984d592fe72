"""BatchLoader: coverage, last batch, shuffling, determinism, its thread."""
import gc
import threading
import time

import numpy as np
import pytest

import minires
from minires.data import BatchLoader, loader as loader_module
from minires.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from tests.helpers import assert_close


def _data(n=103, h=6, w=5, seed=0):
    """Random images; labels are the sample ids, so a batch says which samples it holds."""
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return images, np.arange(n)


def _manual_normalize(images):
    """(x / 255 - mean) / std per channel, NHWC -> NCHW, in float64."""
    x = images.astype(np.float64) / 255.0
    x = (x - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    return x.transpose(0, 3, 1, 2)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "minires-BatchLoader"]


def _wait_for_no_loader_threads():
    for _ in range(100):
        if not _loader_threads():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("prefetch", [0, 2])
def test_every_sample_once_per_epoch_with_a_partial_last_batch(prefetch):
    images, ids = _data()
    loader = BatchLoader(images, ids, 10, prefetch=prefetch)
    assert len(loader) == 11
    batches = list(loader)
    assert len(batches) == 11
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    seen = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(np.sort(seen), ids)
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape == (len(y), 3, 6, 5) and y.dtype == np.int64
        assert_close(x, _manual_normalize(images[y]), 1e-6, "loader batch")


def test_drop_last_drops_the_partial_batch():
    images, ids = _data()
    loader = BatchLoader(images, ids, 10, drop_last=True)
    assert len(loader) == 10
    batches = list(loader)
    assert [len(y) for _, y in batches] == [10] * 10
    assert len(np.unique(np.concatenate([y for _, y in batches]))) == 100
    assert len(BatchLoader(images[:7], ids[:7], 10, drop_last=True)) == 0
    assert len(BatchLoader(images, ids, 103)) == 1


def test_each_epoch_is_a_new_order_and_no_shuffle_keeps_order():
    images, ids = _data()
    loader = BatchLoader(images, ids, 16)
    first = np.concatenate([y for _, y in loader])
    second = np.concatenate([y for _, y in loader])
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, ids)
    in_order = np.concatenate([y for _, y in BatchLoader(images, ids, 16, shuffle=False)])
    np.testing.assert_array_equal(in_order, ids)


def _epochs(loader, n=2):
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(n)]


def _assert_same_epochs(a, b):
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (xa, ya), (xb, yb) in zip(ea, eb):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)


def test_same_seed_same_batches_with_the_thread_and_without():
    images, ids = _data()
    minires.manual_seed(5)
    threaded = _epochs(BatchLoader(images, ids, 8, augment=True, prefetch=3))
    minires.manual_seed(5)
    again = _epochs(BatchLoader(images, ids, 8, augment=True, prefetch=3))
    minires.manual_seed(5)
    serial = _epochs(BatchLoader(images, ids, 8, augment=True, prefetch=0))
    _assert_same_epochs(threaded, again)
    _assert_same_epochs(threaded, serial)
    minires.manual_seed(6)
    other = _epochs(BatchLoader(images, ids, 8, augment=True), 1)
    assert not np.array_equal(other[0][0][1], threaded[0][0][1])


def test_an_abandoned_epoch_leaves_the_generators_where_a_full_one_does():
    """Everything random is drawn when the epoch starts, not by the thread."""
    images, ids = _data()
    minires.manual_seed(1)
    loader = BatchLoader(images, ids, 8, augment=True)
    list(loader)
    full = minires.get_rng_state()
    minires.manual_seed(1)
    it = iter(loader)
    next(it)
    del it
    assert minires.get_rng_state() == full


def test_given_generators_are_used():
    images, ids = _data()
    a = _epochs(BatchLoader(images, ids, 8, augment=True, rng=np.random.default_rng(0),
                            augment_rng=np.random.default_rng(1)))
    minires.manual_seed(123)  # the global streams play no part
    b = _epochs(BatchLoader(images, ids, 8, augment=True, rng=np.random.default_rng(0),
                            augment_rng=np.random.default_rng(1)))
    _assert_same_epochs(a, b)


def test_augmented_batches_are_crops_and_flips_of_their_own_images():
    images, ids = _data(40, 8, 8)
    loader = BatchLoader(images, ids, 16, augment=True, padding=2)
    x, y = next(iter(loader))
    # undo the normalisation exactly enough to recover the uint8 pixels
    pixels = np.rint((x.transpose(0, 2, 3, 1) * np.array(CIFAR10_STD) + np.array(CIFAR10_MEAN))
                     * 255).astype(np.uint8)
    flips = 0
    for out, i in zip(pixels, y):
        padded = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))
        windows = [padded[t:t + 8, l:l + 8] for t in range(5) for l in range(5)]
        plain = any(np.array_equal(out, w) for w in windows)
        mirrored = any(np.array_equal(out, w[:, ::-1]) for w in windows)
        assert plain or mirrored, f"sample {i} is not a crop or mirrored crop of its image"
        flips += mirrored and not plain
    assert 0 < flips < 16


def test_an_error_in_the_thread_reaches_the_consumer(monkeypatch):
    images, ids = _data()
    calls = []
    real = loader_module.normalize

    def failing_normalize(batch, *args):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("boom in batch 3")
        return real(batch, *args)

    monkeypatch.setattr(loader_module, "normalize", failing_normalize)
    got = []
    with pytest.raises(ValueError, match="boom in batch 3"):
        for batch in BatchLoader(images, ids, 10, prefetch=2):
            got.append(batch)
    assert len(got) == 2
    assert _wait_for_no_loader_threads()


def test_an_abandoned_iterator_stops_its_thread():
    images, ids = _data(1000)
    it = iter(BatchLoader(images, ids, 10, prefetch=2))
    next(it)
    assert len(_loader_threads()) == 1
    del it
    gc.collect()
    assert _wait_for_no_loader_threads()
    for _ in BatchLoader(images, ids, 10):  # and after a break
        break
    assert _wait_for_no_loader_threads()


def test_bad_arguments_are_named():
    images, ids = _data(10)
    with pytest.raises(TypeError, match="BatchLoader: images must be a uint8 .*float32"):
        BatchLoader(images.astype(np.float32), ids, 4)
    with pytest.raises(ValueError, match=r"BatchLoader: labels must be integers of shape \(10,\)"):
        BatchLoader(images, ids[:9], 4)
    with pytest.raises(ValueError, match="BatchLoader: batch_size must be a positive int, got 0"):
        BatchLoader(images, ids, 0)
    with pytest.raises(ValueError, match="BatchLoader: prefetch must be an int >= 0"):
        BatchLoader(images, ids, 4, prefetch=-1)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        BatchLoader(images, ids, 4, device="tpu")


@pytest.mark.gpu
def test_batches_arrive_on_the_gpu():
    import cupy
    images, ids = _data(20)
    x, y = next(iter(BatchLoader(images, ids, 8, augment=True, device="cuda")))
    assert isinstance(x, cupy.ndarray) and isinstance(y, cupy.ndarray)
    assert x.dtype == cupy.float32 and y.dtype == cupy.int64
