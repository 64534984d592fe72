"""Reference mode: ``with minires.nn.functional.reference():`` runs every
functional op's plain version (reference_ops.py).

Three kinds of check: a whole ResNet-20 step agrees both ways (float64, 1e-10)
and nothing fast ran inside the mode (the fast paths patched to raise, and a
line trace of the fast modules); each reference op against torch; and the
mode's own scope (nested, exceptions, other threads)."""
import inspect
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minires.nn as nn
from minires import parallel
from minires.models import resnet20
from minires.nn.functional import (activation, add, conv, conv_im2col, conv_phases, conv_shifted,
                                   linear, loss, norm, pool, reference, reference_ops, workspace)
from minires.nn.functional.reference_mode import on
from tests.helpers import assert_close, random_upstream

FAST_MODULES = (activation, add, conv, conv_im2col, conv_phases, conv_shifted, linear, loss, norm,
                pool, workspace, parallel)


def _step(model, x, target, dy_seed=1):
    """Forward, loss (with label smoothing), backward; every number a test compares."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.zero_grad()
    logits = model(x)
    value = criterion(logits, target)
    dlogits = criterion.backward(2.5)  # a non-unit upstream gradient of the loss
    dx = model.backward(dlogits)
    out = {"logits": logits, "loss": value, "dlogits": dlogits, "dx": dx}
    out.update({f"grad {k}": p.grad.copy() for k, p in model.named_parameters()})
    out.update({f"buffer {k}": b.copy() for k, b in model.named_buffers()})
    return out


def _resnet20_both_ways(train=True):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32))
    target = rng.integers(0, 10, 4)
    fast_model, ref_model = resnet20().double(), resnet20().double()
    ref_model.load_state_dict(fast_model.state_dict())
    for m in (fast_model, ref_model):
        m.train(train)
    fast = _step(fast_model, x, target)
    with reference():
        ref = _step(ref_model, x, target)
    return fast, ref


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_resnet20_agrees_with_reference_mode(train):
    fast, ref = _resnet20_both_ways(train)
    assert fast.keys() == ref.keys()
    for key in fast:
        assert_close(ref[key], fast[key], 1e-10, key)
    # the running statistics moved (train), so the comparison of buffers says something
    assert not train or any(np.any(fast[k] != 0) for k in fast if k.endswith("running_mean"))


def _raise(name):
    def fast_path_ran(*args, **kwargs):
        raise AssertionError(f"{name} ran inside reference mode")
    return fast_path_ran


def test_nothing_fast_runs_inside_reference_mode(monkeypatch):
    """The fast machinery patched to raise: the chunked pool, the scratch
    buffers, each convolution path, batch norm's statistics and fused affine
    pass, the pools' padded buffer."""
    for module, name in [(parallel, "map_chunks"), (parallel, "batch_chunks"),
                         (workspace, "borrow"), (conv, "pointwise_forward"),
                         (conv, "pointwise_backward"), (conv_shifted, "shifted_slices_forward"),
                         (conv_shifted, "shifted_slices_backward"), (conv_phases, "phases_forward"),
                         (conv_phases, "phases_backward"), (conv, "im2col_forward"),
                         (conv, "im2col_backward"), (norm, "moments"), (norm, "_affine"),
                         (pool, "_padded")]:
        monkeypatch.setattr(module, name, _raise(f"{module.__name__}.{name}"))
    rng = np.random.default_rng(2)
    model = resnet20().double()
    with reference():
        out = _step(model, rng.standard_normal((2, 3, 32, 32)), rng.integers(0, 10, 2))
        model.eval()
        model(rng.standard_normal((2, 3, 32, 32)))
    assert np.isfinite(out["loss"])
    with pytest.raises(AssertionError, match="ran inside reference mode"):  # the patches bite
        _step(model.train(), rng.standard_normal((2, 3, 32, 32)), rng.integers(0, 10, 2))


