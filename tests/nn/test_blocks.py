"""The textbook's residual blocks: torch parity, finite differences, the skip
connection's gradient as a property, shapes and bad inputs."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import minires
from minires.gradcheck import gradcheck
from minires.nn.blocks import ResBlockConv, ResBlockDownSamp, ResBlockMLP
from tests.helpers import (assert_close, copy_params_to_torch, random_upstream, to_np,
                           torch_tensor)

# Block-level float32 tolerance is looser than a single layer's 1e-5: round-off
# accumulates through two linear/conv layers, two batch norms (whose backward
# subtracts nearly equal sums and divides by the batch std) and the addition.
# Measured worst case over 20 seeds: about 2e-6 (relative to max|ref|).
BLOCK_RTOL = {np.float32: 1e-4, np.float64: 1e-10}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


class Ref:
    """The textbook's PyTorch classes: same class names, attribute names and
    registration order, so state_dict keys and repr must match minires's."""

    class ResBlockMLP(torch.nn.Module):
        def __init__(self, in_features):
            super().__init__()
            self.Z1 = torch.nn.Linear(in_features, in_features)
            self.bn = torch.nn.BatchNorm1d(in_features)
            self.Z2 = torch.nn.Linear(in_features, in_features)
            self.relu = torch.nn.ReLU()

        def forward(self, X):
            Y1 = self.Z2(self.relu(self.bn(self.Z1(X))))
            return self.relu(Y1 + X)

    class ResBlockConv(torch.nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            c = in_channels
            self.conv1 = torch.nn.Conv2d(c, c, 3, padding="same", bias=False)
            self.bn1 = torch.nn.BatchNorm2d(c)
            self.conv2 = torch.nn.Conv2d(c, c, 3, padding="same", bias=False)
            self.bn2 = torch.nn.BatchNorm2d(c)
            self.relu = torch.nn.ReLU()

        def forward(self, X):
            Y1 = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(X)))))
            return self.relu(Y1 + X)

    class ResBlockDownSamp(torch.nn.Module):
        def __init__(self, in_channels):
            super().__init__()
            c = in_channels
            self.conv1 = torch.nn.Conv2d(c, 2 * c, 3, padding=1, stride=2, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(2 * c)
            self.conv2 = torch.nn.Conv2d(2 * c, 2 * c, 3, padding="same", bias=False)
            self.bn2 = torch.nn.BatchNorm2d(2 * c)
            self.downsampX = torch.nn.Conv2d(c, 2 * c, 1, stride=2, bias=False)
            self.relu = torch.nn.ReLU()

        def forward(self, X):
            Y1 = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(X)))))
            return self.relu(Y1 + self.downsampX(X))


# name: (minires class, torch class, width, input shape) -- small, odd sizes
CASES = {
    "mlp": (ResBlockMLP, Ref.ResBlockMLP, 5, (6, 5)),
    "conv": (ResBlockConv, Ref.ResBlockConv, 3, (3, 3, 5, 6)),
    "downsamp": (ResBlockDownSamp, Ref.ResBlockDownSamp, 3, (3, 3, 7, 9)),
}


def randomize_batchnorm(block, rng):
    """Non-default gamma, beta and running statistics, so that eval mode and the
    affine part are really exercised (defaults 1, 0, 0, 1 hide mistakes)."""
    for name, m in block.named_modules():
        if type(m).__name__.startswith("BatchNorm"):
            f = m.weight.data.shape[0]
            dt = m.weight.data.dtype
            m.weight.data[...] = rng.uniform(0.5, 1.5, f).astype(dt)
            m.bias.data[...] = (0.3 * rng.standard_normal(f)).astype(dt)
            m.running_mean[...] = (0.3 * rng.standard_normal(f)).astype(dt)
            m.running_var[...] = rng.uniform(0.5, 2.0, f).astype(dt)


def make_pair(name, dtype, rng, training=True):
    """A minires block and the torch reference holding the same parameters."""
    mr_cls, ref_cls, width, _ = CASES[name]
    block = mr_cls(width).to(dtype)
    randomize_batchnorm(block, rng)
    ref = ref_cls(width).to(TORCH_DTYPE[dtype])
    copy_params_to_torch(block, ref)
    block.train(training)
    ref.train(training)
    return block, ref


def check_step_against_torch(block, ref, x, rng, rtol):
    """One forward and backward in both; compare y, dX and every parameter grad."""
    y = block(x)
    g = random_upstream(rng, y.shape, x.dtype)
    dx = block.backward(g)
    xt = torch_tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch_tensor(g))
    assert_close(y, yt, rtol, "output")
    assert_close(dx, xt.grad, rtol, "dX")
    compare_param_grads(block, ref, rtol)


