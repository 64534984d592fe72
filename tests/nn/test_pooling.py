"""MaxPool2d, AvgPool2d, AdaptiveAvgPool2d: finite differences, torch parity
(hypothesis over geometry), module contract, repr, bad inputs, and max pooling's
exact "one winner per window" identity."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import minires
import minires.nn as nn
from minires.nn.functional.pool import (
    adaptive_avgpool2d_backward, adaptive_avgpool2d_forward, avgpool2d_backward,
    avgpool2d_forward, maxpool2d_backward, maxpool2d_forward,
)
from tests.helpers import assert_close, random_upstream, rtol_for, to_np, torch_tensor

SETTINGS = dict(max_examples=25, deadline=None)


# ---------------------------------------------------------------- helpers

def distinct_values(rng, shape, dtype):
    """A scaled random permutation: no ties, gaps of 0.1 (far above any FD step),
    and exactly representable spacing in float32 for these small sizes."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype)


def torch_forward_backward(torch_module, x, dy):
    tx = torch_tensor(x, requires_grad=True)
    ty = torch_module(tx)
    ty.backward(torch_tensor(dy))
    return ty, tx.grad


def check_parity(mr_module, torch_module, x, rng, what):
    """Forward and dx of a minires module against torch, at x's dtype."""
    y = mr_module(x)
    dy = random_upstream(rng, y.shape, x.dtype)
    ty, tdx = torch_forward_backward(torch_module, x, dy)
    dx = mr_module.backward(dy)
    rtol = rtol_for(x.dtype)
    assert y.dtype == x.dtype and dx.dtype == x.dtype, what
    assert_close(y, ty, rtol, f"{what} y")
    assert_close(dx, tdx, rtol, f"{what} dx")


