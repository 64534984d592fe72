"""Builders of tiny CIFAR-10 look-alikes, shared by the data tests.

Every builder writes into a folder the test owns (``tmp_path``) and returns
what it wrote, so a test can compare the loader's output with the truth.
"""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5_of(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def python_batches(rng, per_batch=(3, 2, 2, 4, 1), test_size=5):
    """{file name: (planar uint8 N×3072, labels list)} in the official layout."""
    sizes = dict(zip(TRAIN_FILES, per_batch), test_batch=test_size)
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   [int(v) for v in rng.integers(0, 10, n)]) for name, n in sizes.items()}


def pickle_batch(data, labels, protocol=2):
    # bytes keys, as the official (Python 2) files have them
    return pickle.dumps({b"batch_label": b"tiny", b"labels": labels, b"data": data},
                        protocol=protocol)


def pickle_meta(names=CLASSES):
    return pickle.dumps({b"label_names": [n.encode() for n in names], b"num_vis": 3072},
                        protocol=2)


def python_members(batches):
    """{member path: bytes}, as in cifar-10-python.tar.gz."""
    members = {f"cifar-10-batches-py/{name}": pickle_batch(d, l) for name, (d, l) in batches.items()}
    members["cifar-10-batches-py/batches.meta"] = pickle_meta()
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return members


def write_tar(path, members, mode="w:gz"):
    """A tar archive of {member path: bytes} (folders implied)."""
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_folder(root, members):
    for name, data in members.items():
        path = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def tiny_cifar_folder(root, per_batch=48, test_size=40, seed=0):
    """A python-format CIFAR-10 folder at ``root``: 5 x ``per_batch`` training
    images and ``test_size`` test images; returns the folder as a str."""
    batches = python_batches(np.random.default_rng(seed), per_batch=(per_batch,) * 5,
                             test_size=test_size)
    write_folder(str(root), python_members(batches))
    return str(root)


def expected_nhwc(batches, names):
    """Images (N×32×32×3) and labels of the named batches, unpacked channel by
    channel the slow way: red plane, green plane, blue plane."""
    data = np.concatenate([batches[n][0] for n in names])
    images = np.empty((len(data), 32, 32, 3), dtype=np.uint8)
    for ch in range(3):
        images[..., ch] = data[:, ch * 1024:(ch + 1) * 1024].reshape(-1, 32, 32)
    labels = np.array([v for n in names for v in batches[n][1]], dtype=np.int64)
    return images, labels


def encode_image(pixels, fmt="JPEG"):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def image_members(rng, split="train", classes=CLASSES, per_class=2, fmt="JPEG", size=32):
    """({member path: encoded bytes}, {member path: (class, pixels)}).

    JPEG images are one flat colour each, which JPEG keeps to within a unit
    or two; PNG images are random noise, kept exactly."""
    ext = "jpg" if fmt == "JPEG" else "png"
    members, truth = {}, {}
    for c in classes:
        for i in range(per_class):
            if fmt == "JPEG":
                colour = rng.integers(20, 236, 3, dtype=np.uint8)
                pixels = np.broadcast_to(colour, (size, size, 3)).copy()
            else:
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            name = f"{split}/{c}/{i:04d}.{ext}"
            members[name] = encode_image(pixels, fmt)
            truth[name] = (c, pixels)
    return members, truth
