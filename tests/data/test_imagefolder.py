"""Image folders (JPEG/PNG, folder or tar), their decode cache, and their errors."""
import os
import re
import sys
import tarfile

import numpy as np
import pytest

from minires.data import CorruptDataError, cache, imagefolder, load_cifar10, read_image_folder
from tests.data import CLASSES, encode_image, image_members, write_folder, write_tar


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MINIRES_CACHE", str(path))
    return path


@pytest.fixture
def jpeg_root(tmp_path):
    """root/train.tar.gz of flat-colour JPEGs, two per CIFAR class, members
    shuffled so that the archive's order is not the class order."""
    rng = np.random.default_rng(3)
    members, truth = image_members(rng, "train")
    names = list(members)
    rng.shuffle(names)
    root = tmp_path / "data"
    root.mkdir()
    write_tar(root / "train.tar.gz", {n: members[n] for n in names})
    return root, truth


def _sorted_truth(truth, classes):
    names = sorted(truth, key=lambda n: (classes.index(truth[n][0]), n))
    images = np.stack([truth[n][1] for n in names])
    labels = np.array([classes.index(truth[n][0]) for n in names], dtype=np.int64)
    return images, labels


def _snapshot(folder):
    return sorted((p, os.path.getsize(os.path.join(d, p)))
                  for d, _, files in os.walk(folder) for p in files)


def test_jpeg_archive_labels_follow_cifar_order_and_pixels_survive(jpeg_root, cache_dir):
    root, truth = jpeg_root
    images, labels, class_names = load_cifar10(root, "train")
    assert class_names == CLASSES
    want_images, want_labels = _sorted_truth(truth, CLASSES)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, want_labels)
    # flat colours survive JPEG to within a few units
    assert np.abs(images.astype(int) - want_images).max() <= 3


def test_png_folder_is_exact_and_other_class_names_are_sorted(tmp_path, cache_dir):
    classes = ["zebra", "apple", "mango"]
    members, truth = image_members(np.random.default_rng(4), "test", classes, 3, fmt="PNG")
    write_folder(tmp_path / "data", members)
    images, labels, class_names = load_cifar10(tmp_path / "data", "test")
    assert class_names == ["apple", "mango", "zebra"]
    want_images, want_labels = _sorted_truth(truth, class_names)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


def test_cifar_order_wins_over_sorting_when_the_classes_match():
    order = ["b", "a"]
    assert imagefolder.order_classes(["a", "b", "a"], order) == ["b", "a"]
    assert imagefolder.order_classes(["a", "c"], order) == ["a", "c"]


def test_decoded_arrays_are_cached_under_minires_cache_not_next_to_the_data(
        jpeg_root, cache_dir, monkeypatch):
    root, _ = jpeg_root
    before = _snapshot(root)
    os.chmod(root, 0o555)  # read-only data (root ignores this; the snapshot does not)
    try:
        first = load_cifar10(root, "train")
    finally:
        os.chmod(root, 0o755)
    assert _snapshot(root) == before
    cached = os.listdir(cache_dir / "decoded")
    assert len(cached) == 1 and cached[0].startswith("cifar10-train-") and cached[0].endswith(".npz")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    second = load_cifar10(root, "train")
    for a, b in zip(first[:2], second[:2]):
        np.testing.assert_array_equal(a, b)
    assert second[2] == first[2]
    assert os.listdir(cache_dir / "decoded") == cached  # no temp files left behind


def test_cache_dir_argument_overrides_the_environment(jpeg_root, cache_dir, tmp_path):
    root, _ = jpeg_root
    load_cifar10(root, "train", cache_dir=tmp_path / "elsewhere")
    assert len(os.listdir(tmp_path / "elsewhere" / "decoded")) == 1
    assert not cache_dir.exists()


def test_a_changed_archive_is_decoded_again(jpeg_root, cache_dir):
    root, _ = jpeg_root
    load_cifar10(root, "train")
    members, _ = image_members(np.random.default_rng(9), "train", per_class=1)
    write_tar(root / "train.tar.gz", members)
    _, labels, _ = load_cifar10(root, "train")
    assert len(labels) == 10
    assert len(os.listdir(cache_dir / "decoded")) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel_byte"])
