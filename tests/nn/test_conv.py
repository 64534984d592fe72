"""Conv2d and its functional ops against finite differences and torch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import minires
from minires.nn import Conv2d
from minires.nn.functional.conv import conv2d_backward, conv2d_forward
from minires.nn.functional.conv_im2col import col2im, im2col
from minires.testing.strategies import conv_configs as kit_conv_configs
from tests.helpers import (assert_close, copy_params_to_torch, random_upstream, rtol_for, to_np,
                           torch_tensor, numerical_grad)


def make_torch_conv(m):
    """torch.nn.Conv2d with the same configuration and parameters as minires ``m``."""
    t = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                        padding=m.padding, dilation=m.dilation, groups=m.groups,
                        bias=m.bias is not None, dtype=torch.float64 if m.weight.dtype == np.float64
                        else torch.float32)
    copy_params_to_torch(m, t)
    return t


# ------------------------------------------------------------ finite differences

def numeric_grad(f, a, eps=1e-3):
    """Central differences of f() w.r.t. ``a``.  f is linear in each of x, W and
    b separately, so the central difference has no truncation error and a large
    eps only shrinks the rounding error."""
    return numerical_grad(f, a, h=eps)


FD_CASES = [  # (batch, in, out, kernel, stride, padding, dilation, groups, size)
    (2, 3, 4, 3, 1, 1, 1, 1, (5, 6)),
    (1, 4, 6, (3, 2), 2, (1, 0), 1, 2, (7, 6)),
    (2, 2, 3, 2, 1, "same", 2, 1, (5, 5)),   # even kernel: asymmetric "same" padding
    (2, 4, 4, 3, (2, 1), 0, (1, 2), 4, (7, 8)),  # depthwise, dilated
    (2, 3, 5, 1, 1, 0, 1, 1, (3, 4)),        # the 1x1 shortcut path
    (2, 3, 5, 1, 2, 0, 1, 1, (5, 4)),        # 1x1 stride 2 (ResNet downsampling)
]


@pytest.mark.parametrize("n,cin,cout,k,s,p,d,g,hw", FD_CASES)
def test_gradients_match_finite_differences_float64(n, cin, cout, k, s, p, d, g, hw):
    rng = np.random.default_rng(1)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, cin) + hw)
    w = rng.standard_normal((cout, cin // g, kh, kw))
    b = rng.standard_normal(cout)
    y, cache = conv2d_forward(x, w, b, s, p, d, g)
    up = random_upstream(rng, y.shape, np.float64)
    dx, dw, db = conv2d_backward(up, cache)

    def loss():
        return float(np.sum(conv2d_forward(x, w, b, s, p, d, g)[0] * up))

    rtol = 1e-8  # finite differences, not the 1e-10 of a torch comparison
    assert_close(dx, numeric_grad(loss, x), rtol, "dx")
    assert_close(dw, numeric_grad(loss, w), rtol, "dW")
    assert_close(db, numeric_grad(loss, b), rtol, "db")


# ------------------------------------------------------------ torch, any configuration

@st.composite
def conv_configs(draw):
    """The public kit's configurations (minires.testing.conv_configs: only
    combinations torch accepts), as the flat dict these tests index."""
    kwargs, shape = draw(kit_conv_configs(max_channels=6, max_kernel=4, max_groups=3,
                                          max_batch=3))
    return dict(batch=shape[0], cin=kwargs["in_channels"], cout=kwargs["out_channels"],
                kernel=kwargs["kernel_size"], stride=kwargs["stride"], padding=kwargs["padding"],
                dilation=kwargs["dilation"], groups=kwargs["groups"], hw=shape[2:],
                bias=kwargs["bias"])


# torch warns that it copies the input for an even kernel with padding="same"
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_functional_matches_torch_float64(cfg, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["batch"], cfg["cin"]) + cfg["hw"])
    w = rng.standard_normal((cfg["cout"], cfg["cin"] // cfg["groups"]) + cfg["kernel"])
    b = rng.standard_normal(cfg["cout"]) if cfg["bias"] else None
    args = (cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])

    y, cache = conv2d_forward(x, w, b, *args)
    up = random_upstream(rng, y.shape, np.float64)
    dx, dw, db = conv2d_backward(up, cache)

    tx, tw = torch_tensor(x, True), torch_tensor(w, True)
    tb = torch_tensor(b, True) if b is not None else None
    ty = TF.conv2d(tx, tw, tb, *args)
    ty.backward(torch_tensor(up))
    rtol = rtol_for(np.float64)
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tx.grad, rtol, "dx")
    assert_close(dw, tw.grad, rtol, "dW")
    if b is not None:
        assert_close(db, tb.grad, rtol, "db")
    else:
        assert db is None


def test_explicit_asymmetric_padding_matches_torch_pad():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((4, 3, 3, 3))
    top, bottom, left, right = 0, 2, 1, 3
    y, cache = conv2d_forward(x, w, None, 2, (top, bottom, left, right), 1, 1)
    up = random_upstream(rng, y.shape, np.float64)
    dx, dw, _ = conv2d_backward(up, cache)
    tx, tw = torch_tensor(x, True), torch_tensor(w, True)
    ty = TF.conv2d(TF.pad(tx, (left, right, top, bottom)), tw, stride=2)
    ty.backward(torch_tensor(up))
    assert_close(y, ty, 1e-10, "y")
    assert_close(dx, tx.grad, 1e-10, "dx")
    assert_close(dw, tw.grad, 1e-10, "dW")


# ------------------------------------------------------------ adjointness

@settings(max_examples=15, deadline=None)
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_backward_is_the_adjoint_of_forward(cfg, seed):
    """<conv(x), u> = <x, conv^T(u)> and <conv_W(x), u> = <W, dW(u)>, with
    conv2d_backward as conv^T (no bias: the map must be linear)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["batch"], cfg["cin"]) + cfg["hw"])
    w = rng.standard_normal((cfg["cout"], cfg["cin"] // cfg["groups"]) + cfg["kernel"])
    y, cache = conv2d_forward(x, w, None, cfg["stride"], cfg["padding"], cfg["dilation"],
                              cfg["groups"])
    u = rng.standard_normal(y.shape)
    dx, dw, _ = conv2d_backward(u, cache)
    lhs = np.vdot(y, u)
    scale = np.abs(y).sum() * np.abs(u).max() + 1e-300
    assert abs(lhs - np.vdot(x, dx)) <= 1e-12 * scale
    assert abs(lhs - np.vdot(w, dw)) <= 1e-12 * scale


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    for kernel, stride, padding, dilation in [(3, 1, 1, 1), ((2, 3), (2, 1), (0, 1, 2, 1), (2, 1)),
                                              (1, 2, 0, 1)]:
        col = im2col(x, kernel, stride, padding, dilation)
        c = rng.standard_normal(col.shape)
        back = col2im(c, x.shape, stride, padding, dilation)
        assert back.shape == x.shape
        assert abs(np.vdot(col, c) - np.vdot(x, back)) <= 1e-12 * np.abs(col).sum() * np.abs(c).max()


# ------------------------------------------------------------ the module vs torch.nn.Conv2d

MODULE_CASES = [  # (in, out, kernel, kwargs, input size)
    (3, 8, 3, dict(padding=1, bias=False), (8, 8)),
    (4, 6, (3, 2), dict(stride=2, padding=(1, 0), groups=2), (9, 7)),
    (3, 5, 4, dict(padding="same", dilation=(1, 2)), (6, 7)),
    (3, 5, 3, dict(padding="valid", stride=(1, 2)), (6, 7)),
    (6, 6, 3, dict(padding=1, groups=6), (5, 5)),
    (8, 4, 1, dict(), (4, 5)),
    (8, 16, 1, dict(stride=2, bias=False), (8, 8)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cin,cout,k,kwargs,hw", MODULE_CASES)
def test_module_matches_torch(cin, cout, k, kwargs, hw, dtype):
    m = Conv2d(cin, cout, k, **kwargs).to(dtype=dtype)
    t = make_torch_conv(m)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, cin) + hw).astype(dtype)
    y = m(x)
    up = random_upstream(rng, y.shape, dtype)
    dx = m.backward(up)

    tx = torch_tensor(x, True)
    ty = t(tx)
    ty.backward(torch_tensor(up))
    # rtol 1e-5 in float32 holds here: the longest reduction (dW over
    # batch*oh*ow <= 128 terms) keeps float32 rounding near 1e-6.
    rtol = rtol_for(dtype)
    for a in (y, dx, m.weight.grad) + ((m.bias.grad,) if m.bias is not None else ()):
        assert a.dtype == dtype
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tx.grad, rtol, "dx")
    assert_close(m.weight.grad, t.weight.grad, rtol, "dW")
    if m.bias is not None:
        assert_close(m.bias.grad, t.bias.grad, rtol, "db")


@pytest.mark.parametrize("k,kwargs", [(3, dict(padding=1)), (1, dict())])
def test_module_called_twice_accumulates_like_torch(k, kwargs):
    m = Conv2d(3, 4, k, **kwargs).double()
    t = make_torch_conv(m)
    rng = np.random.default_rng(6)
    x1, x2 = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((3, 3, 5, 5))
    y1, y2 = m(x1), m(x2)
    up1, up2 = random_upstream(rng, y1.shape, np.float64), random_upstream(rng, y2.shape, np.float64)
    dx2 = m.backward(up2)  # caches are a stack: the newest call first
    dx1 = m.backward(up1)

    tx1, tx2 = torch_tensor(x1, True), torch_tensor(x2, True)
    t(tx1).backward(torch_tensor(up1))
    t(tx2).backward(torch_tensor(up2))
    assert_close(dx1, tx1.grad, 1e-10, "dx1")
    assert_close(dx2, tx2.grad, 1e-10, "dx2")
    assert_close(m.weight.grad, t.weight.grad, 1e-10, "accumulated dW")
    assert_close(m.bias.grad, t.bias.grad, 1e-10, "accumulated db")
    with pytest.raises(RuntimeError, match="Conv2d.backward"):
        m.backward(up1)


def test_no_grad_keeps_no_cache():
    m = Conv2d(2, 3, 3)
    x = np.ones((1, 2, 4, 4), np.float32)
    with minires.no_grad():
        y = m(x)
    assert m._caches == []
    with pytest.raises(RuntimeError, match="Conv2d.backward"):
        m.backward(np.ones_like(y))


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_and_shapes_match_torch(bias):
    m = Conv2d(4, 6, (3, 2), groups=2, bias=bias)
    t = torch.nn.Conv2d(4, 6, (3, 2), groups=2, bias=bias)
    sd, tsd = m.state_dict(), t.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert tuple(sd[k].shape) == tuple(tsd[k].shape)
        assert sd[k].dtype == np.float32


def test_default_init_is_torchs():
    """kaiming_uniform(a=sqrt(5)) and the bias: both U(-1/sqrt(fan_in), +1/sqrt(fan_in))."""
    m = Conv2d(16, 64, 3, groups=2)
    bound = 1 / np.sqrt(8 * 3 * 3)  # fan_in = in_channels/groups * kh * kw
    for p in (m.weight.data, m.bias.data):
        assert np.abs(p).max() <= bound
    assert abs(m.weight.data.std() - bound / np.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize("args,kwargs", [
    ((3, 16, 3), dict(padding=1, bias=False)),
    ((3, 16, (3, 2)), dict(padding="same", dilation=2)),
    ((4, 16, 3), dict(padding="valid", groups=2)),
    ((4, 16, 3), dict(stride=2, padding=(1, 0), dilation=(1, 2), groups=4)),
    ((4, 16, 3), dict(padding=0)),
    ((4, 16, 1), dict(stride=(1, 1))),
    ((4, 8, (1, 3)), dict(stride=(2, 1), padding=(0, 1), bias=False)),
])
def test_repr_matches_torch(args, kwargs):
    assert repr(Conv2d(*args, **kwargs)) == repr(torch.nn.Conv2d(*args, **kwargs))


# ------------------------------------------------------------ bad inputs

def test_bad_inputs_raise_clear_errors():
    m = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2d: expected a 4-D input, got shape \(3, 8, 8\)"):
        m(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d: expected 3 channels.*got shape \(1, 2, 8, 8\)"):
        m(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(TypeError, match="Conv2d: expected a floating-point input.*int64"):
        m(np.zeros((1, 3, 8, 8), np.int64))
    with pytest.raises(TypeError, match="Conv2d: input dtype float64 does not match.*float32"):
        m(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match=r"Conv2d: the kernel .*larger than the padded input "
                                         r"\(2x8.*expected a padded input of at least 3x3"):
        m(np.zeros((1, 3, 2, 8), np.float32))
    dilated = Conv2d(3, 4, 3, padding=1, dilation=3)  # 7x7 pixels vs a padded 6x6
    with pytest.raises(ValueError, match=r"Conv2d: the kernel.*7x7.*larger than the padded input \(6x6"):
        dilated(np.zeros((1, 3, 4, 4), np.float32))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="Conv2d: padding='same'.*stride 1.*stride=\\(2, 2\\)"):
        Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Conv2d: padding must be.*'same'.*'full'"):
        Conv2d(3, 4, 3, padding="full")
    with pytest.raises(ValueError, match=r"Conv2d: in_channels \(3\).*divisible by groups \(2\)"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv2d: .*out_channels \(5\) must both be divisible"):
        Conv2d(4, 5, 3, groups=2)
    with pytest.raises(ValueError, match="Conv2d: stride must be positive"):
        Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match="Conv2d: padding must be non-negative"):
        Conv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="Conv2d: only padding_mode='zeros'"):
        Conv2d(3, 4, 3, padding_mode="reflect")


# ------------------------------------------------------------ GPU

@pytest.mark.gpu
def test_module_on_gpu_matches_torch():
    m = Conv2d(3, 6, 3, stride=2, padding=1, groups=3).double().to("cuda")
    t = make_torch_conv(m)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 8))
    y = m(minires.to_device(x, "cuda"))
    up = random_upstream(rng, y.shape, np.float64)
    dx = m.backward(minires.to_device(up, "cuda"))
    tx = torch_tensor(x, True)
    ty = t(tx)
    ty.backward(torch_tensor(up))
    assert_close(to_np(y), ty, 1e-10, "y")
    assert_close(to_np(dx), tx.grad, 1e-10, "dx")
    assert_close(to_np(m.weight.grad), t.weight.grad, 1e-10, "dW")
    assert_close(to_np(m.bias.grad), t.bias.grad, 1e-10, "db")
