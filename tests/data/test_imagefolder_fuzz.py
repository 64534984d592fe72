"""A hypothesis fuzz of the image-folder reader: each damaged or odd input
either reads as documented (grey and RGBA become RGB, stray files are
skipped) or fails with CorruptDataError naming the file; nothing else, and
nothing is written anywhere."""
import io
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minires.data.cache import CorruptDataError
from minires.data.imagefolder import read_image_folder
from tests.data import encode_image, write_folder, write_tar

PIL = pytest.importorskip("PIL.Image")

# what is done to one image of a small, valid three-class set, and whether
# the set must still read (True) or fail naming that image (False)
DAMAGE = {"truncated": False, "random bytes": False, "wrong size": False, "grey": True,
          "rgba": True, "palette": True, "stray text file": True, "empty class folder": False,
          "absolute member": False, "dotdot member": False, "not in a class folder": False}


def _encoded(pixels, mode, fmt="PNG"):
    image = PIL.fromarray(pixels)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _dataset(rng, damage, cut):
    members = {}
    for c in ("bird", "cat", "dog"):
        for i in range(2):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            members[f"train/{c}/{i}.png"] = encode_image(pixels, "PNG")
    victim, pixels = "train/cat/1.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    if damage == "truncated":
        data = encode_image(pixels, "JPEG")
        members.pop(victim)
        victim = "train/cat/1.jpg"
        members[victim] = data[:max(1, int(len(data) * cut))]
    elif damage == "random bytes":
        members[victim] = bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    elif damage == "wrong size":
        members[victim] = encode_image(rng.integers(0, 256, (9, 8, 3), dtype=np.uint8), "PNG")
    elif damage in ("grey", "rgba", "palette"):
        members[victim] = _encoded(pixels, {"grey": "L", "rgba": "RGBA", "palette": "P"}[damage])
    elif damage == "stray text file":
        members["train/cat/notes.txt"] = b"not an image"
        victim = None
    elif damage == "empty class folder":
        victim = "train/frog"
    elif damage == "absolute member":
        members["/train/cat/9.png"] = members[victim]
        victim = "/train/cat/9.png"
    elif damage == "dotdot member":
        members["train/../cat/9.png"] = members[victim]
        victim = "train/../cat/9.png"
    elif damage == "not in a class folder":
        members["9.png"] = members[victim]
        victim = "9.png"
    return members, victim


@settings(max_examples=40, deadline=None)
@given(damage=st.sampled_from(sorted(DAMAGE)), container=st.sampled_from(["folder", "tar"]),
       seed=st.integers(0, 2**16), cut=st.floats(0.05, 0.95))
def test_damaged_or_odd_inputs_read_as_documented_or_fail_naming_the_file(tmp_path_factory, damage,
                                                                          container, seed, cut):
    tmp = tmp_path_factory.mktemp("fuzz")
    members, victim = _dataset(np.random.default_rng(seed), damage, cut)
    if container == "folder":
        if damage in ("absolute member", "dotdot member"):
            return  # a folder cannot hold such a path; the tar case covers it
        root = write_folder(str(tmp / "data"), members)
        if damage == "empty class folder":
            os.makedirs(os.path.join(root, "train", "frog"))
    else:
        if damage == "empty class folder":
            return  # a tar has no empty folders unless it lists one; the folder case covers it
        root = write_tar(str(tmp / "data.tar"), members, mode="w")
    before = sorted(os.listdir(tmp))
    if DAMAGE[damage]:
        images, labels, names = read_image_folder(root, image_size=(8, 8))
        assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
        assert names == ["bird", "cat", "dog"] and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
        if damage in ("grey", "rgba", "palette"):  # the pixels are Pillow's own RGB conversion
            expected = np.asarray(PIL.open(io.BytesIO(members[victim])).convert("RGB"))
            assert any(np.array_equal(image, expected) for image in images[labels == 1])
    else:
        with pytest.raises(CorruptDataError) as err:
            read_image_folder(root, image_size=(8, 8))
        assert os.path.basename(victim.rstrip("/")) in str(err.value)
    assert sorted(os.listdir(tmp)) == before  # nothing written beside the data