def _dispatch_lines(module):
    """Line numbers of a fast module that reference mode may run: each op's
    check (`if reference_mode.on():` / `if reference_ops.owns(...)`) and the
    hand-over statement after it, continuation lines included."""
    lines = inspect.getsource(module).splitlines()
    allowed = set()  # 1-based line numbers
    for i, text in enumerate(lines):
        if "reference_mode.on()" in text or "reference_ops.owns(" in text:
            j = i + 1
            allowed.update({i + 1, j + 1})
            while lines[j].count("(") > lines[j].count(")") or lines[j].rstrip().endswith(","):
                j += 1
                allowed.add(j + 1)
    return allowed


def test_line_trace_shows_only_the_hand_over_in_fast_modules():
    """Every line executed in the fast modules inside reference mode is an op's
    check and its hand-over to reference_ops: no fast body ran at all."""
    files = {inspect.getsourcefile(m): m for m in FAST_MODULES}
    allowed = {f: _dispatch_lines(m) for f, m in files.items()}
    executed = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename not in files:
            return None

        def lines(frame, event, arg):
            if event == "line":
                executed.append((frame.f_code.co_filename, frame.f_lineno))
            return lines
        return lines

    rng = np.random.default_rng(3)
    model = resnet20().double()
    x, target = rng.standard_normal((2, 3, 32, 32)), rng.integers(0, 10, 2)
    with reference():
        sys.settrace(tracer)
        try:
            _step(model, x, target)
        finally:
            sys.settrace(None)
    assert executed, "the trace saw no line of the fast modules (the dispatch lines run)"
    stray = sorted({(f, n) for f, n in executed if n not in allowed[f]})
    assert not stray, f"fast code ran inside reference mode: {stray[:5]}"


def test_the_mode_is_scoped():
    assert not on()
    with reference():
        assert on()
        with reference():
            assert on()
        assert on()
        seen = []
        worker = threading.Thread(target=lambda: seen.append(on()))
        worker.start()
        worker.join()
        assert seen == [False]  # a context variable: other threads keep the fast ops
    assert not on()
    with pytest.raises(RuntimeError):
        with reference():
            raise RuntimeError("boom")
    assert not on()


