"""BatchNorm1d / BatchNorm2d: finite differences, torch parity (outputs, gradients,
running statistics), hypothesis properties, state_dict/repr, bad inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import minires
from minires import nn
from tests.helpers import (assert_close, copy_params_to_torch, numerical_grad, random_upstream,
                           rtol_for, to_np, torch_tensor)

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}

# (class name, input shape): BatchNorm1d on (N, C) and (N, C, L), BatchNorm2d on NCHW.
CASES = [("BatchNorm1d", (8, 5)), ("BatchNorm1d", (4, 5, 7)), ("BatchNorm2d", (4, 3, 5, 6))]
CASE_IDS = ["1d-NC", "1d-NCL", "2d-NCHW"]


def make_pair(cls_name, num_features, dtype, rng, **kwargs):
    """A minires layer with non-trivial parameters and running statistics, and
    the torch layer loaded with the same state."""
    m = getattr(nn, cls_name)(num_features, **kwargs).to(dtype)
    c = num_features
    if m.weight is not None:
        m.weight.data = (1.0 + 0.5 * rng.standard_normal(c)).astype(dtype)
    if m.bias is not None:
        m.bias.data = rng.standard_normal(c).astype(dtype)
    if m.running_mean is not None:
        m.running_mean[...] = rng.standard_normal(c)
        m.running_var[...] = rng.uniform(0.5, 2.0, c)
    tm = getattr(torch.nn, cls_name)(num_features, **kwargs).to(TORCH_DTYPE[dtype])
    copy_params_to_torch(m, tm)
    return m, tm


def random_input(rng, shape, dtype):
    # An offset and a scale per channel, so normalisation has work to do.
    c = shape[1]
    bshape = (1, c) + (1,) * (len(shape) - 2)
    offset = rng.standard_normal(bshape) * 2
    scale = rng.uniform(0.5, 3.0, bshape)
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def torch_step(tm, x, dy):
    """Forward and backward through the torch layer: y, dx, dweight, dbias."""
    tx = torch_tensor(x, requires_grad=True)
    ty = tm(tx)
    ty.backward(torch_tensor(dy))
    dw = tm.weight.grad if tm.weight is not None else None
    db = tm.bias.grad if tm.bias is not None else None
    return ty, tx.grad, dw, db


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls_name,shape", [("BatchNorm1d", (5, 3)),
                                            ("BatchNorm2d", (3, 2, 2, 3))], ids=["1d", "2d"])
def test_finite_differences_float64(cls_name, shape, training):
    rng = np.random.default_rng(1)
    m, _ = make_pair(cls_name, shape[1], np.float64, rng)
    m.train(training)
    x = random_input(rng, shape, np.float64)
    dy = random_upstream(rng, shape, np.float64)

    y = m(x)
    dx = m.backward(dy)

    def objective():
        with minires.no_grad():
            return float(np.sum(m(x) * dy))

    assert_close(dx, numerical_grad(objective, x), 1e-6, "dx")
    assert_close(m.weight.grad, numerical_grad(objective, m.weight.data), 1e-6, "dweight")
    assert_close(m.bias.grad, numerical_grad(objective, m.bias.data), 1e-6, "dbias")
    assert y.shape == x.shape


# ---------------------------------------------------------------- torch parity
@pytest.mark.parametrize("rows", ["full-rows", "broadcast"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls_name,shape", CASES, ids=CASE_IDS)
def test_torch_parity(monkeypatch, cls_name, shape, training, dtype, rows):
    """Both ways of applying the per-channel terms: full (C, M) rows (small
    layers) and the (C, 1) broadcast (layers whose rows would be large)."""
    from minires.nn.functional import norm as norm_ops
    monkeypatch.setattr(norm_ops, "ROWS_MAX_BYTES", 1 << 30 if rows == "full-rows" else 0)
    rng = np.random.default_rng(2)
    m, tm = make_pair(cls_name, shape[1], dtype, rng)
    m.train(training)
    tm.train(training)
    x = random_input(rng, shape, dtype)
    dy = random_upstream(rng, shape, dtype)

    y = m(x)
    dx = m.backward(dy)
    ty, tdx, tdw, tdb = torch_step(tm, x, dy)

    rtol = rtol_for(dtype)
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tdx, rtol, "dx")
    assert_close(m.weight.grad, tdw, rtol, "dweight")
    assert_close(m.bias.grad, tdb, rtol, "dbias")
    assert_close(m.running_mean, tm.running_mean, rtol, "running_mean")
    assert_close(m.running_var, tm.running_var, rtol, "running_var")
    assert int(m.num_batches_tracked) == int(tm.num_batches_tracked)
    # No float64 upcast for float32 inputs, and buffers keep the module's dtype.
    for a in (y, dx, m.weight.grad, m.bias.grad, m.running_mean, m.running_var):
        assert a.dtype == dtype


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls_name,shape", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kwargs", [dict(affine=False), dict(track_running_stats=False),
                                    dict(affine=False, track_running_stats=False),
                                    dict(bias=False)],
                         ids=["no-affine", "no-tracking", "neither", "no-bias"])
def test_torch_parity_variants(kwargs, cls_name, shape, training):
    """affine=False / track_running_stats=False (batch statistics even in eval) / bias=False."""
    dtype = np.float64
    rng = np.random.default_rng(3)
    m, tm = make_pair(cls_name, shape[1], dtype, rng, **kwargs)
    m.train(training)
    tm.train(training)
    x = random_input(rng, shape, dtype)
    dy = random_upstream(rng, shape, dtype)

    y = m(x)
    dx = m.backward(dy)
    ty, tdx, tdw, tdb = torch_step(tm, x, dy)

    rtol = rtol_for(dtype)
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tdx, rtol, "dx")
    for p, tg, what in ((m.weight, tdw, "dweight"), (m.bias, tdb, "dbias")):
        assert (p is None) == (tg is None), what
        if p is not None:
            assert_close(p.grad, tg, rtol, what)
    if tm.running_mean is None:
        assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
    else:
        assert_close(m.running_mean, tm.running_mean, rtol, "running_mean")
        assert_close(m.running_var, tm.running_var, rtol, "running_var")


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_stats_over_steps(momentum, dtype):
    rng = np.random.default_rng(4)
    m, tm = make_pair("BatchNorm2d", 3, dtype, rng, momentum=momentum)
    for step in range(5):
        x = random_input(rng, (4, 3, 3, 2), dtype)
        y = m(x)
        m.backward(random_upstream(rng, y.shape, dtype))
        tm(torch_tensor(x))
    rtol = rtol_for(dtype)
    assert_close(m.running_mean, tm.running_mean, rtol, "running_mean")
    assert_close(m.running_var, tm.running_var, rtol, "running_var")
    assert m.num_batches_tracked.shape == () and m.num_batches_tracked.dtype == np.int64
    assert int(m.num_batches_tracked) == int(tm.num_batches_tracked) == 5
    # state_dict references the live buffers (updated in place)
    sd = m.state_dict()
    assert sd["running_mean"] is m.running_mean
    assert sd["num_batches_tracked"] is m.num_batches_tracked

    # eval afterwards uses the accumulated statistics
    m.eval()
    tm.eval()
    x = random_input(rng, (2, 3, 3, 2), dtype)
    assert_close(m(x), tm(torch_tensor(x)), rtol, "eval y")


def test_running_stats_update_under_no_grad():
    """torch updates running statistics in training mode even without autograd."""
    rng = np.random.default_rng(5)
    m, tm = make_pair("BatchNorm1d", 4, np.float64, rng)
    x = random_input(rng, (6, 4), np.float64)
    with minires.no_grad():
        m(x)
    with torch.no_grad():
        tm(torch_tensor(x))
    assert_close(m.running_var, tm.running_var, 1e-10, "running_var")
    assert int(m.num_batches_tracked) == 1
    with pytest.raises(RuntimeError, match="BatchNorm1d.backward: no cache"):
        m.backward(np.zeros((6, 4)))


def test_called_twice_then_backward_twice():
    dtype = np.float64
    rng = np.random.default_rng(6)
    m, tm = make_pair("BatchNorm2d", 3, dtype, rng)
    x1, x2 = random_input(rng, (3, 3, 2, 4), dtype), random_input(rng, (2, 3, 4, 2), dtype)
    dy1, dy2 = random_upstream(rng, x1.shape, dtype), random_upstream(rng, x2.shape, dtype)

    y1, y2 = m(x1), m(x2)
    dx2 = m.backward(dy2)  # newest first
    dx1 = m.backward(dy1)

    tx1, tx2 = torch_tensor(x1, requires_grad=True), torch_tensor(x2, requires_grad=True)
    ty1, ty2 = tm(tx1), tm(tx2)
    ((ty1 * torch_tensor(dy1)).sum() + (ty2 * torch_tensor(dy2)).sum()).backward()

    rtol = rtol_for(dtype)
    assert_close(y1, ty1, rtol, "y1")
    assert_close(y2, ty2, rtol, "y2")
    assert_close(dx1, tx1.grad, rtol, "dx1")
    assert_close(dx2, tx2.grad, rtol, "dx2")
    assert_close(m.weight.grad, tm.weight.grad, rtol, "dweight (accumulated)")
    assert_close(m.bias.grad, tm.bias.grad, rtol, "dbias (accumulated)")
    assert_close(m.running_mean, tm.running_mean, rtol, "running_mean")
    assert_close(m.running_var, tm.running_var, rtol, "running_var")
    assert int(m.num_batches_tracked) == 2


def test_eval_with_single_sample_matches_torch():
    """One value per channel is fine in eval mode (running statistics)."""
    rng = np.random.default_rng(7)
    m, tm = make_pair("BatchNorm1d", 4, np.float32, rng)
    m.eval()
    tm.eval()
    x = random_input(rng, (1, 4), np.float32)
    dy = random_upstream(rng, (1, 4), np.float32)
    y = m(x)
    dx = m.backward(dy)
    ty, tdx, tdw, tdb = torch_step(tm, x, dy)
    assert_close(y, ty, 1e-5, "y")
    assert_close(dx, tdx, 1e-5, "dx")
    assert_close(m.weight.grad, tdw, 1e-5, "dweight")


# ---------------------------------------------------------------- hypothesis
SHAPES_2D = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                      st.integers(1, 4)).filter(lambda s: s[0] * s[2] * s[3] >= 2)


@settings(max_examples=20, deadline=None)
@given(shape=SHAPES_2D, seed=st.integers(0, 2**32 - 1), spread=st.floats(0.1, 100.0))
def test_property_training_output_is_normalised(shape, seed, spread):
    """weight=1, bias=0: each channel of the output has mean 0 and biased variance
    var/(var + eps) (i.e. 1 up to eps), var the channel's biased input variance."""
    rng = np.random.default_rng(seed)
    m = nn.BatchNorm2d(shape[1]).double()
    x = rng.standard_normal(shape) * spread + rng.standard_normal() * spread
    y = m(x)
    axes = (0, 2, 3)
    var_in = x.var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=axes), var_in / (var_in + m.eps), rtol=1e-9)