def central_difference(f, x, dy, eps=1e-6):
    """d(sum(f(x) * dy))/dx by central differences, one element at a time."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = np.sum(f(x) * dy)
        flat[i] = old - eps
        minus = np.sum(f(x) * dy)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return g


def torch_raises(make, x):
    try:
        make()(torch_tensor(x))
    except RuntimeError:
        return True
    return False


# ---------------------------------------------------------------- finite differences

MAX_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)),
    dict(kernel_size=3, stride=1, padding=1, ceil_mode=True),
    dict(kernel_size=2, stride=2, padding=1, dilation=2, ceil_mode=True),
]
AVG_CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), divisor_override=5),
]
ADAPTIVE_SIZES = [1, (2, 3), (3, 4), (None, 2), (7, 9)]


@pytest.mark.parametrize("cfg", MAX_CONFIGS)
def test_maxpool_finite_differences(cfg):
    rng = np.random.default_rng(1)
    x = distinct_values(rng, (2, 2, 5, 6), np.float64)
    y, cache = maxpool2d_forward(x, **cfg)
    dy = random_upstream(rng, y.shape, np.float64)
    dx = maxpool2d_backward(dy, cache)
    num = central_difference(lambda a: maxpool2d_forward(a, **cfg)[0], x, dy)
    assert_close(dx, num, 1e-7, f"maxpool {cfg}")


@pytest.mark.parametrize("cfg", AVG_CONFIGS)
def test_avgpool_finite_differences(cfg):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 5, 6))
    y, cache = avgpool2d_forward(x, **cfg)
    dy = random_upstream(rng, y.shape, np.float64)
    dx = avgpool2d_backward(dy, cache)
    num = central_difference(lambda a: avgpool2d_forward(a, **cfg)[0], x, dy)
    assert_close(dx, num, 1e-7, f"avgpool {cfg}")


@pytest.mark.parametrize("size", ADAPTIVE_SIZES)
def test_adaptive_avgpool_finite_differences(size):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 7, 9))
    y, cache = adaptive_avgpool2d_forward(x, size)
    dy = random_upstream(rng, y.shape, np.float64)
    dx = adaptive_avgpool2d_backward(dy, cache)
    num = central_difference(lambda a: adaptive_avgpool2d_forward(a, size)[0], x, dy)
    assert_close(dx, num, 1e-7, f"adaptive {size}")


# ---------------------------------------------------------------- hypothesis vs torch

pairs = lambda lo, hi: st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi),
                                                                   st.integers(lo, hi)))


def _as_pair(v):
    return v if isinstance(v, tuple) else (v, v)


@st.composite
def pool_case(draw, with_dilation):
    k = draw(pairs(1, 4))
    kp = _as_pair(k)
    stride = draw(st.one_of(st.none(), pairs(1, 3)))
    padding = draw(st.one_of(st.integers(0, min(kp) // 2),
                             st.tuples(st.integers(0, kp[0] // 2), st.integers(0, kp[1] // 2))))
    cfg = dict(kernel_size=k, stride=stride, padding=padding, ceil_mode=draw(st.booleans()))
    if with_dilation:
        cfg["dilation"] = draw(st.sampled_from([1, 1, 2, (1, 2)]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    return cfg, shape, draw(st.integers(0, 2**31 - 1))


@settings(**SETTINGS)
@given(case=pool_case(with_dilation=True), dtype=st.sampled_from([np.float32, np.float64]))
def test_maxpool_matches_torch(case, dtype):
    cfg, shape, seed = case
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, shape, dtype)
    if torch_raises(lambda: torch.nn.MaxPool2d(**cfg), x):
        with pytest.raises(ValueError, match="MaxPool2d"):
            nn.MaxPool2d(**cfg)(x)
        return
    # A dilated window can miss the input entirely (output -inf); torch then
    # sends that gradient out of bounds, so such cases are tested separately.
    assume(bool(torch.isfinite(torch.nn.MaxPool2d(**cfg)(torch_tensor(x))).all()))
    check_parity(nn.MaxPool2d(**cfg), torch.nn.MaxPool2d(**cfg), x, rng, f"maxpool {cfg}")


@settings(**SETTINGS)
@given(case=pool_case(with_dilation=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, None, None, 2, 7]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_avgpool_matches_torch(case, count_include_pad, divisor_override, dtype):
    cfg, shape, seed = case
    cfg.update(count_include_pad=count_include_pad, divisor_override=divisor_override)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if torch_raises(lambda: torch.nn.AvgPool2d(**cfg), x):
        with pytest.raises(ValueError, match="AvgPool2d"):
            nn.AvgPool2d(**cfg)(x)
        return
    check_parity(nn.AvgPool2d(**cfg), torch.nn.AvgPool2d(**cfg), x, rng, f"avgpool {cfg}")


@settings(**SETTINGS)
@given(h=st.integers(1, 10), w=st.integers(1, 10), data=st.data(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31 - 1))
def test_adaptive_avgpool_matches_torch(h, w, data, dtype, seed):
    oh = data.draw(st.one_of(st.none(), st.integers(1, h + 2)), label="oh")
    ow = data.draw(st.one_of(st.none(), st.integers(1, w + 2)), label="ow")
    size = data.draw(st.sampled_from([(oh, ow), oh or 1]), label="output_size")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((data.draw(st.integers(1, 2)), 2, h, w)).astype(dtype)
    check_parity(nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), x, rng,
                 f"adaptive {size} on {x.shape}")


# ---------------------------------------------------------------- explicit parity cases

PARITY_CASES = [
    ("max", dict(kernel_size=3, stride=2, padding=1), (2, 4, 12, 12)),  # ResNet stem
    ("max", dict(kernel_size=3, stride=2, ceil_mode=True), (1, 2, 8, 8)),
    ("avg", dict(kernel_size=2), (2, 3, 8, 8)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
     (1, 2, 6, 7)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     (1, 2, 6, 7)),
    ("adaptive", dict(output_size=(1, 1)), (2, 8, 7, 7)),  # ResNet head
    ("adaptive", dict(output_size=(3, 4)), (2, 3, 7, 9)),  # non-divisible bins
    ("adaptive", dict(output_size=(2, 3)), (1, 3, 8, 9)),  # divisible bins
]
CLASSES = {"max": "MaxPool2d", "avg": "AvgPool2d", "adaptive": "AdaptiveAvgPool2d"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,cfg,shape", PARITY_CASES)
def test_parity_with_torch(kind, cfg, shape, dtype):
    rng = np.random.default_rng(4)
    x = (distinct_values(rng, shape, dtype) if kind == "max"
         else rng.standard_normal(shape).astype(dtype))
    x_before = x.copy()
    name = CLASSES[kind]
    check_parity(getattr(nn, name)(**cfg), getattr(torch.nn, name)(**cfg), x, rng,
                 f"{name} {cfg}")
    np.testing.assert_array_equal(x, x_before)  # forward and backward leave x alone


# ---------------------------------------------------------------- module contract

@pytest.mark.parametrize("name,cfg", [("MaxPool2d", dict(kernel_size=3, stride=2, padding=1)),
                                      ("AvgPool2d", dict(kernel_size=2)),
                                      ("AdaptiveAvgPool2d", dict(output_size=(3, 2)))])
def test_module_called_twice(name, cfg):
    """Two forwards, two backwards in reverse order, each matching torch."""
    rng = np.random.default_rng(5)
    m, tm = getattr(nn, name)(**cfg), getattr(torch.nn, name)(**cfg)
    x1 = distinct_values(rng, (2, 2, 8, 8), np.float64)
    x2 = distinct_values(rng, (1, 3, 6, 7), np.float64)
    y1, y2 = m(x1), m(x2)
    dy1, dy2 = (random_upstream(rng, y.shape, np.float64) for y in (y1, y2))
    dx2, dx1 = m.backward(dy2), m.backward(dy1)
    for x, y, dy, dx in ((x1, y1, dy1, dx1), (x2, y2, dy2, dx2)):
        ty, tdx = torch_forward_backward(tm, x, dy)
        assert_close(y, ty, 1e-10, f"{name} y")
        assert_close(dx, tdx, 1e-10, f"{name} dx")
    with pytest.raises(RuntimeError, match=f"{name}.backward: no cache"):
        m.backward(dy1)


def test_no_grad_keeps_no_cache_and_dy_shape_is_checked():
    m = nn.MaxPool2d(2)
    x = np.random.default_rng(6).standard_normal((1, 1, 4, 4))
    with minires.no_grad():
        y = m(x)
    assert y.shape == (1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="MaxPool2d.backward"):
        m.backward(np.ones_like(y))
    m(x)
    with pytest.raises(ValueError, match=r"MaxPool2d.backward: expected dy of shape \(1, 1, 2, 2\)"):
        m.backward(np.ones((1, 1, 3, 3)))


REPR_CASES = [
    ("MaxPool2d", (3,), dict(stride=2, padding=1)),
    ("MaxPool2d", (2,), {}),
    ("MaxPool2d", ((2, 3),), dict(stride=(1, 2), padding=(1, 0), dilation=2, ceil_mode=True)),
    ("MaxPool2d", (3,), dict(stride=[2, 2])),
    ("AvgPool2d", (2,), {}),
    ("AvgPool2d", (2,), dict(stride=2)),
    ("AvgPool2d", (3, 2, 1, True, False)),
    ("AvgPool2d", ((2, 3),), {}),
    ("AdaptiveAvgPool2d", ((1, 1),), {}),
    ("AdaptiveAvgPool2d", (1,), {}),
    ("AdaptiveAvgPool2d", ((None, 7),), {}),
]


@pytest.mark.parametrize("case", REPR_CASES, ids=lambda c: f"{c[0]}{c[1]}")
def test_repr_matches_torch(case):
    name, args, kwargs = case[0], case[1], case[2] if len(case) > 2 else {}
    assert repr(getattr(nn, name)(*args, **kwargs)) == repr(getattr(torch.nn, name)(*args, **kwargs))


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("name,cfg", [("MaxPool2d", dict(kernel_size=2)),
                                      ("AvgPool2d", dict(kernel_size=2)),
                                      ("AdaptiveAvgPool2d", dict(output_size=2))])
def test_bad_inputs_name_the_layer(name, cfg):
    m = getattr(nn, name)(**cfg)
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-D input, got shape \(3, 4, 4\)"):
        m(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-D input, got shape \(1, 1, 1, 4, 4\)"):
        m(np.zeros((1, 1, 1, 4, 4)))
    with pytest.raises(TypeError, match=rf"{name}: expected a floating-point input.*int64"):
        m(np.zeros((1, 1, 4, 4), dtype=np.int64))
    with pytest.raises(TypeError, match=rf"{name}: expected an array.*list"):
        m([[[[1.0]]]])


@pytest.mark.parametrize("name", ["MaxPool2d", "AvgPool2d"])
def test_padding_over_half_the_kernel_is_refused(name):
    for k, p in [(2, 2), (3, 2), ((3, 4), (1, 3)), (1, 1)]:
        with pytest.raises(ValueError, match=rf"{name}: padding should be at most half of "
                                             r"kernel_size .*got padding="):
            getattr(nn, name)(k, padding=p)
    getattr(nn, name)(3, padding=1)  # exactly half is fine, as in torch


@pytest.mark.parametrize("name", ["MaxPool2d", "AvgPool2d"])
def test_kernel_larger_than_padded_input_is_refused(name):
    m = getattr(nn, name)(5, padding=1)
    with pytest.raises(ValueError, match=rf"{name}: kernel_size=\(5, 5\) is larger than the "
                                         r"padded input: input shape \(1, 1, 2, 6\)"):
        m(np.zeros((1, 1, 2, 6)))
    m(np.zeros((1, 1, 3, 6)))  # 3 + 2*1 = 5 fits exactly


@pytest.mark.parametrize("name,args", [("MaxPool2d", (0,)), ("MaxPool2d", (2, 0)),
                                       ("AvgPool2d", (2, -1)), ("MaxPool2d", ((2, 2, 2),)),
                                       ("AvgPool2d", (2, 1, -1))])
def test_bad_arguments_are_refused(name, args):
    with pytest.raises(ValueError, match=name):
        getattr(nn, name)(*args)


@pytest.mark.parametrize("size", [0, (2, 0), (1, 2, 3), -1, (2.5, 2), "7"])
def test_bad_adaptive_output_size_is_refused(size):
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size must be a positive int"):
        nn.AdaptiveAvgPool2d(size)


# ---------------------------------------------------------------- max pooling's identity

@pytest.mark.parametrize("cfg,values", [
    (dict(kernel_size=3, stride=1, padding=1), "distinct"),      # heavy overlap
    (dict(kernel_size=3, stride=2, padding=1), "ties"),          # ResNet stem, with ties
    (dict(kernel_size=2, stride=1, ceil_mode=True), "ties"),
    (dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(2, 1)), "ties"),
    (dict(kernel_size=2, stride=2), "constant"),                 # every window all ties
])
def test_maxpool_each_dy_goes_to_exactly_one_input(cfg, values):
    """dy = distinct powers of two, so every dx entry decodes exactly (float64 sums
    of distinct powers below 2**53 are exact) into the set of outputs that sent
    gradient there.  Each output must send to exactly one position: inside its
    window, holding the window's max, and the first such position (row-major)."""
    rng = np.random.default_rng(7)
    shape = (1, 2, 5, 5)
    if values == "distinct":
        x = distinct_values(rng, shape, np.float64)
    elif values == "ties":
        x = rng.integers(0, 3, shape).astype(np.float64)
    else:
        x = np.zeros(shape)
    m = nn.MaxPool2d(**cfg)
    y = m(x)
    assert y.size <= 52
    dy = (2.0 ** np.arange(y.size)).reshape(y.shape)
    dx = m.backward(dy)
    assert dx.sum() == dy.sum()
    codes = dx.astype(np.int64)
    assert np.array_equal(codes.astype(np.float64), dx)

    k = _as_pair(cfg["kernel_size"])
    s = _as_pair(cfg.get("stride", cfg["kernel_size"]))
    p = _as_pair(cfg.get("padding", 0))
    d = _as_pair(cfg.get("dilation", 1))
    for bit, (n, c, oh, ow) in enumerate(np.ndindex(*y.shape)):
        hits = np.argwhere((codes >> bit) & 1)
        assert len(hits) == 1, f"output {(n, c, oh, ow)} sent gradient to {len(hits)} inputs"
        hn, hc, r, q = hits[0]
        assert (hn, hc) == (n, c)
        window = [(oh * s[0] - p[0] + i * d[0], ow * s[1] - p[1] + j * d[1])
                  for i in range(k[0]) for j in range(k[1])]
        inside = [(a, b) for a, b in window if 0 <= a < shape[2] and 0 <= b < shape[3]]
        assert (r, q) in inside
        assert x[n, c, r, q] == y[n, c, oh, ow] == max(x[n, c, a, b] for a, b in inside)
        first = next((a, b) for a, b in inside if x[n, c, a, b] == y[n, c, oh, ow])
        assert (r, q) == first


