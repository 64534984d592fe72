"""Batch augmentation and normalisation, against per-image reference loops."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minires
from minires.data import transforms
from minires.data.transforms import (CIFAR10_MEAN, CIFAR10_STD, crop_at, flip_where, normalize,
                                     random_crop, random_flip)
from tests.helpers import assert_close


def _batch(rng, n=6, h=32, w=32, c=3):
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _reference_crop(batch, offsets, padding):
    """torchvision's RandomCrop(padding=p), one image at a time."""
    n, h, w, c = batch.shape
    out = np.empty_like(batch)
    for i in range(n):
        padded = np.zeros((h + 2 * padding, w + 2 * padding, c), np.uint8)
        padded[padding:padding + h, padding:padding + w] = batch[i]
        top, left = offsets[i]
        out[i] = padded[top:top + h, left:left + w]
    return out


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 4),
       padding=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_crop_at_matches_a_per_image_loop(n, h, w, c, padding, seed):
    rng = np.random.default_rng(seed)
    batch = _batch(rng, n, h, w, c)
    offsets = rng.integers(0, 2 * padding + 1, (n, 2))
    out = crop_at(batch, offsets, padding)
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _reference_crop(batch, offsets, padding))


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_crop_at_windows_match_a_per_image_loop(data):
    """Windows smaller than the image (progressive resizing's crops), at every
    corner the padded image allows, against slices cut one image at a time."""
    n, h, w, c = (data.draw(st.integers(lo, hi), name)
                  for name, lo, hi in (("n", 1, 12), ("h", 2, 9), ("w", 2, 9), ("c", 1, 4)))
    padding = data.draw(st.integers(0, 3), "padding")
    size = data.draw(st.integers(1, min(h, w) + 2 * padding), "size")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
    batch = _batch(rng, n, h, w, c)
    offsets = np.stack([rng.integers(0, h + 2 * padding - size + 1, n),
                        rng.integers(0, w + 2 * padding - size + 1, n)], axis=1)
    out = crop_at(batch, offsets, padding, size)
    padded = np.pad(batch, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    expected = np.stack([padded[i, t:t + size, l:l + size] for i, (t, l) in enumerate(offsets)])
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("offsets, what", [
    ([[0, 0], [-1, 0]], "from -1"), ([[0, 0], [0, 9]], "to 9"), ([[0, 0]], "shape (1, 2)"),
    ([[0.0, 0.0], [1.0, 1.0]], "dtype float64")])
def test_crop_at_rejects_corners_outside_the_padded_image(offsets, what):
    """A negative corner would wrap round to the far side (NumPy indexing) and
    one past the last would fail deep inside NumPy: both are named here."""
    batch = _batch(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match=r"crop_at: expected \(2, 2\) whole-number corners from "
                                         r"\(0, 0\) to \(8, 8\).*" + re.escape(what)):
        crop_at(batch, np.array(offsets), 4)


def test_random_crop_keeps_shape_and_takes_windows_of_the_padded_image():
    rng = np.random.default_rng(0)
    batch = _batch(rng, 50)
    out = random_crop(batch, padding=4, rng=np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    # Each output must be one of the 81 windows; find which, the slow way.
    for i in range(len(batch)):
        hits = [(t, l) for t in range(9) for l in range(9)
                if np.array_equal(out[i], _reference_crop(batch[i:i + 1], [(t, l)], 4)[0])]
        assert hits, f"image {i} is no 32x32 window of its padded image"
    # The offsets are the ones crop_offsets draws from the same generator.
    offsets = transforms.crop_offsets(50, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(out, _reference_crop(batch, offsets, 4))


def test_random_crop_offsets_cover_all_81_windows_evenly():
    offsets = transforms.crop_offsets(20000, 4, np.random.default_rng(2))
    assert offsets.min() == 0 and offsets.max() == 8
    counts = np.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81)
    assert counts.min() > 150 and counts.max() < 350  # ~247 each


def test_zero_padding_crop_is_the_identity():
    batch = _batch(np.random.default_rng(3))
    np.testing.assert_array_equal(random_crop(batch, padding=0), batch)


def test_flip_reverses_the_width_of_exactly_the_flipped_images():
    batch = _batch(np.random.default_rng(4), 400, 5, 7, 3)
    out = random_flip(batch, np.random.default_rng(5))
    flipped = np.array([np.array_equal(out[i], batch[i][:, ::-1]) for i in range(len(batch))])
    kept = np.array([np.array_equal(out[i], batch[i]) for i in range(len(batch))])
    assert (flipped ^ kept).all()  # random pixels: never both, never neither
    assert 0.4 < flipped.mean() < 0.6
    np.testing.assert_array_equal(flipped, transforms.flip_mask(400, 0.5, np.random.default_rng(5)))
    np.testing.assert_array_equal(batch, _batch(np.random.default_rng(4), 400, 5, 7, 3))  # input kept


def test_flip_where_follows_the_mask():
    batch = _batch(np.random.default_rng(6), 3, 2, 4, 1)
    out = flip_where(batch, np.array([True, False, True]))
    np.testing.assert_array_equal(out[0, :, :, 0], batch[0, :, ::-1, 0])
    np.testing.assert_array_equal(out[1], batch[1])
    np.testing.assert_array_equal(out[2, :, 3], batch[2, :, 0])


def test_default_generator_is_the_seeded_augment_stream():
    batch = _batch(np.random.default_rng(7), 64)
    minires.manual_seed(3)
    first = random_flip(random_crop(batch))
    minires.manual_seed(3)
    np.testing.assert_array_equal(random_flip(random_crop(batch)), first)
    minires.manual_seed(3)
    minires.random.generator("data").random(10)  # another stream does not interfere
    np.testing.assert_array_equal(random_flip(random_crop(batch)), first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_matches_a_manual_computation(dtype):
    batch = _batch(np.random.default_rng(8), 5, 6, 7, 3)
    out = normalize(batch, dtype=dtype)
    assert out.shape == (5, 3, 6, 7) and out.dtype == dtype and out.flags.c_contiguous
    ref = np.empty((5, 3, 6, 7))
    for ch in range(3):
        ref[:, ch] = (batch[..., ch] / 255.0 - CIFAR10_MEAN[ch]) / CIFAR10_STD[ch]
    assert_close(out, ref, 1e-6 if dtype == np.float32 else 1e-12, "normalize")


def test_normalize_with_other_statistics():
    batch = np.full((1, 2, 2, 1), 51, np.uint8)
    out = normalize(batch, mean=(0.1,), std=(0.5,))
    assert_close(out, np.full((1, 1, 2, 2), (0.2 - 0.1) / 0.5), 1e-6)
    with pytest.raises(ValueError, match="normalize: mean and std need 1 values"):
        normalize(batch)


@pytest.mark.parametrize("fn", [random_crop, random_flip, normalize])
def test_bad_batches_are_named(fn):
    with pytest.raises(TypeError, match=f"{fn.__name__}: expected a uint8 .*got float32"):
        fn(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(TypeError, match=f"{fn.__name__}: expected .*shape \\(4, 4, 3\\)"):
        fn(np.zeros((4, 4, 3), np.uint8))