SHAPES_ANY = st.one_of(
    st.tuples(st.integers(2, 6), st.integers(1, 4)),                          # 1d (N, C)
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5)),       # 1d (N, C, L)
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
).filter(lambda s: s[0] * int(np.prod(s[2:])) >= 3)


@settings(max_examples=25, deadline=None)
@given(shape=SHAPES_ANY, seed=st.integers(0, 2**32 - 1), training=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_property_torch_parity(shape, seed, training, dtype):
    """Includes batch 1 with H*W > 1 (or L > 1): legal in training.  At least 3
    values per channel: with 2, x-hat is +-1 and the true dx is O(eps) -- pure
    cancellation, which no relative tolerance can judge."""
    rng = np.random.default_rng(seed)
    cls_name = "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d"
    m, tm = make_pair(cls_name, shape[1], dtype, rng)
    m.train(training)
    tm.train(training)
    x = random_input(rng, shape, dtype)
    dy = random_upstream(rng, shape, dtype)
    y = m(x)
    dx = m.backward(dy)
    ty, tdx, tdw, tdb = torch_step(tm, x, dy)
    # float32 over tiny batches (n = 2) amplifies rounding in dx: loosen a little.
    rtol = rtol_for(dtype)
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tdx, rtol, "dx")
    assert_close(m.weight.grad, tdw, rtol, "dweight")
    assert_close(m.bias.grad, tdb, rtol, "dbias")
    assert_close(m.running_var, tm.running_var, rtol, "running_var")


