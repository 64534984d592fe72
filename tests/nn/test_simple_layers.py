"""Linear, ReLU, Dropout, Flatten, Identity: torch parity, finite differences,
properties and bad inputs."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import minires
from minires import nn
from minires.gradcheck import gradcheck
from tests.helpers import (assert_close, copy_params_to_torch, random_upstream, rtol_for,
                           to_np, torch_tensor)

DTYPES = [np.float32, np.float64]
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def away_from_zero(rng, shape, dtype=np.float64, margin=0.1):
    v = rng.standard_normal(shape)
    return (np.sign(v) * (np.abs(v) + margin)).astype(dtype)


# ============================================================== Linear
def linear_parity(rng, batch, in_f, out_f, bias, dtype):
    m = nn.Linear(in_f, out_f, bias=bias).to(dtype=dtype)
    t = torch.nn.Linear(in_f, out_f, bias=bias).to(TORCH_DTYPE[dtype])
    copy_params_to_torch(m, t)
    x = rng.standard_normal((batch, in_f)).astype(dtype)
    y = m(x)
    xt = torch_tensor(x, requires_grad=True)
    yt = t(xt)
    dy = random_upstream(rng, y.shape, dtype)
    yt.backward(torch_tensor(dy))
    dx = m.backward(dy)
    rtol = rtol_for(dtype)
    assert y.dtype == dtype and dx.dtype == dtype and m.weight.grad.dtype == dtype
    assert_close(y, yt, rtol, "Linear y")
    assert_close(dx, xt.grad, rtol, "Linear dx")
    assert_close(m.weight.grad, t.weight.grad, rtol, "Linear dW")
    if bias:
        assert_close(m.bias.grad, t.bias.grad, rtol, "Linear db")
    else:
        assert m.bias is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(rng, dtype, bias):
    linear_parity(rng, 7, 5, 3, bias, dtype)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 6), in_f=st.integers(1, 7), out_f=st.integers(1, 7),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_matches_torch_over_shapes(batch, in_f, out_f, bias, seed):
    linear_parity(np.random.default_rng(seed), batch, in_f, out_f, bias, np.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_finite_differences(rng, bias):
    names = gradcheck(nn.Linear(4, 3, bias=bias), rng.standard_normal((5, 4)))
    assert set(names) == ({"input0", "weight", "bias"} if bias else {"input0", "weight"})


def test_linear_default_init_matches_torch_bounds():
    fan_in, fan_out = 200, 300
    bound = 1.0 / math.sqrt(fan_in)
    m = nn.Linear(fan_in, fan_out)
    t = torch.nn.Linear(fan_in, fan_out)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    assert m.weight.shape == tuple(t.weight.shape) and m.bias.shape == tuple(t.bias.shape)
    for ours, theirs in [(m.weight.data, to_np(t.weight)), (m.bias.data, to_np(t.bias))]:
        # both uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        assert np.abs(ours).max() > 0.95 * bound
        assert abs(ours.std() / theirs.std() - 1) < 0.1
        assert abs(ours.std() - bound / math.sqrt(3)) < 0.1 * bound
        assert abs(ours.mean()) < 0.1 * bound


def test_linear_without_bias_has_only_a_weight():
    m = nn.Linear(3, 2, bias=False)
    assert m.bias is None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert list(m.state_dict()) == list(torch.nn.Linear(3, 2, bias=False).state_dict())


@pytest.mark.parametrize("args", [(3, 4), (3, 4, False), (1, 1)])
def test_linear_repr_matches_torch(args):
    assert repr(nn.Linear(*args)) == str(torch.nn.Linear(*args))


def test_linear_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"Linear: expected a 2-D input, got shape \(2, 3, 4\)"):
        nn.Linear(4, 2)(np.zeros((2, 3, 4), np.float32))


def test_linear_rejects_wrong_feature_count():
    with pytest.raises(ValueError, match=r"Linear: expected 4 .*got shape \(2, 5\)"):
        nn.Linear(4, 2)(np.zeros((2, 5), np.float32))


def test_linear_rejects_integer_input():
    with pytest.raises(TypeError, match=r"Linear: expected a floating-point input.*int64"):
        nn.Linear(4, 2)(np.zeros((2, 4), np.int64))


def test_linear_rejects_float64_input_to_float32_layer():
    with pytest.raises(TypeError, match=r"Linear: input dtype float64 does not match the "
                                        r"layer's dtype float32"):
        nn.Linear(4, 2)(np.zeros((2, 4), np.float64))


def test_linear_rejects_non_arrays():
    with pytest.raises(TypeError, match=r"Linear: expected an array.*list"):
        nn.Linear(2, 2)([[1.0, 2.0]])


@pytest.mark.gpu
def test_linear_rejects_input_on_another_backend():
    m = nn.Linear(4, 2).to("cuda")
    with pytest.raises(TypeError, match=r"Linear: input is on 'cpu' but the layer's "
                                        r"parameters are on 'cuda'"):
        m(np.zeros((2, 4), np.float32))


# ============================================================== ReLU
def relu_parity(x):
    m, rng = nn.ReLU(), np.random.default_rng(0)
    y = m(x)
    xt = torch_tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    dy = random_upstream(rng, x.shape, x.dtype)
    yt.backward(torch_tensor(dy))
    dx = m.backward(dy)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert_close(y, yt, rtol_for(x.dtype), "ReLU y")
    assert_close(dx, xt.grad, rtol_for(x.dtype), "ReLU dx")
    return dx


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_torch(rng, dtype):
    relu_parity(rng.standard_normal((4, 3, 5)).astype(dtype))


def test_relu_gradient_is_zero_at_exactly_zero_like_torch(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    x[::2] = 0.0
    dx = relu_parity(x)
    assert not dx[::2].any()


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_relu_matches_torch_over_shapes(shape, seed):
    relu_parity(np.random.default_rng(seed).standard_normal(shape))


def test_relu_finite_differences(rng):
    gradcheck(nn.ReLU(), away_from_zero(rng, (3, 2, 4)))


def test_relu_repr_matches_torch():
    assert repr(nn.ReLU()) == str(torch.nn.ReLU())
    assert repr(nn.ReLU(inplace=True)) == str(torch.nn.ReLU(inplace=True))


def test_relu_rejects_integer_input():
    with pytest.raises(TypeError, match=r"ReLU: expected a floating-point input.*int32"):
        nn.ReLU()(np.zeros(3, np.int32))


# ============================================================== Dropout
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_train_keeps_one_minus_p_and_scales(rng, p):
    x = away_from_zero(rng, (200, 500), np.float32)
    m = nn.Dropout(p)
    y = m(x)
    kept = y != 0
    assert y.dtype == np.float32
    assert abs(kept.mean() - (1 - p)) < 0.01  # 100k draws: ~7 standard deviations
    scale = np.float32(1.0 / (1.0 - p))
    assert_close(y[kept], x[kept] * scale, rtol_for(np.float32), "kept values")
    dy = random_upstream(rng, x.shape, np.float32)
    dx = m.backward(dy)
    assert dx.dtype == np.float32
    assert not dx[~kept].any()
    assert_close(dx[kept], dy[kept] * scale, rtol_for(np.float32), "dx uses the same mask")


def test_dropout_eval_is_the_identity(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    m = nn.Dropout(0.5).eval()
    assert np.array_equal(m(x), x)
    dy = random_upstream(rng, x.shape, np.float32)
    assert np.array_equal(m.backward(dy), dy)


def test_dropout_p0_is_the_identity_and_p1_zeroes(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    dy = random_upstream(rng, x.shape, np.float32)
    m0 = nn.Dropout(0.0)
    assert np.array_equal(m0(x), x) and np.array_equal(m0.backward(dy), dy)
    m1 = nn.Dropout(1.0)
    y = m1(x)
    dx = m1.backward(dy)
    assert y.dtype == np.float32 and not y.any() and np.isfinite(y).all()
    assert not dx.any() and np.isfinite(dx).all()
    t = torch.nn.Dropout(1.0)(torch_tensor(x))  # torch agrees: all zeros
    assert not to_np(t).any()


def test_dropout_masks_are_reproducible_with_manual_seed(rng):
    x = np.ones((10, 10), np.float32)
    minires.manual_seed(5)
    a = nn.Dropout(0.5)(x)
    minires.manual_seed(5)
    b = nn.Dropout(0.5)(x)
    minires.manual_seed(6)
    c = nn.Dropout(0.5)(x)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dropout_called_twice_backpropagates_each_mask_in_reverse_order(rng):
    x = np.ones((20, 20), np.float32)
    m = nn.Dropout(0.5)
    y1, y2 = m(x), m(x)
    assert not np.array_equal(y1, y2)
    dy = np.ones_like(x)
    assert np.array_equal(m.backward(dy) != 0, y2 != 0)  # newest call first
    assert np.array_equal(m.backward(dy) != 0, y1 != 0)


def test_dropout_finite_differences_with_frozen_mask(rng):
    gradcheck(nn.Dropout(0.3), rng.standard_normal((4, 5)))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=rf"Dropout: p must be in \[0, 1\], got {p}"):
        nn.Dropout(p)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.0])
def test_dropout_repr_matches_torch(p):
    assert repr(nn.Dropout(p)) == str(torch.nn.Dropout(p))


# ============================================================== Flatten and Identity
@pytest.mark.parametrize("dims", [(), (2,), (0, -1), (1, 2), (-3, -2)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_matches_torch(rng, dims, dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    m, t = nn.Flatten(*dims), torch.nn.Flatten(*dims)
    y = m(x)
    xt = torch_tensor(x, requires_grad=True)
    yt = t(xt)
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt, rtol_for(dtype), "Flatten y")
    dy = random_upstream(rng, y.shape, dtype)
    yt.backward(torch_tensor(dy))
    assert_close(m.backward(dy), xt.grad, rtol_for(dtype), "Flatten dx")
    assert repr(m) == str(t)


def test_flatten_finite_differences(rng):
    gradcheck(nn.Flatten(), rng.standard_normal((2, 3, 2)))


def test_flatten_rejects_start_after_end():
    with pytest.raises(ValueError, match=r"Flatten: start_dim 2 is after end_dim 1"):
        nn.Flatten(2, 1)(np.zeros((2, 3, 4), np.float32))


def test_identity_passes_values_and_gradients(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    m = nn.Identity()
    assert np.array_equal(m(x), x)
    dy = random_upstream(rng, x.shape, np.float32)
    assert np.array_equal(m.backward(dy), dy)
    assert repr(m) == str(torch.nn.Identity())
    gradcheck(m, x)
