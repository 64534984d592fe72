"""CIFAR ResNets / plain nets (He et al. 2015): parameter counts, state_dict
names, torch parity (forward, dx, every parameter gradient, train and eval),
stage shapes and float64 finite-difference checks.

The torch reference below is written here, after akamaster/pytorch_resnet_cifar10
(option A is its LambdaLayer: F.pad(x[:, :, ::2, ::2], ...)).
"""
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

import minires
from minires.gradcheck import gradcheck
from minires.models import cifar
from minires.models.cifar import ZeroPadShortcut, _cifar_plain, _cifar_resnet
from tests.helpers import assert_close, copy_params_to_torch, random_upstream, to_np, torch_tensor

FWD_RTOL, GRAD_RTOL = 1e-4, 1e-3


# ---------------------------------------------------------------- torch reference
class TorchLambdaLayer(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class TorchBlock(tnn.Module):
    def __init__(self, in_planes, planes, stride, option):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.option = option
        if option is None:  # plain block: no shortcut at all
            return
        self.shortcut = tnn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = TorchLambdaLayer(
                    lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                    "constant", 0))
            else:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(in_planes, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class TorchCifarResNet(tnn.Module):
    def __init__(self, n, option="A", num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1, option)
        self.layer2 = self._make_layer(32, n, 2, option)
        self.layer3 = self._make_layer(64, n, 2, option)
        self.linear = tnn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride, option):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(TorchBlock(self.in_planes, planes, s, option))
            self.in_planes = planes
        return tnn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def _randomise_batchnorm(model, rng):
    """Non-trivial BN affine parameters and running statistics, so that neither
    train nor eval mode reduces to the identity initialisation."""
    for m in model.modules():
        if isinstance(m, minires.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
            m.bias.data = (0.2 * rng.standard_normal(c)).astype(np.float32)
            m.running_mean[...] = 0.1 * rng.standard_normal(c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)


def _pair(kind, depth=20):
    """A minires model and its torch reference holding the same weights."""
    n = (depth - 2) // 6
    if kind == "plain":
        mr, ref = _cifar_plain(depth), TorchCifarResNet(n, option=None)
    else:
        mr, ref = _cifar_resnet(depth, shortcut=kind), TorchCifarResNet(n, option=kind)
    _randomise_batchnorm(mr, np.random.default_rng(1))
    copy_params_to_torch(mr, ref)
    return mr, ref


# ---------------------------------------------------------------- counts and names
PARAMS = {  # (option A, option B); plain nets have option A's count (no shortcut weights)
    "resnet20": (269_722, 272_474), "resnet32": (464_154, 466_906),
    "resnet44": (658_586, 661_338), "resnet56": (853_018, 855_770),
    "resnet110": (1_727_962, 1_730_714), "resnet1202": (19_421_274, 19_424_026),
}


def _count(model):
    return sum(int(p.size) for p in model.parameters())


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("option", ["A", "B"])
def test_parameter_counts(name, option):
    """resnet1202 included: building it takes about 0.6 s here (measured), so it
    stays in the default run."""
    want = PARAMS[name][0 if option == "A" else 1]
    assert _count(cifar.CIFAR_MODELS[name](shortcut=option)) == want


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_counts_equal_option_a(depth):
    plain = cifar.CIFAR_MODELS[f"plain{depth}"]()
    assert _count(plain) == PARAMS[f"resnet{depth}"][0]
    assert not any("shortcut" in k for k in plain.state_dict())


def test_num_classes_and_registry():
    assert set(cifar.CIFAR_MODELS) == {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} | {
        f"plain{d}" for d in (20, 32, 44, 56, 110)}
    m = cifar.resnet20(num_classes=100)
    assert m.linear.weight.shape == (100, 64) and m.fc is m.linear
    assert _count(m) == PARAMS["resnet20"][0] + 90 * 65
    m.fc = minires.nn.Linear(64, 5)  # torchvision-style head replacement lands on .linear
    assert m.linear.out_features == 5 and "fc" not in m._modules
    assert list(m.state_dict())[-2:] == ["linear.weight", "linear.bias"]


@pytest.mark.parametrize("kind", ["A", "B", "plain"])
def test_state_dict_keys_and_order_match_reference(kind):
    mr, ref = _pair(kind)
    assert list(mr.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert tuple(mr.state_dict()[k].shape) == tuple(v.shape), k


def test_initialisation_like_torchvision():
    m = cifar.resnet20()
    w = to_np(m.layer3[1].conv2.weight.data)  # 64x64x3x3: fan_out = 576
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / 576)) < 0.05 * np.sqrt(2 / 576)
    assert abs(w.mean()) < 0.01 * np.sqrt(2 / 576) * 10
    assert (to_np(m.layer1[0].bn2.weight.data) == 1).all()
    assert (to_np(m.layer1[0].bn2.bias.data) == 0).all()
    bound = 1 / np.sqrt(64)  # Linear: torch's default U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(to_np(m.linear.weight.data)).max() <= bound