def test_a_damaged_cache_file_is_reported_and_rebuilt(jpeg_root, cache_dir, damage):
    root, _ = jpeg_root
    images, labels, _ = load_cifar10(root, "train")
    (path,) = (cache_dir / "decoded").iterdir()
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[:len(blob) // 2]
    else:  # npz members are stored uncompressed: find the pixels and change one
        at = bytes(blob).find(images.tobytes()[:64])
        assert at > 0
        blob[at + 10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        again = load_cifar10(root, "train")
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    assert cache.load_cached(str(path), _key_in(path)) is not None  # rebuilt, valid again


def _key_in(path):
    with np.load(path) as z:
        return str(z["key"])


def test_an_unwritable_cache_is_reported_and_loading_still_works(jpeg_root, tmp_path):
    root, _ = jpeg_root
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")  # the cache folder cannot be created inside a file
    with pytest.warns(RuntimeWarning, match="could not write the cache file"):
        _, labels, _ = load_cifar10(root, "train", cache_dir=blocker)
    assert len(labels) == 20


def test_truncated_image_archive_names_the_file(jpeg_root, cache_dir):
    root, _ = jpeg_root
    path = root / "train.tar.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) * 2 // 3])
    with pytest.raises(CorruptDataError, match=re.escape(str(path)) + ".*truncated or corrupt"):
        load_cifar10(root, "train")
    assert not (cache_dir / "decoded").exists() or not os.listdir(cache_dir / "decoded")


def test_corrupt_jpeg_member_is_named(tmp_path, cache_dir):
    members, _ = image_members(np.random.default_rng(5), "train", per_class=2)
    good = members["train/cat/0001.jpg"]
    members["train/cat/0001.jpg"] = good[:len(good) // 3]  # cut mid-scan
    members["train/dog/0000.jpg"] = b"this is not a JPEG"
    write_tar(tmp_path / "train.tar.gz", members)
    with pytest.raises(CorruptDataError,
                       match=r"train\.tar\.gz: member train/cat/0001\.jpg: cannot decode"):
        load_cifar10(tmp_path, "train")


def test_wrong_image_size_is_named(tmp_path, cache_dir):
    members, _ = image_members(np.random.default_rng(5), "test", ["a", "b"], 1, fmt="PNG")
    members["test/b/0000.png"] = encode_image(np.zeros((8, 16, 3), np.uint8), "PNG")
    write_folder(tmp_path, members)
    with pytest.raises(CorruptDataError, match=r"test/b/0000\.png: image is 16x8.*expected 32x32"):
        load_cifar10(tmp_path, "test")


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = np.full((32, 32), 77, np.uint8)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    blobs = {"a/g.png": encode_image(grey, "PNG"), "b/r.png": encode_image(rgba, "PNG")}
    write_tar(tmp_path / "x.tar", blobs, mode="w")
    images, labels, names = read_image_folder(str(tmp_path / "x.tar"))
    assert images.shape == (2, 32, 32, 3) and names == ["a", "b"]
    assert (images[0] == 77).all() and (images[1] == 200).all()


def test_layout_errors(tmp_path):
    write_tar(tmp_path / "flat.tar", {"0.png": encode_image(np.zeros((32, 32, 3), np.uint8), "PNG")},
              mode="w")
    with pytest.raises(CorruptDataError, match="not inside a class folder"):
        read_image_folder(str(tmp_path / "flat.tar"))
    write_tar(tmp_path / "empty.tar", {"cat/readme.txt": b"hi", "cat/._0.jpg": b"mac junk"},
              mode="w")
    with pytest.raises(CorruptDataError, match="no images found"):
        read_image_folder(str(tmp_path / "empty.tar"))
    members, _ = image_members(np.random.default_rng(0), "train", ["a"], 1, fmt="PNG")
    members.update(image_members(np.random.default_rng(0), "test", ["a"], 1, fmt="PNG")[0])
    write_tar(tmp_path / "both.tar", members, mode="w")
    with pytest.raises(CorruptDataError, match="several folders.*test, train"):
        read_image_folder(str(tmp_path / "both.tar"))


def test_missing_pillow_says_how_to_install_it(jpeg_root, cache_dir, monkeypatch):
    root, _ = jpeg_root
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.raises(ImportError, match=re.escape("pip install 'minires[jpeg]'")):
        load_cifar10(root, "train")


def test_folder_key_changes_with_its_files(tmp_path):
    write_folder(tmp_path, {"a/1.png": b"x", "b/2.png": b"yy"})
    key = cache.folder_digest(str(tmp_path))
    assert cache.folder_digest(str(tmp_path)) == key
    (tmp_path / "b" / "2.png").write_bytes(b"yyy")
    assert cache.folder_digest(str(tmp_path)) != key


@pytest.mark.slow
def test_the_real_jpeg_test_split(tmp_path, monkeypatch):
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "datasets",
                        "cifar10-jpeg")
    if not os.path.isfile(os.path.join(root, "test.tar.gz")):
        pytest.skip("the shared CIFAR-10 JPEG copy is not on this machine")
    monkeypatch.setenv("MINIRES_CACHE", str(tmp_path))  # decode for real, not from a cache
    with tarfile.open(os.path.join(root, "test.tar.gz")) as tf:
        assert tf.next().name.startswith("test")
    images, labels, class_names = load_cifar10(root, "test")
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert class_names == CLASSES
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    # CIFAR-10's test pixels average about (125, 123, 114)
    assert np.allclose(images.reshape(-1, 3).mean(0), [125.3, 123.0, 113.9], atol=3)


def test_plain_tar_cut_between_two_members_is_caught(tmp_path, cache_dir):
    """tarfile alone reads such a cut archive as a shorter, whole one."""
    members, _ = image_members(np.random.default_rng(6), "train", per_class=1, fmt="PNG")
    path = write_tar(tmp_path / "train.tar", members, mode="w")
    with tarfile.open(path) as tf:
        cut = tf.getmembers()[4].offset
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CorruptDataError, match=re.escape(str(path)) + ".*end-of-archive"):
        load_cifar10(tmp_path, "train")