def compare_param_grads(block, ref, rtol):
    grads = {k: p.grad for k, p in block.named_parameters()}
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    assert list(grads) == list(ref_grads)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for k in ref_grads:
        if float(ref_grads[k].abs().max()) <= rtol * scale:
            # Mathematically zero: Z1's bias in training mode, which the batch norm
            # after it subtracts away with the batch mean.  Both sides are round-off,
            # so judge them on the scale of the block's other gradients.
            assert float(np.abs(to_np(grads[k])).max()) <= rtol * scale, f"grad of {k}"
        else:
            assert_close(grads[k], ref_grads[k], rtol, f"grad of {k}")


# --------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name, dtype, training):
    rng = np.random.default_rng(1)
    block, ref = make_pair(name, dtype, rng, training)
    x = rng.standard_normal(CASES[name][3]).astype(dtype)
    check_step_against_torch(block, ref, x, rng, BLOCK_RTOL[dtype])


@pytest.mark.parametrize("name", list(CASES))
def test_running_stats_after_a_few_steps_match_torch(name):
    rng = np.random.default_rng(2)
    block, ref = make_pair(name, np.float64, rng, training=True)
    for _ in range(3):
        x = (2.0 * rng.standard_normal(CASES[name][3]) + 0.5).astype(np.float64)
        check_step_against_torch(block, ref, x, rng, 1e-10)
    sd = block.state_dict()
    for k, v in ref.state_dict().items():
        if v.is_floating_point():
            assert_close(sd[k], v, 1e-10, k)
        else:
            assert int(to_np(sd[k])) == int(v), k  # num_batches_tracked
    # and the stats are used in eval mode
    block.eval()
    ref.eval()
    check_step_against_torch(block, ref, rng.standard_normal(CASES[name][3]), rng, 1e-10)


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_block_called_twice_in_one_forward_matches_torch(name):
    """Caches are a stack: Y = block(block(X)) and two backward calls."""
    rng = np.random.default_rng(3)
    block, ref = make_pair(name, np.float64, rng, training=True)
    x = rng.standard_normal(CASES[name][3])
    y = block(block(x))
    g = random_upstream(rng, y.shape, np.float64)
    dx = block.backward(block.backward(g))
    xt = torch_tensor(x, requires_grad=True)
    yt = ref(ref(xt))
    yt.backward(torch_tensor(g))
    assert_close(y, yt, 1e-10, "output")
    assert_close(dx, xt.grad, 1e-10, "dX")
    compare_param_grads(block, ref, 1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_keys_order_and_shapes_match_torch(name):
    block, ref = make_pair(name, np.float32, np.random.default_rng(0))
    sd, ref_sd = block.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd)
    for k in ref_sd:
        assert tuple(sd[k].shape) == tuple(ref_sd[k].shape), k


@pytest.mark.parametrize("name", list(CASES))
def test_repr_matches_torch(name):
    block, ref = make_pair(name, np.float32, np.random.default_rng(0))
    assert repr(block) == repr(ref)


@pytest.mark.parametrize("hw", [(7, 9), (8, 8), (1, 1), (2, 3), (5, 4)])
def test_downsamp_output_shape_is_ceil_half_like_torch(hw):
    rng = np.random.default_rng(4)
    block, ref = make_pair("downsamp", np.float64, rng)
    h, w = hw
    x = rng.standard_normal((2, 3, h, w))
    y = block(x)
    assert y.shape == (2, 6, math.ceil(h / 2), math.ceil(w / 2))
    assert_close(y, ref(torch_tensor(x)), 1e-10, "output")


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,shape", [("mlp", (4, 3)), ("conv", (2, 2, 4, 4)),
                                        ("downsamp", (2, 2, 5, 5))])
def test_gradcheck_float64(name, shape, training):
    rng = np.random.default_rng(5)
    mr_cls = CASES[name][0]
    block = mr_cls(shape[1]).to(np.float64).train(training)
    randomize_batchnorm(block, rng)
    gradcheck(block, rng.standard_normal(shape))


# --------------------------------------------------------------------------- the skip's gradient
class ResBlockMLPNoSkip(ResBlockMLP):
    """The same network with `+ X` dropped, in forward and in backward."""

    def forward(self, X):
        Y = self.relu(self.Z2(self.relu(self.bn(self.Z1(X)))))
        self._save(Y, None)
        return Y

    def backward(self, dY):
        self._restore(dY)
        dY1 = self.relu.backward(dY)
        return self.Z1.backward(self.bn.backward(self.relu.backward(self.Z2.backward(dY1))))


class ResBlockConvNoSkip(ResBlockConv):
    """The same network with `+ X` dropped, in forward and in backward."""

    def forward(self, X):
        Y = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(X))))))
        self._save(Y, None)
        return Y

    def backward(self, dY):
        self._restore(dY)
        dH = self.relu.backward(self.conv2.backward(self.bn2.backward(self.relu.backward(dY))))
        return self.conv1.backward(self.bn1.backward(dH))


def _run(block, x, rng):
    y = block(x)
    g = random_upstream(rng, y.shape, x.dtype)
    return y, g, block.backward(g)


