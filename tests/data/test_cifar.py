"""CIFAR-10's official python format, root resolution and "not found"."""
import os
import pickle
import re
import shutil
import tarfile
import warnings

import numpy as np
import pytest

from minires.data import CorruptDataError, cifar, load_cifar10
from tests.data import (CLASSES, TRAIN_FILES, expected_nhwc, image_members, md5_of, pickle_batch,
                        python_batches, python_members, write_folder, write_tar)


@pytest.fixture
def batches():
    return python_batches(np.random.default_rng(7))


@pytest.fixture
def archive(tmp_path, batches, monkeypatch):
    """root/cifar-10-python.tar.gz, with the loader's MD5 set to the tiny archive's."""
    root = tmp_path / "root"
    root.mkdir()
    path = write_tar(root / "cifar-10-python.tar.gz", python_members(batches))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5_of(path))
    return path


@pytest.mark.parametrize("split,files", [("train", TRAIN_FILES), ("test", ["test_batch"])])
def test_python_archive_gives_nhwc_images_labels_and_classes(archive, batches, split, files):
    images, labels, class_names = load_cifar10(archive.parent, split)
    want_images, want_labels = expected_nhwc(batches, files)
    assert images.dtype == np.uint8 and images.shape == (len(want_labels), 32, 32, 3)
    assert images.flags.c_contiguous
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    assert class_names == CLASSES


def test_python_folder_is_read_like_the_archive(tmp_path, batches):
    folder = tmp_path / "cifar-10-batches-py"
    write_folder(tmp_path, python_members(batches))
    images, labels, class_names = load_cifar10(tmp_path, "train")
    want_images, want_labels = expected_nhwc(batches, TRAIN_FILES)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    assert class_names == CLASSES
    # A missing batch is named.
    os.remove(folder / "data_batch_3")
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


def test_python_folder_takes_precedence_over_image_archives(tmp_path, batches):
    write_folder(tmp_path, python_members(batches))
    write_tar(tmp_path / "test.tar.gz", {"test/cat/0.jpg": b"not read"})
    _, labels, _ = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(labels, batches["test_batch"][1])


def test_pickles_naming_numpy_core_as_the_2009_files_do(tmp_path, batches):
    """The official files name numpy.core.multiarray (NumPy 2 renamed it)."""
    members = python_members(batches)
    for name, blob in members.items():
        members[name] = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in members["cifar-10-batches-py/test_batch"]
    write_folder(tmp_path, members)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning from the numpy.core alias
        images, labels, _ = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(images, expected_nhwc(batches, ["test_batch"])[0])


def test_a_pickle_that_would_run_code_is_refused(tmp_path, batches):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    members = python_members(batches)
    members["cifar-10-batches-py/test_batch"] = pickle.dumps({b"data": Evil()}, protocol=2)
    write_folder(tmp_path, members)
    with pytest.raises(CorruptDataError, match=r"test_batch.*system is not allowed"):
        load_cifar10(tmp_path, "test")


def test_bad_batch_contents_are_named(tmp_path, batches):
    members = python_members(batches)
    data, labels = batches["test_batch"]
    members["cifar-10-batches-py/test_batch"] = pickle_batch(data[:, :100], labels)
    write_folder(tmp_path, members)
    with pytest.raises(CorruptDataError, match=r"test_batch: b'data' is uint8 \(5, 100\)"):
        load_cifar10(tmp_path, "test")


def test_md5_mismatch_is_a_clear_error(archive, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(CorruptDataError, match=re.escape(str(archive)) + ".*MD5.*expected 0{32}"):
        load_cifar10(archive.parent, "train")


def test_the_official_md5_is_the_default():
    assert cifar.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_truncated_python_archive_names_the_file(archive, monkeypatch):
    blob = archive.read_bytes()
    archive.write_bytes(blob[:len(blob) // 2])
    monkeypatch.setattr(cifar, "CIFAR10_MD5", None)  # get past the MD5 to the reader
    with pytest.raises(CorruptDataError, match=re.escape(str(archive)) + ".*truncated"):
        load_cifar10(archive.parent, "train")


def test_archive_missing_a_member_names_it(tmp_path, batches, monkeypatch):
    members = python_members(batches)
    del members["cifar-10-batches-py/data_batch_5"]
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", None)
    with pytest.raises(CorruptDataError, match="missing data_batch_5"):
        load_cifar10(tmp_path, "train")
    assert path.exists()


def test_nothing_found_lists_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path, "test")
    msg = str(info.value)
    assert "\n" not in msg  # one line: the commands print it as their error
    for what in (f"not found under {tmp_path} ", "cifar-10-batches-py/", "cifar-10-python.tar.gz",
                 "test.tar.gz", "test.tar", "test/", "download=True", "--download"):
        assert what in msg


def test_root_comes_from_minires_data_then_home(tmp_path, batches, monkeypatch):
    write_folder(tmp_path, python_members(batches))
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path))
    _, labels, _ = load_cifar10(split="test")
    np.testing.assert_array_equal(labels, batches["test_batch"][1])
    monkeypatch.delenv("MINIRES_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cifar.resolve_data_root() == str(tmp_path / "home" / ".cache" / "minires" / "data")


def test_unknown_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="split must be one of .*'val'"):
        load_cifar10(tmp_path, "val")


def test_image_archive_layout_is_found_per_split(tmp_path):
    members, _ = image_members(np.random.default_rng(0), "test", per_class=1)
    write_tar(tmp_path / "test.tar", members, mode="w")
    assert cifar.find_cifar10(str(tmp_path), "test") == ("image-archive", str(tmp_path / "test.tar"))
    assert cifar.find_cifar10(str(tmp_path), "train") is None
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    write_folder(tmp_path, members)
    assert cifar.find_cifar10(str(tmp_path), "test") == ("image-folder", str(tmp_path / "test"))


def test_archive_member_reader_tolerates_other_members(tmp_path, batches, monkeypatch):
    members = python_members(batches)
    members["cifar-10-batches-py/notes/extra.txt"] = b"x"
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5_of(path))
    assert tarfile.is_tarfile(path)
    assert len(load_cifar10(tmp_path, "test")[1]) == 5