def test_bad_arguments():
    with pytest.raises(ValueError, match="6n \\+ 2.*got 21"):
        _cifar_resnet(21)
    with pytest.raises(ValueError, match="'A' or 'B'.*'C'"):
        cifar.resnet20(shortcut="C")
    with pytest.raises(ValueError, match="ZeroPadShortcut.*in_planes=16, planes=48"):
        ZeroPadShortcut(16, 48)
    with pytest.raises(ValueError, match="ZeroPadShortcut: expected 16 channels.*\\(2, 8, 4, 4\\)"):
        ZeroPadShortcut(16, 32)(np.zeros((2, 8, 4, 4), np.float32))


# ---------------------------------------------------------------- shapes
def test_stage_shapes():
    m = cifar.resnet20()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with minires.no_grad():
        out = m.relu(m.bn1(m.conv1(x)))
        assert out.shape == (2, 16, 32, 32)
        out = m.layer1(out)
        assert out.shape == (2, 16, 32, 32)
        out = m.layer2(out)
        assert out.shape == (2, 32, 16, 16)
        out = m.layer3(out)
        assert out.shape == (2, 64, 8, 8)
        assert m(x).shape == (2, 10) and m(x).dtype == np.float32


def test_no_grad_keeps_no_cache():
    m = cifar.resnet20()
    x = np.zeros((2, 3, 32, 32), np.float32)
    with minires.no_grad():
        y = m(x)
    with pytest.raises(RuntimeError, match="no cache"):
        m.backward(np.ones_like(y))


# ---------------------------------------------------------------- torch parity
# Train mode is compared in float64.  In float32, at this seed, one batch-norm
# output of layer1 is 3.1e-7 (float64 value), within float32 rounding of the
# next ReLU's kink: minires's summation order gave -9.3e-8, torch's a
# positive value, and the flipped mask moved 42-70 of the 6144 dx values by
# up to 1e-2.  Any change of summation order (threads, BLAS kernels) can do
# that, in either framework; float64 cannot flip there.  Eval mode keeps the
# float32 check (no batch statistics), and the layers are checked in float32
# one by one.
@pytest.mark.parametrize("kind", ["A", "B", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_parity_with_torch(kind, training):
    mr, ref = _pair(kind)
    mr.train(training)
    ref.train(training)
    dtype, fwd_rtol, grad_rtol = np.float32, FWD_RTOL, GRAD_RTOL
    if training:
        mr, ref = mr.double(), ref.double()
        dtype, fwd_rtol, grad_rtol = np.float64, 1e-10, 1e-9
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 32, 32)).astype(dtype)
    xt = torch_tensor(x, requires_grad=True)

    y = mr(x)
    yt = ref(xt)
    assert y.dtype == dtype
    assert_close(y, yt, fwd_rtol, "logits")
    g = random_upstream(rng, y.shape, dtype)
    dx = mr.backward(g)
    yt.backward(torch_tensor(g))

    assert_close(dx, xt.grad, grad_rtol, "dx")
    ref_params = dict(ref.named_parameters())
    names = [k for k, _ in mr.named_parameters()]
    assert names == list(ref_params)
    for name, p in mr.named_parameters():
        assert_close(p.grad, ref_params[name].grad, grad_rtol, name)
    ref_sd = ref.state_dict()  # running statistics moved alike in train mode
    for k, v in mr.state_dict().items():
        if "running" in k:
            assert_close(v, ref_sd[k], fwd_rtol, k)
        elif k.endswith("num_batches_tracked"):
            assert int(to_np(v)) == int(ref_sd[k])
    assert all(not m._caches for m in mr.modules()), "backward left caches behind"


# ---------------------------------------------------------------- finite differences
def test_zero_pad_shortcut_forward_matches_torch():
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 6))
    y = ZeroPadShortcut(4, 8)(x)
    ref = F.pad(torch_tensor(x)[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2), "constant", 0)
    assert_close(y, ref, 1e-12, "option-A shortcut")
    assert y.shape == (2, 8, 3, 3) and y.dtype == np.float64


def test_zero_pad_shortcut_gradcheck():
    x = np.random.default_rng(4).standard_normal((2, 4, 5, 6))
    errors = gradcheck(ZeroPadShortcut(4, 8), x)
    assert errors["input0"] < 1e-8


@pytest.mark.parametrize("build", [lambda: _cifar_resnet(8, num_classes=3),
                                   lambda: _cifar_resnet(8, num_classes=3, shortcut="B"),
                                   lambda: _cifar_plain(8, num_classes=3)],
                         ids=["resnet8-A", "resnet8-B", "plain8"])
def test_tiny_network_gradcheck_float64(build):
    """Every gradient of a whole (n = 1) network in train mode against central
    differences; big tensors are checked along random directions."""
    model = build()
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8))
    errors = gradcheck(model, x, max_elements=64, n_directions=6)
    assert "input0" in errors and "linear.weight" in errors and "layer2.0.conv1.weight" in errors
