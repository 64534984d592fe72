"""``minires predict``: probabilities against the torch reference ResNet-20
given the same pixels, the resize against torch's antialiased bilinear
interpolation, and the errors a user meets."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minires.convert import save_safetensors
from minires.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from minires.inference import read_image
from tests.helpers import copy_params_to_torch
from tests.models.torch_cifar_refs import TorchCifarResNet
from tests.test_cli_errors import _one_line_error, _run
from tests.trained_model_helpers import random_resnet20, run_cli, write_checkpoint


def _save(path, pixels, fmt):
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return str(path)


def _torch_probs(model, pixels_list):
    """torch's side: ToTensor + Normalize written in torch ops, the reference
    ResNet-20 with minires's weights, softmax."""
    ref = TorchCifarResNet(20)
    copy_params_to_torch(model, ref)
    x = torch.from_numpy(np.stack(pixels_list)).permute(0, 3, 1, 2).double() / 255.0
    x = (x - torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(ref.eval()(x.float()).double(), dim=1).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random ResNet-20, its checkpoint and its .safetensors export, and
    four 32x32 images (PNG noise, a JPEG) with the pixels they decode to."""
    d = tmp_path_factory.mktemp("predict")
    model = random_resnet20(seed=11)
    ckpt = write_checkpoint(d / "best.ckpt", model)
    code, _, err = run_cli(["export", "--checkpoint", ckpt, "--out", d / "best.safetensors"])
    assert code == 0, err
    rng = np.random.default_rng(5)
    paths, pixels = [], []
    for i in range(3):
        px = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        paths.append(_save(d / f"noise{i}.png", px, "PNG"))
        pixels.append(px)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([(127 + 100 * np.sin(xx / 4.0 + c)) * np.ones_like(yy) for c in range(3)],
                      -1).astype(np.uint8)
    paths.append(_save(d / "smooth.jpg", smooth, "JPEG"))
    pixels.append(np.asarray(Image.open(paths[-1]).convert("RGB")))  # what the JPEG decodes to
    return {"dir": d, "model": model, "ckpt": ckpt, "st": str(d / "best.safetensors"),
            "paths": paths, "probs": _torch_probs(model, pixels)}


@pytest.mark.parametrize("weights", ["ckpt", "st"], ids=["checkpoint", "safetensors"])
def test_probabilities_match_torch(trained, weights):
    code, out, err = run_cli(["predict", "--checkpoint", trained[weights], *trained["paths"],
                              "--json", "--top-k", "10"])
    assert code == 0, err
    res = json.loads(out)
    assert res["model"] == "resnet20"
    assert [p["image"] for p in res["predictions"]] == trained["paths"]
    for pred, ref in zip(res["predictions"], trained["probs"]):
        top = pred["top"]
        assert [t["index"] for t in top] == list(np.argsort(-ref, kind="stable"))
        assert [t["class"] for t in top] == [CIFAR10_CLASSES[t["index"]] for t in top]
        got = np.array([t["probability"] for t in top])
        np.testing.assert_allclose(got, ref[[t["index"] for t in top]], rtol=0, atol=2e-6)


def test_text_output_lists_top_k_per_image(trained):
    code, out, err = run_cli(["predict", "--checkpoint", trained["ckpt"], *trained["paths"][:2]])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    for line, path, ref in zip(lines, trained["paths"], trained["probs"]):
        best = np.argsort(-ref, kind="stable")[:3]  # default --top-k 3
        assert line == f"{path}: " + ", ".join(f"{CIFAR10_CLASSES[i]} {100 * ref[i]:.1f}%"
                                               for i in best)


@pytest.mark.parametrize("h, w", [(50, 80), (97, 41), (64, 64), (20, 24), (300, 200)])
def test_resize_is_torchvision_resize_then_center_crop(tmp_path, h, w):
    """Against torch's antialiased bilinear interpolation (in float64) of the
    shorter side to 32, then the central crop: within one grey level (Pillow
    rounds to uint8 between its two passes)."""
    px = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = read_image(_save(tmp_path / "x.png", px, "PNG")).astype(np.float64)
    nh, nw = (32, int(32 * w / h)) if h <= w else (int(32 * h / w), 32)
    t = torch.from_numpy(px).permute(2, 0, 1)[None].double()
    ref = F.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True,
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    top, left = int(round((nh - 32) / 2)), int(round((nw - 32) / 2))
    ref = ref[top:top + 32, left:left + 32]
    assert got.shape == (32, 32, 3)
    assert np.abs(got - ref).max() <= 1.0


def test_no_resize_when_one_side_is_32(tmp_path):
    """A 32x96 image is cut, not resampled: exactly its middle 32 columns;
    a 32x32 one is used as it is."""
    px = np.random.default_rng(0).integers(0, 256, (32, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "w.png", px, "PNG")),
                                  px[:, 32:64])
    np.testing.assert_array_equal(read_image(_save(tmp_path / "s.png", px[:, :32], "PNG")),
                                  px[:, :32])


def test_grey_and_rgba_images_become_rgb(tmp_path):
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    got = read_image(_save(tmp_path / "g.png", grey, "PNG"))
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))
    rgba = np.random.default_rng(1).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "a.png", rgba, "PNG")),
                                  rgba[..., :3])


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["garbage", "truncated", "text"])
def test_an_unreadable_image_is_named(trained, kind):
    d = trained["dir"]
    whole = open(trained["paths"][3], "rb").read()  # the JPEG
    data = {"garbage": b"\xff\xd8\xff\xe0 this is not really a JPEG",
            "truncated": whole[:len(whole) // 3], "text": b"some notes\n"}[kind]
    (d / f"broken-{kind}.jpg").write_bytes(data)
    proc = _run(["predict", "--checkpoint", trained["ckpt"], trained["paths"][0],
                 str(d / f"broken-{kind}.jpg"), "--strict"], d)
    line = _one_line_error(proc, "predict", f"broken-{kind}.jpg", "cannot decode the image")
    assert "BytesIO" not in line
    # without --strict: named, skipped and counted; the readable image is predicted
    proc = _run(["predict", "--checkpoint", trained["ckpt"], trained["paths"][0],
                 str(d / f"broken-{kind}.jpg")], d)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(trained["paths"][0] + ": ")
    assert len(proc.stdout.splitlines()) == 1
    skipped, summary = proc.stderr.strip().splitlines()
    assert skipped.startswith(f"minires predict: skipped {d / f'broken-{kind}.jpg'}")
    assert "cannot decode the image" in skipped
    assert summary.startswith("minires predict: 1 image in ") and \
        summary.endswith("; skipped 1 that could not be read")


@pytest.mark.parametrize("argv, needles", [
    (["predict", "--checkpoint", "best.ckpt", "missing.png"], ["image not found: missing.png"]),
    (["predict", "--checkpoint", "none.ckpt", "noise0.png"], ["checkpoint not found: none.ckpt"]),
    (["predict", "--checkpoint", "best.ckpt", "noise0.png", "--top-k", "0"], ["--top-k"]),
    (["predict", "--checkpoint", "best.ckpt", "empty"], ["empty: no image files in this folder"]),
    (["predict", "--checkpoint", "best.ckpt", "nothing*.png"],
     ["nothing*.png: no file matches this pattern"]),
    (["predict", "--checkpoint", "best.ckpt", "noise0.png", "--out", "p.txt"],
     ["--out must end in .csv or .jsonl"]),
])
def test_predict_errors(trained, monkeypatch, argv, needles):
    monkeypatch.chdir(trained["dir"])
    (trained["dir"] / "empty").mkdir(exist_ok=True)
    code, out, err = run_cli(argv)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minires predict: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_a_safetensors_file_without_architecture_says_what_to_do(trained, tmp_path):
    path = tmp_path / "bare.safetensors"
    save_safetensors(trained["model"], path)  # no metadata
    code, _, err = run_cli(["predict", "--checkpoint", path, trained["paths"][0]])
    assert code == 2 and "no 'architecture' in its metadata" in err and "load_pretrained" in err


def test_without_pillow(trained):
    code = ("import sys; sys.modules['PIL'] = None  # as if not installed\n"
            "from minires.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = _run(["predict", "--checkpoint", trained["ckpt"], trained["paths"][0]],
                trained["dir"], code=code)
    _one_line_error(proc, "predict", "minires[jpeg]")


# ---------------------------------------------------------------- folders, globs, files
@pytest.fixture
def photos(trained, tmp_path):
    """A folder tree of the fixture's images: photos/a/*.png, photos/b/c/smooth.jpg."""
    import shutil
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "b" / "c").mkdir(parents=True)
    for p in trained["paths"][:3]:
        shutil.copy(p, tmp_path / "photos" / "a")
    shutil.copy(trained["paths"][3], tmp_path / "photos" / "b" / "c")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path / "photos"


