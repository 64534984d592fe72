"""Every layer on CuPy against torch CUDA (TF32 off), float32 and float64, and
against finite differences on the GPU.  Forward, dx with a random non-uniform
upstream gradient, every parameter gradient, and BN's running statistics."""
import numpy as np
import pytest
import torch
import torch.nn as tnn

import minires
from minires import nn
from minires.gradcheck import gradcheck
from tests.helpers import assert_close, copy_params_to_torch, random_upstream
from tests.gpu.common import DEVICES, on, to_torch, torch_device

# name -> (minires layer, torch layer, input shape); small shapes, odd sizes
CASES = {
    "conv3x3": (lambda: nn.Conv2d(3, 5, 3, padding=1), lambda: tnn.Conv2d(3, 5, 3, padding=1),
                (2, 3, 7, 6)),
    "conv3x3_s2_nobias": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                          lambda: tnn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                          (3, 4, 9, 8)),
    "conv1x1": (lambda: nn.Conv2d(4, 3, 1), lambda: tnn.Conv2d(4, 3, 1), (2, 4, 5, 5)),
    "conv1x1_s2": (lambda: nn.Conv2d(4, 8, 1, stride=2, bias=False),
                   lambda: tnn.Conv2d(4, 8, 1, stride=2, bias=False), (2, 4, 7, 7)),
    "conv_groups_dilation_same": (lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2),
                                  lambda: tnn.Conv2d(4, 6, 3, padding="same", dilation=2, groups=2),
                                  (2, 4, 8, 7)),
    "conv7x7_s2": (lambda: nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
                   lambda: tnn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False), (2, 3, 12, 11)),
    "linear": (lambda: nn.Linear(7, 5), lambda: tnn.Linear(7, 5), (4, 7)),
    "bn2d_train": (lambda: nn.BatchNorm2d(3), lambda: tnn.BatchNorm2d(3), (4, 3, 5, 4)),
    "bn1d_train": (lambda: nn.BatchNorm1d(6), lambda: tnn.BatchNorm1d(6), (8, 6)),
    "relu": (lambda: nn.ReLU(), lambda: tnn.ReLU(), (3, 4, 5)),
    "maxpool3_s2_p1": (lambda: nn.MaxPool2d(3, 2, 1), lambda: tnn.MaxPool2d(3, 2, 1),
                       (2, 3, 9, 8)),
    "avgpool2": (lambda: nn.AvgPool2d(2), lambda: tnn.AvgPool2d(2), (2, 3, 6, 8)),
    "adaptive_avgpool": (lambda: nn.AdaptiveAvgPool2d(1), lambda: tnn.AdaptiveAvgPool2d(1),
                         (2, 5, 4, 3)),
    "flatten": (lambda: nn.Flatten(), lambda: tnn.Flatten(), (2, 3, 2, 2)),
}
RTOL = {np.float32: 1e-4, np.float64: 1e-10}  # float32: cuDNN picks other algorithms


def _pair(name, dtype):
    make_mr, make_ref, shape = CASES[name]
    mr, ref = make_mr(), make_ref()
    rng = np.random.default_rng(3)
    for m in mr.modules():  # non-trivial BN affine parameters
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data = rng.uniform(0.5, 1.5, m.num_features).astype(np.float32)
            m.bias.data = rng.standard_normal(m.num_features).astype(np.float32)
    copy_params_to_torch(mr, ref)
    return mr.to(np.dtype(dtype)), ref.to(getattr(torch, np.dtype(dtype).name)), shape


