"""ONNX export: every graph passes onnx.checker and ONNX Runtime's logits match
minires's eval-mode logits to 1e-5 (relative to the largest), on real CIFAR-10
test images when the data is here, unfolded and folded."""
import io
import json
import os
import tarfile

import numpy as np
import pytest

import minires
from minires import nn
from minires.cli import main
from minires.data import normalize
from minires.errors import ExportError
from minires.models import cifar, get, resnet
from minires.onnx_export import to_onnx
from tests.test_fold import trained_like

onnx = pytest.importorskip("onnx", reason="the onnx extra (a test dependency)")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra (a test dependency)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "datasets", "cifar10-jpeg")


def cifar_test_images(n=32):
    """The first ``n`` images of CIFAR-10's test archive, normalised as in
    training (random images where the data is not on this machine)."""
    root = os.environ.get("MINIRES_DATA", SHARED)
    archive = os.path.join(root, "test.tar.gz")
    if not os.path.exists(archive):
        rng = np.random.default_rng(0)
        return normalize(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)), "random"
    from PIL import Image
    pixels = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                if len(pixels) == n:
                    break
    return normalize(np.stack(pixels)), "CIFAR-10"


def run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def chapter_model():
    """The chapter's three blocks in a small classifier."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ResBlockConv(8),
                         nn.ResBlockDownSamp(8), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(1), nn.ResBlockMLP(16), nn.Dropout(0.5), nn.Linear(16, 10))


MODELS = {
    "resnet20": lambda: get("resnet20"),
    "resnet20 option B": lambda: cifar.resnet20(shortcut="B"),
    "plain20": lambda: get("plain20"),
    "resnet18 (torchvision)": lambda: get("resnet18", num_classes=10),
    "bottleneck ResNet": lambda: resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=10,
                                               width=16),
    "chapter blocks": chapter_model,
}


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_matches_minires(name, fold):
    minires.manual_seed(0)
    model = trained_like(MODELS[name]())
    x, _ = cifar_test_images()
    with minires.no_grad():
        want = model(x)
    model.train()  # to_onnx exports eval mode, and leaves the model's own mode alone
    proto = to_onnx(model, (3, 32, 32), fold=fold)  # onnx.checker.check_model(full_check=True)
    assert model.training
    onnx.checker.check_model(proto)
    ops = [node.op_type for node in proto.graph.node]
    n_bn = sum(op == "BatchNormalization" for op in ops)
    if fold:  # only ResBlockMLP's BatchNorm1d follows no convolution
        assert n_bn == (1 if name == "chapter blocks" else 0), ops
    else:
        assert n_bn > 0
    got = run_onnx(proto, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # the batch dimension is dynamic
    np.testing.assert_allclose(run_onnx(proto, x[:3]), want[:3], rtol=0,
                               atol=1e-5 * np.abs(want).max())


def test_a_layer_without_an_onnx_form_is_named():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Doubler()))
    with pytest.raises(ExportError, match=r"Doubler \(at 1\.1\) has no ONNX form yet"):
        to_onnx(model)
    with pytest.raises(ExportError, match=r"AdaptiveAvgPool2d \(at 1\) with output_size=2"):
        to_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2)))
    with pytest.raises(ExportError, match=r"AlexNet \(at the model itself\)"):
        to_onnx(get("alexnet"), (3, 64, 64))


def test_export_command_writes_a_graph_onnx_runtime_runs(tmp_path, capsys):
    from tests.data import tiny_cifar_folder
    from minires.inference import load_trained
    data = tiny_cifar_folder(tmp_path / "data", per_batch=16, test_size=8)
    out = str(tmp_path / "run")
    assert main(["train", "--model", "resnet20", "--data", data, "--epochs", "1",
                 "--batch-size", "32", "--out", out, "--no-progress"]) == 0
    ckpt, path = os.path.join(out, "last.ckpt"), str(tmp_path / "r20.onnx")
    capsys.readouterr()
    assert main(["export", "--checkpoint", ckpt, "--out", path, "--fold"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path}: resnet20 as ONNX (opset 17, "
                                              f"batch norm folded)")
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["architecture"] == "resnet20" and len(json.loads(meta["classes"])) == 10
    assert len(json.loads(meta["mean"])) == 3 and "minus mean" in meta["input"]
    model, _ = load_trained(ckpt)
    x, _ = cifar_test_images(8)
    with minires.no_grad():
        want = model(x)
    np.testing.assert_allclose(run_onnx(proto, x), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # --fold is for ONNX only; a wrong extension is named
    assert main(["export", "--checkpoint", ckpt, "--fold"]) == 2
    assert "--fold goes with --format onnx" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ckpt, "--format", "onnx", "--out", "x.bin"]) == 2
    assert "--out must end in .onnx for --format onnx" in capsys.readouterr().err


def test_a_missing_onnx_extra_is_one_line(tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    assert main(["export", "--checkpoint", str(tmp_path / "none.ckpt"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("minires export: error: ONNX export needs the onnx package: pip install "
                   "'minires[onnx]' (onnx, and onnxruntime to run the file)")