# ---------------------------------------------------------------- state_dict and repr
CONFIGS = [dict(), dict(affine=False), dict(track_running_stats=False),
           dict(affine=False, track_running_stats=False), dict(bias=False),
           dict(eps=1e-3, momentum=None), dict(momentum=0.01)]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
                         or "default")
@pytest.mark.parametrize("cls_name", ["BatchNorm1d", "BatchNorm2d"])
def test_state_dict_and_repr_match_torch(cls_name, kwargs):
    m = getattr(nn, cls_name)(16, **kwargs)
    tm = getattr(torch.nn, cls_name)(16, **kwargs)
    assert list(m.state_dict()) == list(tm.state_dict())
    for k, v in tm.state_dict().items():
        ours = m.state_dict()[k]
        assert ours.shape == tuple(v.shape), k
        assert_close(ours, v, 0.0, k)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert repr(m) == repr(tm)
    for attr in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        assert (getattr(m, attr) is None) == (getattr(tm, attr) is None), attr
    # round trip through torch's state_dict
    copy_params_to_torch(m, tm)


def test_defaults_dtypes_and_repr_text():
    m = nn.BatchNorm2d(16)
    # torch 2.13 (the reference installed here) prints bias=...; see test above.
    assert repr(m) == ("BatchNorm2d(16, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                       "track_running_stats=True)")
    assert m.weight.dtype == np.float32 and m.running_var.dtype == np.float32
    assert m.num_batches_tracked.dtype == np.int64 and m.num_batches_tracked.shape == ()
    m.double()
    assert m.weight.dtype == np.float64 and m.running_mean.dtype == np.float64
    assert m.num_batches_tracked.dtype == np.int64  # integer buffers keep their dtype
    sd = {k: to_np(v) for k, v in m.state_dict().items()}
    assert sd["num_batches_tracked"].shape == ()