def test_a_folder_and_a_glob_predict_every_image_as_single_files_do(trained, photos):
    code, out, err = run_cli(["predict", "--checkpoint", trained["ckpt"], str(photos),
                              str(photos / "a" / "noise*.png"), "--json", "--top-k", "10"])
    assert code == 0, err
    rows = json.loads(out)["predictions"]
    folder = [str(photos / "a" / f"noise{i}.png") for i in range(3)] + \
        [str(photos / "b" / "c" / "smooth.jpg")]
    assert [r["image"] for r in rows] == folder + folder[:3]  # sorted; notes.txt left out
    for r, want in zip(rows, list(trained["probs"]) + list(trained["probs"][:3])):
        got = sorted(r["top"], key=lambda t: t["index"])
        np.testing.assert_allclose([t["probability"] for t in got], want, rtol=1e-4, atol=1e-6)
    assert err.startswith("minires predict: 7 images in ") and "images/s)" in err


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predictions_to_a_file(trained, photos, tmp_path, fmt):
    import csv
    out_file = tmp_path / f"p.{fmt}"
    code, out, err = run_cli(["predict", "--checkpoint", trained["ckpt"], str(photos),
                              "--out", str(out_file), "--top-k", "2", "--batch-size", "3"])
    assert code == 0 and out == "", err
    assert f"wrote {out_file}" in err
    if fmt == "csv":
        rows = list(csv.DictReader(open(out_file)))
        assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2"]
        images = [r["image"] for r in rows]
        first = [(r["class_1"], float(r["probability_1"])) for r in rows]
    else:
        rows = [json.loads(line) for line in open(out_file)]
        images = [r["image"] for r in rows]
        first = [(r["top"][0]["class"], r["top"][0]["probability"]) for r in rows]
    assert len(images) == 4 and images[-1].endswith("smooth.jpg")
    for (cls, p), want in zip(first, trained["probs"]):
        assert cls == CIFAR10_CLASSES[int(np.argmax(want))]
        assert p == pytest.approx(want.max(), rel=1e-4)