def test_a_cache_from_reference_mode_is_undone_by_the_reference_backward():
    """Forward inside the mode, backward after it: the cache says which backward."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    with reference():
        y, cache = conv.conv2d_forward(x, w, None, 1, 1)
    assert reference_ops.owns(cache)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv.conv2d_backward(dy, cache)
    tx, tw = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(w).requires_grad_(True)
    TF.conv2d(tx, tw, padding=1).backward(torch.from_numpy(dy))
    assert_close(dx, tx.grad, 1e-10, "dx")
    assert_close(dw, tw.grad, 1e-10, "dW")


# ---------------------------------------------------------------- each reference op against torch

def _torch_grads(fn, arrays, dy):
    ts = [torch.from_numpy(a).requires_grad_(True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.from_numpy(np.asarray(dy)))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("affine, train, relu", [(True, True, False), (True, True, True),
                                                 (False, True, False), (True, False, True)],
                         ids=["train", "train+relu", "no-affine", "eval+relu"])
def test_reference_batch_norm_matches_torch(affine, train, relu):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 7)) * 3 + 1
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    r_mean, r_var = rng.standard_normal(3), rng.random(3) + 0.5
    stats = (None, None) if train else (r_mean, r_var)
    y, cache = reference_ops.batch_norm_forward(x, gamma if affine else None,
                                                beta if affine else None, 1e-5, *stats, relu=relu)
    dy = random_upstream(rng, y.shape, np.float64)
    dx, dgamma, dbeta = reference_ops.batch_norm_backward(dy, cache)

    def f(tx, tg=None, tb=None):
        out = TF.batch_norm(tx, None if train else torch.from_numpy(r_mean),
                            None if train else torch.from_numpy(r_var), tg, tb,
                            training=train, eps=1e-5)
        return TF.relu(out) if relu else out
    y_t, (dx_t, *affine_t) = _torch_grads(f, [x, gamma, beta] if affine else [x], dy)
    assert_close(y, y_t, 1e-10, "y")
    assert_close(dx, dx_t, 1e-10, "dx")
    if affine:
        assert_close(dgamma, affine_t[0], 1e-10, "dgamma")
        assert_close(dbeta, affine_t[1], 1e-10, "dbeta")
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=2, padding=1), dict(kernel_size=(3, 2), stride=(1, 2))],
    ids=["resnet-stem", "ceil", "dilated", "rectangular"])
def test_reference_max_pool_matches_torch(kwargs):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 7, 8))
    x[0, 0, :2, :2] = 1.5  # a tie: the first offset wins in both
    k, s = kwargs["kernel_size"], kwargs["stride"]
    y, cache = reference_ops.maxpool2d_forward(x, k, s, kwargs.get("padding", 0),
                                               kwargs.get("dilation", 1), kwargs.get("ceil_mode", False))
    dy = random_upstream(rng, y.shape, np.float64)
    y_t, (dx_t,) = _torch_grads(lambda t: TF.max_pool2d(t, **kwargs), [x], dy)
    assert_close(y, y_t, 1e-12, "y")
    assert_close(reference_ops.maxpool2d_backward(dy, cache), dx_t, 1e-12, "dx")


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=2, stride=1, divisor_override=3)],
    ids=["padded", "ceil", "ceil-no-pad-count", "divisor-override"])
def test_reference_avg_pool_matches_torch(kwargs):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 8, 7))
    full = {**dict(padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None), **kwargs}
    y, cache = reference_ops.avgpool2d_forward(x, full.pop("kernel_size"), full.pop("stride"),
                                               full["padding"], full["ceil_mode"],
                                               full["count_include_pad"], full["divisor_override"])
    dy = random_upstream(rng, y.shape, np.float64)
    y_t, (dx_t,) = _torch_grads(lambda t: TF.avg_pool2d(t, **kwargs), [x], dy)
    assert_close(y, y_t, 1e-12, "y")
    assert_close(reference_ops.avgpool2d_backward(dy, cache), dx_t, 1e-12, "dx")


@pytest.mark.parametrize("size", [1, (3, 2), (5, 5)], ids=["global", "overlapping-bins", "bigger"])
def test_reference_adaptive_avg_pool_matches_torch(size):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 7, 5))
    y, cache = reference_ops.adaptive_avgpool2d_forward(x, size)
    dy = random_upstream(rng, y.shape, np.float64)
    y_t, (dx_t,) = _torch_grads(lambda t: TF.adaptive_avg_pool2d(t, size), [x], dy)
    assert_close(y, y_t, 1e-12, "y")
    assert_close(reference_ops.adaptive_avgpool2d_backward(dy, cache), dx_t, 1e-12, "dx")


@pytest.mark.parametrize("smoothing, reduction, ignored", [(0.0, "mean", False), (0.2, "mean", True),
                                                           (0.1, "sum", False)])
def test_reference_cross_entropy_matches_torch(smoothing, reduction, ignored):
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((6, 5)) * 4
    target = rng.integers(0, 5, 6)
    ignore = np.array([False, True, False, False, True, False]) if ignored else None
    value, cache = reference_ops.cross_entropy_forward(logits, target, smoothing, reduction, ignore)
    dlogits = reference_ops.cross_entropy_backward(1.7, cache)
    t_target = torch.from_numpy(np.where(ignore, -100, target) if ignored else target)
    value_t, (dlogits_t,) = _torch_grads(
        lambda t: TF.cross_entropy(t, t_target, label_smoothing=smoothing, reduction=reduction),
        [logits], 1.7)
    assert_close(value, value_t, 1e-12, "loss")
    assert_close(dlogits, dlogits_t, 1e-12, "dlogits")


def test_reference_relu_and_linear_match_torch():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 6))
    x[0, :2] = 0.0  # the gradient at exactly 0 is 0, as in torch
    w, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
    dy = random_upstream(rng, (4, 3), np.float64)
    h, relu_cache = reference_ops.relu_forward(x)
    y, lin_cache = reference_ops.linear_forward(h, w, b)
    dh, dw, db = reference_ops.linear_backward(dy, lin_cache)
    dx = reference_ops.relu_backward(dh, relu_cache)
    y_t, (dx_t, dw_t, db_t) = _torch_grads(lambda tx, tw, tb: TF.linear(TF.relu(tx), tw, tb),
                                           [x, w, b], dy)
    for got, want, what in [(y, y_t, "y"), (dx, dx_t, "dx"), (dw, dw_t, "dW"), (db, db_t, "db")]:
        assert_close(got, want, 1e-12, what)
