"""Blocks, models and the optimiser on the GPU: against torch CUDA (TF32 off)
and, in float64, against the same computation in NumPy."""
import copy

import numpy as np
import pytest
import torch

import minires
from minires import nn, optim
from minires.models import resnet18
from minires.models.cifar import _cifar_resnet
from minires.nn.blocks import ResBlockConv, ResBlockDownSamp
from tests.helpers import assert_close, copy_params_to_torch, random_upstream
from tests.gpu.common import DEVICES, on, to_torch, torch_device
from tests.models.torch_cifar_refs import TorchCifarResNet
from tests.models.torch_refs import resnet as torch_resnet
from tests.nn.test_blocks import CASES as BLOCKS, compare_param_grads, make_pair


MODELS = {  # name -> (minires model, torch reference, input shape)
    "resnet20": (lambda: _cifar_resnet(20), lambda: TorchCifarResNet(20), (4, 3, 16, 16)),
    "resnet18": (lambda: resnet18(num_classes=7), lambda: torch_resnet("resnet18", num_classes=7),
                 (2, 3, 40, 40)),
}


def _randomise_bn(model, rng):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = rng.uniform(0.5, 1.5, m.num_features).astype(np.float32)
            m.bias.data = (0.2 * rng.standard_normal(m.num_features)).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODELS))
def test_model_train_step_matches_torch(device, name):
    """Forward, backward and running statistics of a whole network in train
    mode, in float64: a float32 comparison of a deep net is at the mercy of
    ReLU inputs within rounding error of 0 (one flipped kink moves a whole
    region of dx), which the float32 layer tests avoid by construction."""
    dev = torch_device(device)
    make_mr, make_ref, shape = MODELS[name]
    mr, ref = make_mr(), make_ref()
    _randomise_bn(mr, np.random.default_rng(1))
    copy_params_to_torch(mr, ref)
    mr.to(device, dtype=np.float64)
    ref.to(dev, dtype=torch.float64)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape)
    xt = to_torch(x, dev, requires_grad=True)
    y, yt = mr(on(device, x)), ref(xt)
    assert_close(y, yt, 1e-10, f"{name} logits")
    g = random_upstream(rng, y.shape, np.float64)
    dx = mr.backward(on(device, g))
    yt.backward(to_torch(g, dev))
    assert_close(dx, xt.grad, 1e-9, f"{name} dx")
    ref_params = dict(ref.named_parameters())
    for k, p in mr.named_parameters():
        assert_close(p.grad, ref_params[k].grad, 1e-9, f"{name} d{k}")
    ref_sd = ref.state_dict()
    for k, v in mr.state_dict().items():
        if "running" in k:
            assert_close(v, ref_sd[k], 1e-10, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_textbook_blocks_match_torch(device, training, name):
    """ResBlockMLP/Conv/DownSamp: the gradient fork at the addition, on the GPU."""
    dev = torch_device(device)
    rng = np.random.default_rng(7)
    block, ref = make_pair(name, np.float32, rng, training=training)
    block.to(device)
    ref.to(dev)
    x = rng.standard_normal(BLOCKS[name][3]).astype(np.float32)
    xt = to_torch(x, dev, requires_grad=True)
    y, yt = block(on(device, x)), ref(xt)
    g = random_upstream(rng, y.shape, np.float32)
    dx = block.backward(on(device, g))
    yt.backward(to_torch(g, dev))
    assert minires.backend.device_of(dx) == device
    assert_close(y, yt, 1e-4, "output")
    assert_close(dx, xt.grad, 1e-4, "dX (skip + residual)")
    compare_param_grads(block, ref, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov,wd,damp", [(True, 5e-4, 0.0), (False, 1e-4, 0.1),
                                              (False, 0.0, 0.0)])
def test_sgd_matches_torch(device, dtype, nesterov, wd, damp):
    """Several steps of SGD (on the GPU: the fused kernel) against torch.optim.SGD."""
    dev = torch_device(device)
    rng = np.random.default_rng(6)
    shapes = [(4, 3, 3, 3), (4,), (10, 7)]
    w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [nn.Parameter(on(device, w.copy())) for w in w0]
    tparams = [to_torch(w, dev, requires_grad=True) for w in w0]
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=wd, dampening=damp)
    opt, topt = optim.SGD(params, **kw), torch.optim.SGD(tparams, **kw)
    for step in range(4):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for p, tp, g in zip(params, tparams, grads):
            p.grad = on(device, g)
            tp.grad = to_torch(g, dev)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            assert_close(p.data, tp.detach(), 1e-6 if dtype == np.float32 else 1e-13,
                         f"param {i} after step {step + 1}")
    # the optimiser's state round-trips through a (host) state dict
    sd = opt.state_dict()
    opt2 = optim.SGD(params, **kw)
    opt2.load_state_dict(sd)
    assert all(minires.backend.device_of(st["momentum_buffer"]) == device
               for st in opt2.state.values())


@pytest.mark.gpu
@pytest.mark.parametrize("block", ["conv", "downsamp", "resnet20"])
def test_float64_gpu_step_equals_numpy(block):
    """Backend consistency: one float64 training step (forward, backward, SGD)
    on CuPy and on NumPy give the same loss, gradients and weights."""
    make = {"conv": lambda: nn.Sequential(ResBlockConv(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(4, 3)),
            "downsamp": lambda: nn.Sequential(ResBlockDownSamp(4), nn.AdaptiveAvgPool2d(1),
                                              nn.Flatten(), nn.Linear(8, 3)),
            "resnet20": lambda: _cifar_resnet(20, num_classes=3)}[block]
    cpu = make().to(np.float64)
    gpu = copy.deepcopy(cpu).to("cuda")
    rng = np.random.default_rng(9)
    channels = 3 if block == "resnet20" else 4
    x = rng.standard_normal((4, channels, 8, 8))
    y = rng.integers(0, 3, 4)
    results = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        losses = []
        for _ in range(2):
            loss = crit(model(on(dev, x)), on(dev, y))
            model.backward(crit.backward())
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        results.append((losses, {k: minires.to_numpy(v) for k, v in model.state_dict().items()}))
    (l_cpu, sd_cpu), (l_gpu, sd_gpu) = results
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=1e-12)
    for k in sd_cpu:
        assert_close(sd_gpu[k], sd_cpu[k], 1e-10, k)
