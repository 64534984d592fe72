"""relu(batch_norm(x)) in one pass (fused_bn_relu): the same bits as the two
layers called one after the other, and torch's numbers."""
import numpy as np
import pytest
import torch

import minires
from minires import nn
from minires.distributed import SyncBatchNorm
from minires.nn.functional.activation import relu_backward, relu_forward
from minires.nn.functional.norm import batch_norm_backward, batch_norm_forward
from minires.nn.norm import fused_bn_relu, fused_bn_relu_backward, unfused
from tests.helpers import assert_close, copy_params_to_torch, random_upstream, to_np

SHAPES = [(6, 4, 5, 7), (64, 16, 8, 8)]  # the second spans several batch chunks


def _input(rng, shape, dtype):
    # per-channel offsets: about half of the values fall below zero after the norm
    offset = rng.standard_normal((1, shape[1], 1, 1)) * 2
    return (rng.standard_normal(shape) * 1.5 + offset).astype(dtype)


def _bn_args(rng, c, dtype, affine):
    if not affine:
        return None, None
    return ((1 + 0.5 * rng.standard_normal(c)).astype(dtype),
            rng.standard_normal(c).astype(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_op_is_bit_identical_to_bn_then_relu(shape, dtype, affine, training):
    rng = np.random.default_rng(sum(shape) + affine + 2 * training)
    x = _input(rng, shape, dtype).reshape(shape[0], shape[1], -1)
    w, b = _bn_args(rng, shape[1], dtype, affine)
    stats = () if training else (rng.standard_normal(shape[1]).astype(dtype),
                                 rng.uniform(0.5, 2, shape[1]).astype(dtype))
    y, cache = batch_norm_forward(x, w, b, 1e-5, *stats)
    z, mask = relu_forward(y)
    z_fused, cache_fused = batch_norm_forward(x, w, b, 1e-5, *stats, relu=True)
    assert 0.05 < mask.mean() < 0.95  # the ReLU has work to do
    np.testing.assert_array_equal(z_fused, z)
    np.testing.assert_array_equal(cache_fused.relu_mask, mask)
    dz = random_upstream(rng, z.shape, dtype)
    expected = batch_norm_backward(relu_backward(dz, mask), cache)
    got = batch_norm_backward(dz, cache_fused)
    for e, g in zip(expected, got):
        if e is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, e)


def _torch_bn(m):
    t = torch.nn.BatchNorm2d(m.num_features).double()
    copy_params_to_torch(m, t)
    return t


@pytest.mark.parametrize("training", [True, False])
def test_module_matches_torch_bn_relu(training):
    rng = np.random.default_rng(7)
    bn, relu = nn.BatchNorm2d(16).to(np.float64), nn.ReLU()
    bn.weight.data = (1 + 0.5 * rng.standard_normal(16))
    bn.bias.data = rng.standard_normal(16)
    bn.running_mean[...] = rng.standard_normal(16)
    bn.running_var[...] = rng.uniform(0.5, 2, 16)
    t = _torch_bn(bn)
    bn.train(training), t.train(training)
    x = _input(rng, (64, 16, 8, 8), np.float64)
    z = fused_bn_relu(bn, relu, x)
    tx = torch.tensor(x, requires_grad=True)
    tz = torch.relu(t(tx))
    assert_close(z, to_np(tz), rtol=1e-10)
    dz = random_upstream(rng, z.shape, np.float64)
    dx = fused_bn_relu_backward(bn, relu, dz)
    tz.backward(torch.tensor(dz))
    assert_close(dx, to_np(tx.grad), rtol=1e-9)
    assert_close(bn.weight.grad, to_np(t.weight.grad), rtol=1e-9)
    assert_close(bn.bias.grad, to_np(t.bias.grad), rtol=1e-9)
    assert_close(bn.running_mean, to_np(t.running_mean), rtol=1e-12)
    assert_close(bn.running_var, to_np(t.running_var), rtol=1e-12)
    assert not bn._caches and not relu._caches  # both consumed, nothing left behind


def test_unfused_calls_both_modules_with_the_same_numbers():
    rng = np.random.default_rng(3)
    x = _input(rng, (8, 4, 6, 6), np.float32)
    dz = random_upstream(rng, x.shape, np.float32)
    results = []
    for context in (unfused, None):
        minires.manual_seed(0)
        bn, relu = nn.BatchNorm2d(4), nn.ReLU()
        if context is None:
            z = fused_bn_relu(bn, relu, x)
            assert not relu._caches  # the ReLU ran inside bn's pass
        else:
            with context():
                z = fused_bn_relu(bn, relu, x)
            assert len(relu._caches) == 1  # a real ReLU call
        results.append((z, fused_bn_relu_backward(bn, relu, dz), bn.weight.grad.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_other_module_in_the_batch_norm_place_runs_unfused():
    """A user's replacement for the batch norm (here: an identity) still works."""
    rng = np.random.default_rng(4)
    x = _input(rng, (4, 3, 5, 5), np.float32)
    ident, relu = nn.Sequential(), nn.ReLU()
    z = fused_bn_relu(ident, relu, x)
    np.testing.assert_array_equal(z, np.maximum(x, 0))
    dz = random_upstream(rng, x.shape, np.float32)
    np.testing.assert_array_equal(fused_bn_relu_backward(ident, relu, dz), dz * (x > 0))


def test_sync_batch_norm_on_one_process_fuses_too():
    rng = np.random.default_rng(5)
    x = _input(rng, (8, 4, 6, 6), np.float64)
    plain, sync = nn.BatchNorm2d(4).to(np.float64), SyncBatchNorm(4).to(np.float64)
    relu = nn.ReLU()
    z_plain, z_sync = fused_bn_relu(plain, relu, x), fused_bn_relu(sync, relu, x)
    np.testing.assert_array_equal(z_sync, z_plain)
    dz = random_upstream(rng, x.shape, np.float64)
    np.testing.assert_array_equal(fused_bn_relu_backward(sync, relu, dz),
                                  fused_bn_relu_backward(plain, relu, dz))


def test_resnet20_step_unchanged_by_fusion():
    """A whole ResNet-20 training step, fused against every ReLU called on its
    own (unfused): the same loss, input gradient and parameter gradients, bit for bit."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    target = rng.integers(0, 10, 8)
    outputs = []
    for fused in (True, False):
        minires.manual_seed(0)
        model = minires.models.resnet20().train()
        crit = nn.CrossEntropyLoss()
        if fused:
            loss = crit(model(x), target)
        else:
            with unfused():
                loss = crit(model(x), target)
        dx = model.backward(crit.backward())
        outputs.append([np.asarray(loss), dx] + [p.grad for p in model.parameters()])
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)