DTYPES = st.sampled_from([np.float32, np.float64])


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 6), f=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       training=st.booleans(), dtype=DTYPES)
def test_mlp_vanishing_residual_jacobian_gradient_flows_through_skip(n, f, seed, training, dtype):
    """Z2's weight = 0 makes the residual path constant (its bias b), so
    Y2 = X + b and the textbook's dC/dX = dC/dY * 1{Y2 > 0} holds exactly;
    without the skip dC/dX is exactly 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    for cls in (ResBlockMLP, ResBlockMLPNoSkip):
        block = cls(f).to(dtype).train(training)
        randomize_batchnorm(block, rng)
        block.Z2.weight.data[...] = 0
        block.Z2.bias.data[...] = b
        y, g, dx = _run(block, x, rng)
        if cls is ResBlockMLP:
            y2 = x + b
            np.testing.assert_array_equal(to_np(y), np.maximum(y2, 0))
            np.testing.assert_array_equal(to_np(dx), g * (y2 > 0))
        else:
            np.testing.assert_array_equal(to_np(dx), np.zeros_like(x))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(2, 5), w=st.integers(2, 5),
       seed=st.integers(0, 2**31 - 1), training=st.booleans(), dtype=DTYPES)
def test_conv_vanishing_residual_jacobian_gradient_flows_through_skip(n, c, h, w, seed,
                                                                      training, dtype):
    """bn2's gamma = 0 makes the residual path output its beta, so
    Y2 = X + beta and dC/dX = dC/dY * 1{Y2 > 0} exactly; without the skip, 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    for cls in (ResBlockConv, ResBlockConvNoSkip):
        block = cls(c).to(dtype).train(training)
        randomize_batchnorm(block, rng)
        block.bn2.weight.data[...] = 0
        block.bn2.bias.data[...] = beta
        y, g, dx = _run(block, x, rng)
        if cls is ResBlockConv:
            y2 = x + beta[None, :, None, None]
            np.testing.assert_array_equal(to_np(y), np.maximum(y2, 0))
            np.testing.assert_array_equal(to_np(dx), g * (y2 > 0))
        else:
            np.testing.assert_array_equal(to_np(dx), np.zeros_like(x))


@pytest.mark.parametrize("cls,shape", [(ResBlockMLPNoSkip, (5, 4)),
                                       (ResBlockConvNoSkip, (2, 2, 4, 4))])
def test_no_skip_variants_are_not_trivially_zero(cls, shape):
    """Sanity for the property above: with ordinary weights the no-skip
    network does pass a gradient, so dX = 0 there is the vanished Jacobian."""
    rng = np.random.default_rng(6)
    _, _, dx = _run(cls(shape[1]).to(np.float64), rng.standard_normal(shape), rng)
    assert np.abs(to_np(dx)).max() > 1e-3


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("cls,width,shape,pattern", [
    (ResBlockMLP, 5, (2, 3, 5), r"ResBlockMLP: expected a 2-D input, got shape \(2, 3, 5\)"),
    (ResBlockMLP, 5, (4, 6), r"ResBlockMLP: expected 5 channels.*got shape \(4, 6\)"),
    (ResBlockConv, 3, (4, 3), r"ResBlockConv: expected a 4-D input, got shape \(4, 3\)"),
    (ResBlockConv, 3, (2, 4, 5, 5), r"ResBlockConv: expected 3 channels.*\(2, 4, 5, 5\)"),
    (ResBlockDownSamp, 3, (3, 7, 9), r"ResBlockDownSamp: expected a 4-D input"),
    (ResBlockDownSamp, 3, (2, 6, 8, 8), r"ResBlockDownSamp: expected 3 channels"),
])
def test_bad_shapes_raise_naming_the_block(cls, width, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(width)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("cls,shape", [(ResBlockMLP, (2, 3)), (ResBlockConv, (2, 3, 4, 4)),
                                       (ResBlockDownSamp, (2, 3, 4, 4))])
def test_bad_dtypes_raise_naming_the_block(cls, shape):
    name = cls.__name__
    with pytest.raises(TypeError, match=rf"{name}: input dtype float64 does not match.*float32"):
        cls(3)(np.zeros(shape, np.float64))
    with pytest.raises(TypeError, match=rf"{name}: expected a floating-point input.*int64"):
        cls(3)(np.zeros(shape, np.int64))


def test_backward_errors_name_the_block():
    block = ResBlockDownSamp(2)
    with pytest.raises(RuntimeError, match=r"ResBlockDownSamp\.backward: no cache"):
        block.backward(np.zeros((2, 4, 2, 2), np.float32))
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    block(x)
    with pytest.raises(ValueError, match=r"ResBlockDownSamp\.backward: expected dy of shape "
                                         r"\(2, 4, 2, 2\)"):
        block.backward(np.zeros((2, 4, 4, 4), np.float32))
    block.clear_caches()
    with minires.no_grad():
        block(x)
    with pytest.raises(RuntimeError, match=r"ResBlockDownSamp\.backward: no cache"):
        block.backward(np.zeros((2, 4, 2, 2), np.float32))

# The GPU versions of these checks (against torch CUDA) are in tests/gpu/test_models_gpu.py.
