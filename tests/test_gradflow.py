"""The gradient-flow recorder and ``minires gradflow``.

Every reference gradient is torch's: the torch blocks below feed ``x`` to the
residual path and to the shortcut as two separate tensors (clones), so
autograd itself reports each path's share of dL/dx.  The recorder must find
the same arrays from outside minires's modules, and leave them unchanged.
"""
import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from minires import nn
from minires.gradflow import (GradientRecorder, build_cifar_model, configure_gradflow,
                              gradient_profile, run_gradflow)
from minires.models import resnet18
from minires.models.cifar import _cifar_plain, _cifar_resnet
from minires.nn.blocks import ResBlockConv, ResBlockDownSamp, ResBlockMLP
from tests.helpers import assert_close, copy_params_to_torch, random_upstream, to_np, torch_tensor

RTOL64 = 1e-10


# ---------------------------------------------------------------- torch references
class TorchSplitBlock(tnn.Module):
    """relu(residual(x) + shortcut(x)) keeping, after backward, dY (``y.grad``),
    dY2 (``sum.grad``), dX (``x.grad``), dX_residual and dX_skip."""

    plain = False

    def forward(self, x):
        self.x = x
        x.retain_grad()
        if self.plain:
            self.y = F.relu(self.residual(x))
        else:
            self.x_res, self.x_skip = x.clone(), x.clone()
            self.x_res.retain_grad()
            self.x_skip.retain_grad()
            self.sum = self.residual(self.x_res) + self.shortcut(self.x_skip)
            self.sum.retain_grad()
            self.y = F.relu(self.sum)
        self.y.retain_grad()
        return self.y

    def shortcut(self, x):
        return x


class TorchMLP(TorchSplitBlock):
    def __init__(self, f):
        super().__init__()
        self.Z1, self.bn, self.Z2 = tnn.Linear(f, f), tnn.BatchNorm1d(f), tnn.Linear(f, f)

    def residual(self, x):
        return self.Z2(F.relu(self.bn(self.Z1(x))))


class TorchConvBlock(TorchSplitBlock):
    """ResBlockConv (stride 1, 'same'), ResBlockDownSamp (``down``) or the
    CIFAR BasicBlock / PlainBlock (``cifar`` with option A, B, identity, plain)."""

    def __init__(self, cin, cout, stride=1, padding=1, option=None, down=False):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, padding, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, padding, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.option, self.plain = option, option == "plain"
        if down:
            self.downsampX = tnn.Conv2d(cin, cout, 1, stride=2, bias=False)
        elif option == "B" and (stride != 1 or cin != cout):
            self.shortcut_proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                tnn.BatchNorm2d(cout))
        self.pad = cout // 4 if (option == "A" and (stride != 1 or cin != cout)) else None

    def residual(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x):
        if hasattr(self, "downsampX"):
            return self.downsampX(x)
        if hasattr(self, "shortcut_proj"):
            return self.shortcut_proj(x)
        if self.pad is not None:
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return x