def test_maxpool_window_missing_the_input():
    """Dilation can place a window wholly in the padding: the output is -inf as in
    torch, and its gradient is dropped (torch writes it out of bounds, into the
    next channel; minires does not copy that)."""
    cfg = dict(kernel_size=2, stride=3, padding=1, dilation=2)
    x = distinct_values(np.random.default_rng(8), (1, 2, 1, 6), np.float64)
    m = nn.MaxPool2d(**cfg)
    y = m(x)
    np.testing.assert_array_equal(y, to_np(torch.nn.MaxPool2d(**cfg)(torch_tensor(x))))
    assert np.isneginf(y).all()
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape and not dx.any()


@pytest.mark.gpu
@pytest.mark.parametrize("kind,cfg,shape", PARITY_CASES)
def test_parity_with_torch_on_gpu(kind, cfg, shape):
    """The same ops on CuPy arrays: outputs and dx stay on the GPU, in float32."""
    from minires import backend
    rng = np.random.default_rng(9)
    x = (distinct_values(rng, shape, np.float32) if kind == "max"
         else rng.standard_normal(shape).astype(np.float32))
    name = CLASSES[kind]
    m = getattr(nn, name)(**cfg)
    y = m(backend.to_device(x, "cuda"))
    dy = random_upstream(rng, y.shape, np.float32)
    dx = m.backward(backend.to_device(dy, "cuda"))
    assert backend.device_of(y) == backend.device_of(dx) == "cuda"
    ty, tdx = torch_forward_backward(getattr(torch.nn, name)(**cfg), x, dy)
    assert_close(y, ty, 1e-5, f"{name} y")
    assert_close(dx, tdx, 1e-5, f"{name} dx")
