"""``minires eval``'s per-class accuracy and confusion matrix, on a data set
and a ResNet-20 built so that the right answer is known:

* every test image is one flat colour out of ten, colour ``j`` standing for
  class ``j``; each image's true class is set separately, so an image of
  class 3 painted in colour 5 is an image the model will call class 5;
* the ResNet-20 is a nearest-colour classifier: its first convolution copies
  the three input channels (centre tap only), batch norm shifts them to be
  positive, every residual branch is zero (its convolutions are), so the
  option-A shortcuts carry the colour to the pooled features, and the head
  scores class ``j`` by ``2 f.p_j - |p_j|^2`` (``p_j``: the features of colour
  ``j``), which is largest for the nearest colour.

The expected confusion matrix is counted from the (true class, colour)
pairs; the torch reference ResNet-20 with the same weights confirms that
each image is predicted as its colour.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minires import models
from minires.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from minires.metrics import confusion_matrix
from tests.helpers import copy_params_to_torch
from tests.models.torch_cifar_refs import TorchCifarResNet
from tests.trained_model_helpers import run_cli, write_checkpoint

COLOURS = np.array([[20 + 23 * j, 230 - 21 * j, (97 * j) % 256] for j in range(10)], np.uint8)
# (true class, colour shown) for each test image: the diagonal ones are right
PAIRS = ([(c, c) for c in range(10) for _ in range(2)]        # two right per class
         + [(3, 5), (3, 5), (7, 1), (7, 2), (9, 0), (0, 9)]    # the mistakes
         + [(8, 8)] * 3)                                       # class 8: 5 of 5


def _features(colours):
    """The pooled features the constructed network computes for a flat
    colour: normalised channel value / sqrt(1 + eps) (eval-mode batch norm,
    running var 1) + 3 (its bias)."""
    z = (colours / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    return z / np.sqrt(1 + 1e-5) + 3.0


def nearest_colour_resnet20():
    m = models.resnet20()
    sd = {k: np.array(v) for k, v in m.state_dict().items()}
    for k in sd:
        if k.endswith("conv1.weight") or k.endswith("conv2.weight"):
            sd[k][:] = 0  # every residual branch (and the stem) starts from zero
    for ch in range(3):
        sd["conv1.weight"][ch, ch, 1, 1] = 1.0  # the stem copies R, G, B
    sd["bn1.bias"][:3] = 3.0  # > every normalised value: ReLU keeps them
    # option A pads the channels by planes // 4 on each side at both down-
    # samplings: channel c of the stem is channel c + 8 + 16 at the head
    p = _features(COLOURS.astype(np.float64))
    sd["linear.weight"][:] = 0
    sd["linear.weight"][:, 24:27] = 2 * p
    sd["linear.bias"][:] = -(p ** 2).sum(axis=1)
    m.load_state_dict(sd)
    return m


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcm")
    model = nearest_colour_resnet20()
    ckpt = write_checkpoint(d / "best.ckpt", model)
    counts = {}
    for true, shown in PAIRS:
        i = counts[true] = counts.get(true, 0) + 1
        folder = d / "data" / "test" / CIFAR10_CLASSES[true]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.broadcast_to(COLOURS[shown], (32, 32, 3)).copy()
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    expected = np.zeros((10, 10), np.int64)
    for true, shown in PAIRS:
        expected[true, shown] += 1
    # torch's reference network with the same weights predicts each colour as
    # its class: the construction works, independently of minires
    ref = TorchCifarResNet(20)
    copy_params_to_torch(model, ref)
    x = torch.from_numpy(COLOURS[:, None, None, :].repeat(32, 1).repeat(32, 2)).permute(0, 3, 1, 2)
    x = (x.double() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1).double()) \
        / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1).double()
    with torch.no_grad():
        assert ref.eval()(x.float()).argmax(1).tolist() == list(range(10))
    return {"dir": d, "ckpt": ckpt, "data": str(d / "data"), "expected": expected}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRES_CACHE", str(tmp_path / "cache"))


def test_json_has_the_known_confusion_matrix_and_per_class_accuracy(setup):
    code, out, err = run_cli(["eval", "--checkpoint", setup["ckpt"], "--data", setup["data"],
                              "--json"])
    assert code == 0, err
    res = json.loads(out)
    exp = setup["expected"]
    assert res["confusion_matrix"] == exp.tolist()
    assert res["n"] == len(PAIRS) == 29
    assert res["accuracy"] == pytest.approx(23 / 29)  # 6 mistakes
    assert res["classes"] == list(CIFAR10_CLASSES)
    by_class = {r["class"]: r for r in res["per_class"]}
    assert by_class["cat"] == {"class": "cat", "n": 4, "correct": 2, "accuracy": 0.5}
    assert by_class["horse"] == {"class": "horse", "n": 4, "correct": 2, "accuracy": 0.5}
    assert by_class["truck"] == {"class": "truck", "n": 3, "correct": 2, "accuracy": 2 / 3}
    assert by_class["airplane"] == {"class": "airplane", "n": 3, "correct": 2, "accuracy": 2 / 3}
    assert by_class["ship"] == {"class": "ship", "n": 5, "correct": 5, "accuracy": 1.0}
    assert by_class["dog"] == {"class": "dog", "n": 2, "correct": 2, "accuracy": 1.0}


def test_text_report_shows_the_counts(setup):
    code, out, err = run_cli(["eval", "--checkpoint", setup["ckpt"], "--data", setup["data"]])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("resnet20 (") and "test accuracy 79.31%" in lines[0]
    header = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:header] if ln.split()}
    assert rows["cat"] == ["4", "50.00%"]  # the per-class table: images, accuracy
    assert rows["ship"] == ["5", "100.00%"]
    assert lines[header + 1].split() == [c[:5] for c in CIFAR10_CLASSES]
    matrix = [ln.split() for ln in lines[header + 2:header + 12]]
    assert [r[0] for r in matrix] == list(CIFAR10_CLASSES)
    assert [[int(v) for v in r[1:]] for r in matrix] == setup["expected"].tolist()


def test_plot_writes_a_png(setup, tmp_path):
    png = tmp_path / "confusion.png"
    code, out, err = run_cli(["eval", "--checkpoint", setup["ckpt"], "--data", setup["data"],
                              "--json", "--plot", png])
    assert code == 0, err
    assert json.loads(out)["plot"] == str(png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300


def test_plot_without_matplotlib_is_reported_before_the_data(setup, monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    code, _, err = run_cli(["eval", "--checkpoint", setup["ckpt"], "--data", tmp_path / "none",
                            "--plot", tmp_path / "c.png"])
    assert code == 2 and "minires[plot]" in err and "not found" not in err


def test_confusion_matrix_counts_pairs():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match=r"predictions must be in \[0, 3\)"):
        confusion_matrix([0], [3], 3)