class TorchCifarNet(tnn.Module):
    def __init__(self, n, option):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(TorchConvBlock(cin, planes, s, option=option))
                cin = planes
            stages.append(tnn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = tnn.Linear(64, 10)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.linear(out.mean(dim=(2, 3)))


def _load(mr, ref):
    """minires's weights into the torch reference (option B's shortcut is
    ``shortcut.*`` in minires and ``shortcut_proj.*`` here)."""
    sd = {k.replace("shortcut.", "shortcut_proj."): torch.from_numpy(np.array(to_np(v)))
          for k, v in mr.state_dict().items()}
    ref.load_state_dict(sd, strict=True)


def _torch_blocks(ref):
    return [m for m in ref.modules() if isinstance(m, TorchSplitBlock)]


def _check_block(rec, tb, rtol):
    a = rec.arrays
    assert_close(a["dY"], tb.y.grad, rtol, "dY")
    assert_close(a["dX"], tb.x.grad, rtol, "dX")
    if tb.plain:
        assert rec.kind == "plain" and rec.grad_skip is None and rec.grad_residual is None
        assert "dX_skip" not in a
        return
    assert rec.kind == "residual"
    assert_close(a["dY2"], tb.sum.grad, rtol, "dY2")
    assert_close(a["dX_skip"], tb.x_skip.grad, rtol, "dX_skip")
    assert_close(a["dX_residual"], tb.x_res.grad, rtol, "dX_residual")
    for norm, ref in ((rec.grad_skip, tb.x_skip.grad), (rec.grad_residual, tb.x_res.grad),
                      (rec.grad_input, tb.x.grad), (rec.grad_sum, tb.sum.grad)):
        assert norm == pytest.approx(float(ref.double().norm()), rel=max(rtol, 1e-9))


# ---------------------------------------------------------------- parity with torch
@pytest.mark.parametrize("option", ["A", "B", "plain"])
def test_cifar_net_blocks_and_layers_match_torch(option):
    mr = (_cifar_plain(8) if option == "plain" else _cifar_resnet(8, shortcut=option)).double()
    ref = TorchCifarNet(1, option).double()
    _load(mr, ref)
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    with GradientRecorder(mr, keep_arrays=True) as rec:
        crit = nn.CrossEntropyLoss()
        crit(mr(x), labels)
        mr.backward(crit.backward())
    F.cross_entropy(ref(torch_tensor(x, requires_grad=True)), torch.from_numpy(labels)).backward()
    tblocks = _torch_blocks(ref)
    assert [b.name for b in rec.blocks] == ["layer3.0", "layer2.0", "layer1.0"]  # backward order
    for b in rec.blocks:
        _check_block(b, tblocks[["layer1.0", "layer2.0", "layer3.0"].index(b.name)], RTOL64)
    tparams = dict(ref.named_parameters())
    for layer in rec.layers:
        tname = layer.name.replace("shortcut.", "shortcut_proj.") + ".weight"
        w = tparams[tname].detach()
        assert layer.grad_weight == pytest.approx(float(tparams[tname].grad.norm()), rel=1e-9)
        assert layer.weight == pytest.approx(float(w.norm()), rel=1e-12)


@pytest.mark.parametrize("kind,shape", [("mlp", (6, 5)), ("conv", (3, 3, 5, 6)),
                                        ("downsamp", (3, 3, 7, 9))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_textbook_blocks_split_matches_torch(kind, shape, dtype):
    c = shape[1]
    mr, ref = {"mlp": (ResBlockMLP(c), TorchMLP(c)),
               "conv": (ResBlockConv(c), TorchConvBlock(c, c, padding="same")),
               "downsamp": (ResBlockDownSamp(c), TorchConvBlock(c, 2 * c, 2, down=True))}[kind]
    mr.to(dtype=dtype)
    ref.to(torch.float32 if dtype == np.float32 else torch.float64)
    copy_params_to_torch(mr, ref)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    with GradientRecorder(mr, keep_arrays=True) as rec:
        y = mr(x)
        dy = random_upstream(rng, y.shape, dtype)
        mr.backward(dy)
    ref(torch_tensor(x, requires_grad=True)).backward(torch_tensor(dy))
    (block,) = rec.blocks
    assert block.shortcut == ("Conv2d" if kind == "downsamp" else "identity")
    _check_block(block, ref, 1e-4 if dtype == np.float32 else RTOL64)


# ---------------------------------------------------------------- exact identities
@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["mlp", "conv", "downsamp"]), n=st.integers(2, 5),
       c=st.integers(1, 4), hw=st.integers(3, 6), seed=st.integers(0, 2**16))
def test_split_adds_up_exactly_and_identity_skip_is_dy2(kind, n, c, hw, seed):
    """dX_skip + dX_residual == dX bit for bit; through an identity shortcut
    dX_skip is dY2 = dY * 1{Y2 > 0} (Y = relu(Y2), so Y2 > 0 exactly where Y > 0)."""
    block = {"mlp": ResBlockMLP, "conv": ResBlockConv, "downsamp": ResBlockDownSamp}[kind](c)
    rng = np.random.default_rng(seed)
    shape = (n, c) if kind == "mlp" else (n, c, hw, hw)
    x = rng.standard_normal(shape).astype(np.float32)
    with GradientRecorder(block, keep_arrays=True) as rec:
        y = block(x)
        dy = random_upstream(rng, y.shape, np.float32)
        dx = block.backward(dy)
    a = rec.blocks[0].arrays
    assert np.array_equal(a["dX"], dx)
    assert np.array_equal(a["dX_skip"] + a["dX_residual"], dx)
    assert rec.blocks[0].split_error == 0.0
    assert np.array_equal(a["dY2"], dy * (y > 0))
    if kind != "downsamp":
        assert np.array_equal(a["dX_skip"], a["dY2"])


def test_torchvision_blocks_split_exactly_and_depths_count_the_main_path():
    model = resnet18(num_classes=10)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with GradientRecorder(model) as rec:
        model.backward(np.ones((2, 10), np.float32) + 0.1 * model(x))
    assert len(rec.blocks) == 8 and all(b.split_error == 0.0 for b in rec.blocks)
    shortcuts = {b.name: b.shortcut for b in rec.blocks}
    assert shortcuts["layer2.0"] == "Conv2d+BatchNorm2d" and shortcuts["layer1.1"] == "identity"
    main = sorted(r.depth for r in rec.layers if not r.on_shortcut)
    assert main == list(range(1, 19))  # ResNet-18: 17 convs + fc on the main path


def test_shortcut_layers_take_their_blocks_depth():
    model = _cifar_resnet(20, shortcut="B")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with GradientRecorder(model) as rec:
        model.backward(model(x))
    depth = {r.name: r.depth for r in rec.layers}
    assert sorted(r.depth for r in rec.layers if not r.on_shortcut) == list(range(1, 21))
    assert [r.name for r in rec.layers if r.on_shortcut] == ["layer3.0.shortcut.0",
                                                            "layer2.0.shortcut.0"]
    assert depth["layer2.0.shortcut.0"] == depth["layer2.0.conv1"] == 8
    assert {b.name: b.depth for b in rec.blocks}["layer3.0"] == 14


# ---------------------------------------------------------------- leaves modules unchanged
def _grads(model):
    return [None if p.grad is None else p.grad.copy() for p in model.parameters()]


def test_recorder_leaves_modules_unchanged():
    """Same forward/backward from the same state, with and without the
    recorder: identical dx and parameter gradients, bit for bit; afterwards
    no wrapper is left on any module and nothing more is recorded."""
    rng = np.random.default_rng(1)
    model = build_cifar_model("resnet8")
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    dy = random_upstream(rng, (3, 10), np.float32)
    snapshot = {k: v.copy() for k, v in model.state_dict().items()}
    model(x)
    dx_free = model.backward(dy)
    grads_free, state_free = _grads(model), {k: v.copy() for k, v in model.state_dict().items()}
    model.zero_grad()
    model.load_state_dict(snapshot)
    with GradientRecorder(model) as rec:
        model(x)
        dx_rec = model.backward(dy)
    assert rec.blocks and rec.layers
    assert np.array_equal(dx_rec, dx_free)
    assert all(np.array_equal(a, b) for a, b in zip(_grads(model), grads_free))
    assert all(np.array_equal(v, state_free[k]) for k, v in model.state_dict().items())
    assert not any("backward" in m.__dict__ for m in model.modules())
    n_blocks = len(rec.blocks)
    model(x)
    model.backward(dy)  # outside the context: nothing more is recorded
    assert len(rec.blocks) == n_blocks


def test_recorder_restores_after_an_error_and_when_nested():
    model = build_cifar_model("plain8")
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ZeroDivisionError):
        with GradientRecorder(model):
            1 / 0
    assert not any("backward" in m.__dict__ for m in model.modules())
    block = ResBlockMLP(3)
    xb = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    with GradientRecorder(block, keep_arrays=True) as rec:
        with pytest.raises(RuntimeError, match="ResBlockMLP.backward: no cache"):
            block.backward(xb)  # no forward first: the block's own error, passed on
        dx = block.backward(block(xb))  # and the next backward is recorded normally
    assert len(rec.blocks) == 1 and np.array_equal(rec.blocks[0].arrays["dX"], dx)
    assert rec._frames == []
    with GradientRecorder(model) as outer:
        with GradientRecorder(model) as inner:
            model.backward(model(x))
        assert any("backward" in m.__dict__ for m in model.modules())  # outer's, still on
        model.backward(model(x))
    assert not any("backward" in m.__dict__ for m in model.modules())
    assert len(inner.blocks) == 3 and len(outer.blocks) == 6
    assert [b.grad_input for b in inner.blocks] == [b.grad_input for b in outer.blocks[:3]]