def _input(name, shape, dtype, rng):
    x = rng.standard_normal(shape)
    if name.startswith("maxpool"):  # distinct values: no ties for the argmax
        x = rng.permutation(np.arange(x.size)).reshape(shape) / x.size
    if name == "relu":  # away from the kink at 0
        x = np.sign(x) * (0.1 + np.abs(x))
    return x.astype(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_torch(device, dtype, name):
    dev = torch_device(device)
    mr, ref, shape = _pair(name, dtype)
    mr.to(device)
    ref.to(dev)
    rng = np.random.default_rng(11)
    x = _input(name, shape, dtype, rng)
    xt = to_torch(x, dev, requires_grad=True)
    y = mr(on(device, x))
    assert minires.backend.device_of(y) == device
    yt = ref(xt)
    rtol = RTOL[dtype]
    assert_close(y, yt, rtol, f"{name} forward")
    g = random_upstream(rng, y.shape, dtype)
    dx = mr.backward(on(device, g))
    yt.backward(to_torch(g, dev))
    assert minires.backend.device_of(dx) == device
    assert_close(dx, xt.grad, rtol, f"{name} dx")
    ref_params = dict(ref.named_parameters())
    for k, p in mr.named_parameters():
        assert minires.backend.device_of(p.grad) == device
        assert_close(p.grad, ref_params[k].grad, rtol, f"{name} d{k}")
    ref_sd = ref.state_dict()
    for k, v in mr.state_dict().items():
        if "running" in k:
            assert_close(v, ref_sd[k], rtol, f"{name} {k}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_eval_matches_torch(device, dtype):
    dev = torch_device(device)
    mr, ref, shape = _pair("bn2d_train", dtype)
    rng = np.random.default_rng(5)
    mr.running_mean[...] = rng.standard_normal(3)
    mr.running_var[...] = rng.uniform(0.5, 2.0, 3)
    copy_params_to_torch(mr, ref)
    mr.to(device).eval()
    ref.to(dev).eval()
    x = rng.standard_normal(shape).astype(dtype)
    xt = to_torch(x, dev, requires_grad=True)
    y, yt = mr(on(device, x)), ref(xt)
    g = random_upstream(rng, y.shape, dtype)
    dx = mr.backward(on(device, g))
    yt.backward(to_torch(g, dev))
    assert_close(y, yt, RTOL[dtype], "bn eval forward")
    assert_close(dx, xt.grad, RTOL[dtype], "bn eval dx")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(device, dtype, smoothing):
    dev = torch_device(device)
    rng = np.random.default_rng(4)
    logits = (3 * rng.standard_normal((6, 5))).astype(dtype)
    target = rng.integers(0, 5, 6)
    crit = nn.CrossEntropyLoss(label_smoothing=smoothing)
    loss = crit(on(device, logits), on(device, target))
    assert minires.backend.device_of(loss) == device and loss.shape == ()
    scale = float(rng.uniform(0.5, 2.0))
    dlogits = crit.backward(scale)
    lt = to_torch(logits, dev, requires_grad=True)
    ref = tnn.CrossEntropyLoss(label_smoothing=smoothing)(lt, to_torch(target, dev))
    (ref * scale).backward()
    assert_close(loss, ref, RTOL[dtype], "loss")
    assert_close(dlogits, lt.grad, RTOL[dtype], "dlogits")


GRADCHECK = ["conv3x3_s2_nobias", "conv_groups_dilation_same", "conv1x1", "linear",
             "bn2d_train", "maxpool3_s2_p1", "avgpool2", "adaptive_avgpool"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADCHECK)
def test_finite_differences(device, name):
    """minires.gradcheck perturbs the arrays where they live: on the GPU, the
    CuPy backward is checked against central differences of CuPy forwards."""
    mr, _, shape = _pair(name, np.float64)
    mr.to(device)
    x = _input(name, shape, np.float64, np.random.default_rng(8))
    errors = gradcheck(mr, on(device, x), max_elements=200, n_directions=8)
    assert errors and all(e < 1e-5 for e in errors.values()), errors


@pytest.mark.gpu
def test_dropout_draws_on_the_gpu_reproducibly():
    x = minires.to_device(np.ones((64, 256), np.float32), "cuda")
    d = nn.Dropout(0.25)
    minires.manual_seed(5)
    state = minires.random.get_rng_state()
    y1 = minires.to_numpy(d(x))
    minires.random.set_rng_state(state)  # a resumed run draws the same mask
    y2 = minires.to_numpy(d(x))
    assert np.array_equal(y1, y2)
    y3 = minires.to_numpy(d(x))
    assert not np.array_equal(y1, y3)
    kept = (y1 != 0).mean()
    assert abs(kept - 0.75) < 0.01, kept
    assert np.allclose(y1[y1 != 0], 1 / 0.75)