def test_load_state_dict_from_torch():
    rng = np.random.default_rng(8)
    tm = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(rng.standard_normal(3).astype(np.float32)))
    tm(torch.from_numpy(random_input(rng, (4, 3, 2, 2), np.float32)))
    m = nn.BatchNorm2d(3)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    assert int(m.num_batches_tracked) == 1
    m.eval()
    tm.eval()
    x = random_input(rng, (2, 3, 2, 2), np.float32)
    assert_close(m(x), tm(torch_tensor(x)), 1e-5, "y after load")


# ---------------------------------------------------------------- bad inputs
def test_bad_rank():
    with pytest.raises(ValueError,
                       match=r"BatchNorm2d: expected a 4-D input, got shape \(2, 3, 4\)"):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected a 2-D or 3-D input, got shape "
                                         r"\(2, 3, 4, 4\)"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32))


def test_bad_channels():
    with pytest.raises(ValueError,
                       match=r"BatchNorm2d: expected 3 channels.*got shape \(2, 4, 2, 2\)"):
        nn.BatchNorm2d(3)(np.zeros((2, 4, 2, 2), np.float32))
    # also without any parameter or buffer to compare against
    m = nn.BatchNorm1d(3, affine=False, track_running_stats=False)
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected 3 channels.*got shape \(2, 5\)"):
        m(np.zeros((2, 5), np.float32))


def test_bad_dtype():
    with pytest.raises(TypeError, match="BatchNorm2d: expected a floating-point input.*int64"):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 2, 2), np.int64))
    with pytest.raises(TypeError, match="BatchNorm1d: input dtype float64 does not match.*float32"):
        nn.BatchNorm1d(3)(np.zeros((2, 3), np.float64))


@pytest.mark.parametrize("cls_name,shape", [("BatchNorm1d", (1, 3)), ("BatchNorm1d", (1, 3, 1)),
                                            ("BatchNorm2d", (1, 3, 1, 1))])
def test_one_value_per_channel_in_training(cls_name, shape):
    m = getattr(nn, cls_name)(3)
    with pytest.raises(ValueError, match=rf"{cls_name}: Expected more than 1 value per channel "
                                         r"when training, got input size \(1, 3"):
        m(np.ones(shape, np.float32))
    # without running statistics the batch's are used even in eval, as in torch
    m = getattr(nn, cls_name)(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        m(np.ones(shape, np.float32))
    assert int(getattr(nn, cls_name)(3).num_batches_tracked) == 0


def test_backward_errors():
    m = nn.BatchNorm2d(3)
    with pytest.raises(RuntimeError, match="BatchNorm2d.backward: no cache"):
        m.backward(np.zeros((2, 3, 2, 2), np.float32))
    m(np.ones((2, 3, 2, 2), np.float32) + np.arange(2, dtype=np.float32)[:, None, None, None])
    with pytest.raises(ValueError,
                       match=r"BatchNorm2d.backward: expected dy of shape \(2, 3, 2, 2\)"):
        m.backward(np.zeros((2, 3, 2, 1), np.float32))