def test_gradient_profile_restores_running_stats_and_grads():
    model = build_cifar_model("resnet8")
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    model.eval()
    marker = [p.data * 0 + 1 for p in model.parameters()]
    for p, g in zip(model.parameters(), marker):
        p.grad = g
    state = {k: v.copy() for k, v in model.state_dict().items()}
    prof = gradient_profile(model, x, np.array([0, 1, 2, 3]))
    assert not model.training
    assert all(p.grad is g for p, g in zip(model.parameters(), marker))
    assert all(np.array_equal(v, state[k]) for k, v in model.state_dict().items())
    assert [b["depth"] for b in prof["blocks"]] == [2, 4, 6]
    assert prof["loss"] > 0 and all(b["grad_input"] > 0 for b in prof["blocks"])


# ---------------------------------------------------------------- the command
def _args(*argv):
    p = argparse.ArgumentParser()
    configure_gradflow(p)
    return p.parse_args(list(argv))


def test_command_with_random_data_writes_png_json_markdown(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("MINIRES_DATA", raising=False)
    out, js, md = tmp_path / "g.png", tmp_path / "g.json", tmp_path / "g.md"
    args = _args("--models", "plain8,resnet8", "--steps", "2", "--batch-size", "8",
                 "--probe-size", "8", "--out", str(out), "--json", str(js), "--markdown", str(md))
    assert run_gradflow(args) == 0
    text = capsys.readouterr().out
    assert "RANDOM DATA" in text and "| layer1.0 | 2 | identity |" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(js.read_text())
    assert "RANDOM DATA" in res["settings"]["data"]
    r = res["models"]["resnet8"]
    assert len(r["train_loss"]) == 2 and len(r["init"]["blocks"]) == 3
    assert all(b["split_error"] == 0.0 for b in r["trained"]["blocks"])
    assert all(b["grad_skip"] is None for b in res["models"]["plain8"]["init"]["blocks"])
    assert "| layer | depth |" in md.read_text()


@pytest.mark.parametrize("argv,match", [(["--models", "alexnet"], "resnet<depth>"),
                                        (["--models", "resnet18"], "6n \\+ 2"),
                                        (["--models", ","], "at least one model"),
                                        (["--steps", "-1"], "--steps: must be >= 0")])
def test_command_rejects_bad_arguments(argv, match):
    from minires.cli import CommandError
    with pytest.raises(CommandError, match=match):
        run_gradflow(_args(*argv))


def test_registered_in_the_cli(tmp_path, monkeypatch):
    from minires import cli
    assert "gradflow" in cli.SUBCOMMANDS
    monkeypatch.delenv("MINIRES_DATA", raising=False)
    assert cli.main(["gradflow", "--models", "resnet8", "--steps", "1", "--batch-size", "4",
                     "--probe-size", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert cli.main(["gradflow", "--models", "resnet9"]) == 2
