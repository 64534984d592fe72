"""minires.testing keeps its promises: each contract check catches a layer
broken in exactly its way (and that layer passes every check before it), a
correct layer passes them all, a bug planted in a real minires layer's
backward is caught, and the strategies draw what they say."""
import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings, strategies as st

import minires
from minires import nn
from minires.nn.functional import pool as F_pool
from minires.testing import (CHECKS, arrays, cases, check_against_torch, check_module,
                             conv_configs, pool_configs, shapes, upstream_gradients)
from minires.testing.strategies import _output_size

FEW = dict(max_examples=4)
# For tests that only need the failure, not hypothesis's shrinking of it
NO_SHRINK = dict(settings=settings(max_examples=4, deadline=None, phases=[Phase.generate]))
VECTORS = arrays(st.tuples(st.integers(2, 4), st.just(3)))  # (batch, 3 features)


class Affine(nn.Module):
    """y = x * w + b over the last axis: a correct layer with parameters."""

    def __init__(self, n=3):
        super().__init__()
        rng = minires.random.generator("init")
        self.weight = nn.Parameter(rng.uniform(0.5, 1.5, n))
        self.bias = nn.Parameter(rng.uniform(-1, 1, n))

    def forward(self, x):
        y = x * self.weight.data + self.bias.data
        self._save(y, x)
        return y

    def grads(self, dy, x):
        return dy * self.weight.data, (dy * x).sum(axis=0), dy.sum(axis=0)

    def backward(self, dy):
        x = self._restore(dy)
        dx, dw, db = self.grads(dy, x)
        self.weight.accumulate(dw)
        self.bias.accumulate(db)
        return dx


# ---------------------------------------------------------- one broken layer per check
class WrongDx(Affine):  # gradients_train: dx off by 0.1%
    def grads(self, dy, x):
        dx, dw, db = super().grads(dy, x)
        return dx * 1.001, dw, db


class WrongInEval(Affine):  # gradients_eval: eval halves y, backward forgets it
    def forward(self, x):
        y = x * self.weight.data + self.bias.data
        if not self.training:
            y = y * 0.5
        self._save(y, x)
        return y


class AssignsGrad(Affine):  # grads_accumulate: p.grad = g instead of +=
    def backward(self, dy):
        x = self._restore(dy)
        dx, dw, db = self.grads(dy, x)
        self.weight.grad, self.bias.grad = dw, db
        return dx


class OldestCacheFirst(Affine):  # called_twice: pops the first call's cache
    def backward(self, dy):
        x = self._caches.pop(0)[-1]
        dx, dw, db = self.grads(dy, x)
        self.weight.accumulate(dw)
        self.bias.accumulate(db)
        return dx


class KeepsInputAlways(Affine):  # no_grad: stores x itself, whatever the grad mode
    def forward(self, x):
        self.last_input = x
        return super().forward(x)


class Float64Buffer(Affine):  # dtype_and_device: a bare zeros() is float64
    def forward(self, x):
        out = np.zeros(x.shape)
        out[...] = x * self.weight.data + self.bias.data
        self._save(out, x)
        return out


class SilentBeforeForward(Affine):  # backward_before_forward: zeros instead of an error
    ran = False

    def forward(self, x):
        self.ran = True
        return super().forward(x)

    def backward(self, dy):
        if not self.ran:
            return dy * 0
        return super().backward(dy)


class UnsavedStatistic(Affine):  # state_dict: a running mean kept outside the buffers
    def __init__(self, n=3):
        super().__init__(n)
        self.running = np.zeros(n)

    def forward(self, x):
        if self.training:
            self.running[...] = 0.9 * self.running + 0.1 * x.mean(axis=0)
            return super().forward(x)
        y = x - self.running
        self._save(y, None)
        return y

    def backward(self, dy):
        if self._caches and self._caches[-1][-1] is None:
            self._restore(dy)
            return dy
        return super().backward(dy)


BROKEN = {
    "gradients_train": WrongDx,
    "gradients_eval": WrongInEval,
    "grads_accumulate": AssignsGrad,
    "called_twice": OldestCacheFirst,
    "no_grad": KeepsInputAlways,
    "dtype_and_device": Float64Buffer,
    "backward_before_forward": SilentBeforeForward,
    "state_dict": UnsavedStatistic,
}


def test_every_check_has_its_broken_layer():
    assert set(BROKEN) == set(CHECKS)


def test_a_correct_layer_passes_every_check():
    check_module(Affine, VECTORS, **FEW)


@pytest.mark.parametrize("check", list(BROKEN))
def test_each_check_catches_its_broken_layer_first(check):
    """The broken layer fails check_module, and the first check to fail is the
    one it breaks: every check before it in the list passes it."""
    with pytest.raises(AssertionError, match=rf"check_module \[{check}\]") as e:
        check_module(BROKEN[check], VECTORS, **FEW)
    notes = "\n".join(getattr(e.value, "__notes__", []))
    # hypothesis's report of the shrunk example (worded so since 6.14x)
    assert "Failing test case" in notes or "Falsifying example" in notes, notes
    assert "case=array(" in notes, "the drawn input is not shown"


def test_the_gradient_failure_carries_gradchecks_report():
    with pytest.raises(AssertionError) as e:
        check_module(WrongDx, VECTORS, checks=["gradients_train"], **FEW)
    text = str(e.value)
    assert "gradcheck failed for WrongDx" in text and "input0" in text and "FAIL" in text


def test_checks_and_skip_select_by_name():
    check_module(WrongDx, VECTORS, skip=["gradients_train", "gradients_eval"], **FEW)
    check_module(WrongDx, VECTORS, checks=["state_dict"], **FEW)
    with pytest.raises(ValueError, match="unknown checks"):
        check_module(Affine, VECTORS, checks=["gradient"])
    with pytest.raises(ValueError, match="cannot skip unknown check"):
        check_module(Affine, VECTORS, skip=["gradient"])


def test_a_strategy_drawing_non_arrays_is_a_clear_error():
    with pytest.raises(TypeError, match="must draw a float array x or a pair"):
        check_module(Affine, st.just([1.0, 2.0, 3.0]), **FEW)


def test_check_module_leaves_the_users_random_streams_alone():
    minires.manual_seed(123)
    before = minires.get_rng_state()
    check_module(lambda: nn.Dropout(0.5), arrays((3, 4)), **FEW)
    assert minires.get_rng_state() == before


# ---------------------------------------------------------- planted bugs in real layers
def _bn_backward_without_mean_term(dy, cache):
    """batch norm's backward minus the mean-of-dy term: the classic bug that an
    all-ones upstream gradient would hide."""
    from minires.nn.functional.norm import batch_norm_backward
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    xp = minires.get_array_module(dy)
    axes = (0,) + tuple(range(2, dy.ndim))
    return dx + dy.mean(axis=axes, keepdims=True) * xp.ones_like(dx) * 0.5, dgamma, dbeta


def test_a_bug_planted_in_batchnorms_backward_is_caught(monkeypatch):
    import minires.nn.norm as norm_module
    check_module(lambda: nn.BatchNorm2d(2), arrays((3, 2, 2, 2)), **FEW)  # sound first
    monkeypatch.setattr(norm_module, "batch_norm_backward", _bn_backward_without_mean_term)
    with pytest.raises(AssertionError, match=r"\[gradients_train\].*BatchNorm2d"):
        check_module(lambda: nn.BatchNorm2d(2), arrays((3, 2, 2, 2)), **NO_SHRINK)


def test_a_bug_planted_in_maxpools_backward_is_caught(monkeypatch):
    import minires.nn.pooling as pooling

    def to_the_wrong_window(dy, cache):  # every gradient lands one row lower
        dx = F_pool.maxpool2d_backward(dy, cache)
        return np.roll(dx, 1, axis=2)

    monkeypatch.setattr(pooling, "maxpool2d_backward", to_the_wrong_window)
    with pytest.raises(AssertionError, match=r"\[gradients_train\]"):
        check_module(nn.MaxPool2d, cases(pool_configs("max", input_size=(4, 4))), **NO_SHRINK)


# ---------------------------------------------------------- check_against_torch
def test_check_against_torch_passes_real_layers_and_catches_a_wrong_one():
    check_against_torch(nn.Conv2d, torch.nn.Conv2d, cases(conv_configs()), **FEW)
    check_against_torch(lambda: nn.BatchNorm2d(2), lambda: torch.nn.BatchNorm2d(2),
                        arrays((3, 2, 2, 2)), **FEW)
    check_against_torch(lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2),
                        arrays(shapes(min_dims=2)), **FEW)
    # eps differs: the forward agrees to ~1e-3 only, far outside float64's 1e-10
    with pytest.raises(AssertionError, match="BatchNorm2d vs torch in float32: output"):
        check_against_torch(lambda: nn.BatchNorm2d(2, eps=1e-1), lambda: torch.nn.BatchNorm2d(2),
                            arrays((3, 2, 2, 2)), **NO_SHRINK)


def test_check_against_torch_compares_running_statistics():
    class NoRunningUpdate(nn.BatchNorm2d):  # forgets to update running stats in training
        def forward(self, x):
            saved = (self.running_mean.copy(), self.running_var.copy())
            y = super().forward(x)
            self.running_mean[...], self.running_var[...] = saved
            return y
    with pytest.raises(AssertionError, match="buffer 'running_mean'"):
        check_against_torch(lambda: NoRunningUpdate(2), lambda: torch.nn.BatchNorm2d(2),
                            arrays((3, 2, 2, 2)), **NO_SHRINK)


class _DxOff(nn.Linear):
    """dx off by a relative 1e-4: a gradient bug the forward cannot show."""

    def backward(self, dy):
        return super().backward(dy) * (1 + 1e-4)


class _WeightGradOff(nn.Linear):
    """The weight gradient off by a relative 1e-4; dx and the bias are right."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad *= 1 + 1e-4
        return dx


@pytest.mark.parametrize("broken, tensor", [(_DxOff, "dx"), (_WeightGradOff, "grad of 'weight'")])
def test_check_against_torch_catches_a_wrong_gradient_and_names_it(broken, tensor):
    check_against_torch(lambda: nn.Linear(3, 2), lambda: torch.nn.Linear(3, 2), VECTORS, **FEW)
    with pytest.raises(AssertionError, match=f" vs torch in float32: {tensor}:"):
        check_against_torch(lambda: broken(3, 2), lambda: torch.nn.Linear(3, 2), VECTORS,
                            **NO_SHRINK)


def test_check_against_torch_moves_the_module_to_the_input_before_running_it():
    """A CuPy input needs the module on the GPU before its first forward (the
    shape probe).  Recorded here on the CPU: a move with a device must come
    before the first forward."""
    events = []

    class Recording(nn.LeakyReLU):
        def to(self, device=None, dtype=None):
            events.append(("to", device))
            return super().to(device=device, dtype=dtype)

        def forward(self, x):
            events.append(("forward", None))
            return super().forward(x)

    check_against_torch(lambda: Recording(0.2), lambda: torch.nn.LeakyReLU(0.2), VECTORS,
                        max_examples=1)
    first_forward = events.index(("forward", None))
    assert any(kind == "to" and device is not None for kind, device in events[:first_forward])


def test_the_float32_bound_is_the_one_the_docs_state():
    """docs/testing.md: off by 2e-5 x (max|value| + |value|) + 1e-5 is allowed,
    so 4e-5 x max + 1e-5 at the largest element, and no more."""
    import os
    from minires.testing.torch_parity import ATOL32, RTOL, assert_close
    rtol = RTOL[np.dtype(np.float32)]
    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "docs", "testing.md")).read()
    assert (rtol, ATOL32) == (2e-5, 1e-5)  # the values the docs write out
    assert "`2e-5 x (max|value| + |value|) + 1e-5`" in " ".join(doc.split())
    assert "`4e-5 x max|value| + 1e-5`" in " ".join(doc.split())
    ref = np.array([1.0, -0.5, 0.25])
    at_bound = 2 * rtol * 1.0 + ATOL32  # for the largest element
    assert_close(ref + [0.99 * at_bound, 0, 0], ref, rtol, "within", ATOL32)
    with pytest.raises(AssertionError, match="1/3 elements differ"):
        assert_close(ref + [1.01 * at_bound, 0, 0], ref, rtol, "beyond", ATOL32)


# ---------------------------------------------------------- strategies
@settings(max_examples=30, deadline=None)
@given(x=arrays(shapes(max_dims=3)))
def test_arrays_keep_their_margin_from_zero_and_from_each_other(x):
    v = np.sort(x.ravel())
    gap = 2.0 / (2 * (2 * x.size + 4))
    assert np.all(np.abs(v) >= gap / 2)
    assert v.size < 2 or np.diff(v).min() >= gap * 1.999
    assert x.dtype == np.float64


@settings(max_examples=20, deadline=None)
@given(x=arrays((2, 3), np.float32, kinks=(0.0, 1.0, -1.0)))
def test_arrays_avoid_every_named_kink_and_keep_the_dtype(x):
    assert x.dtype == np.float32
    gap = 2.0 / (2 * (2 * x.size + 4))  # the default margin for 6 values
    for k in (0.0, 1.0, -1.0):  # half the margin from each kink, as documented
        assert np.abs(x.astype(np.float64) - k).min() >= gap / 2 * (1 - 1e-6)


@settings(max_examples=30, deadline=None)
@given(g=upstream_gradients((3, 4)), x=arrays((3, 4)))
def test_upstream_gradients_are_not_uniform_nor_in_step_with_the_input(g, x):
    assert g.shape == (3, 4) and np.ptp(g) > 0
    # not an affine function of x (which would make batch norm's dx vanish)
    coef = np.linalg.lstsq(np.c_[np.ones(x.size), x.ravel()], g.ravel(), rcond=None)[0]
    assert np.abs(g.ravel() - np.c_[np.ones(x.size), x.ravel()] @ coef).max() > 1e-3


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs())
def test_conv_configs_are_accepted_by_torch(cfg):
    kwargs, shape = cfg
    with torch.no_grad():
        y = torch.nn.Conv2d(**kwargs)(torch.zeros(shape))
    assert y.shape[0] == shape[0] and min(y.shape[2:]) >= 1


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(input_size=(5, 4)))
def test_conv_configs_respect_a_given_input_size(cfg):
    assert cfg[1][2:] == (5, 4)


@settings(max_examples=40, deadline=None)
@given(cfg=st.sampled_from(["max", "avg"]).flatmap(lambda k: pool_configs(k).map(
    lambda c: (k, c))))
def test_pool_configs_are_accepted_by_torch_with_finite_output(cfg):
    kind, (kwargs, shape) = cfg
    layer = (torch.nn.MaxPool2d if kind == "max" else torch.nn.AvgPool2d)(**kwargs)
    y = layer(torch.randn(shape))
    assert torch.isfinite(y).all()
    for i in range(2):
        assert y.shape[2 + i] == _output_size(shape[2 + i], kwargs["kernel_size"][i],
                                              kwargs["stride"][i], kwargs["padding"][i],
                                              kwargs.get("dilation", (1, 1))[i],
                                              kwargs["ceil_mode"])


def test_pool_configs_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be 'max' or 'avg'"):
        pool_configs("min")


def test_importing_the_kit_without_hypothesis_is_a_clear_error(monkeypatch):
    import builtins
    import importlib
    import sys
    import minires.testing as kit
    real_import = builtins.__import__

    def no_hypothesis(name, *args, **kwargs):
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.startswith("minires.testing.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_hypothesis)
    importlib.reload(kit)  # importing the package itself needs nothing
    with pytest.raises(ImportError, match=r"needs hypothesis.*minires\[testing\]"):
        kit.check_module


def test_randomize_batchnorm_moves_the_kink_off_an_evenly_spaced_batch():
    """Three collinear rows: after Linear each BN channel sees an evenly spaced
    batch, normalises its middle value to exactly 0, and at init (bias 0) the
    ReLU sits on its kink there -- the case hypothesis found in the suite."""
    x = np.array([[0.5, 1.5, -0.5, 2.5], [-1.5, 3.5, -2.5, 4.5], [-3.5, 5.5, -4.5, 6.5]]) / 14
    collinear = st.just(x)
    with pytest.raises(AssertionError, match=r"\[gradients_train\]"):
        check_module(lambda: nn.ResBlockMLP(4), collinear, max_examples=1)
    from minires.testing import randomize_batchnorm
    check_module(lambda: randomize_batchnorm(nn.ResBlockMLP(4)), collinear, max_examples=1)
    bn = randomize_batchnorm(nn.BatchNorm1d(5))
    assert np.all((bn.weight.data >= 0.5) & (bn.weight.data < 1.5)) and np.ptp(bn.bias.data) > 0
    assert bn.weight.data.dtype == np.float32


@settings(max_examples=20, deadline=None)
@given(x=arrays((4,), elements=st.floats(-1, 1), margin=0.05))
def test_arrays_with_your_own_elements_keep_the_margin(x):
    v = np.sort(x)
    assert np.diff(v).min() >= 0.05 and np.abs(v).min() >= 0.025


@settings(max_examples=20, deadline=None)
@given(s=shapes(min_dims=2, max_dims=3, min_side=2, max_side=4))
def test_shapes_stay_in_their_bounds(s):
    assert 2 <= len(s) <= 3 and all(2 <= n <= 4 for n in s)


@settings(max_examples=20, deadline=None)
@given(x=arrays((3, 3), margin=0.3))
def test_a_wider_margin_widens_the_grid(x):
    assert np.diff(np.sort(x.ravel())).min() >= 0.3 - 1e-12 and np.abs(x).min() >= 0.15 - 1e-12


def test_a_margin_too_wide_for_the_range_is_a_clear_error():
    with pytest.raises(ValueError, match="100 values cannot lie 0.5 apart"):
        arrays((100,), margin=0.5)


def test_each_layers_failures_are_saved_under_their_own_key():
    """hypothesis saves a failing example to replay it next time; two layers
    checked with the same strategy must not share (and swap) them."""
    from hypothesis.database import InMemoryExampleDatabase
    db = InMemoryExampleDatabase()
    kept = dict(settings=settings(max_examples=4, deadline=None, database=db,
                                  phases=[Phase.reuse, Phase.generate, Phase.shrink]))
    for broken in (WrongDx, AssignsGrad):
        with pytest.raises(AssertionError):
            check_module(broken, VECTORS, **kept)
    assert len([k for k in db.data if not k.endswith(b".secondary")
                and not k.endswith(b".pareto")]) >= 2


def test_wrapped_factories_and_shapes_get_their_own_database_keys():
    """Wrappers such as kit_cases.trained() share one source for every factory
    they wrap, and every arrays() strategy used to print as "draw_array()":
    the key must still tell the layers and the shapes apart."""
    from minires.testing.runner import database_key

    def wrap(factory):  # one source for every wrapped factory, like trained()
        return lambda: factory()

    a = wrap(lambda: nn.LeakyReLU(0.1))
    b = wrap(lambda: nn.LeakyReLU(0.3))
    c, d = wrap(lambda: nn.LeakyReLU(0.1)), wrap(lambda: nn.LeakyReLU(0.2))  # one line
    keys = {database_key("check_module", f, VECTORS) for f in (a, b, c, d)}
    assert len(keys) == 4
    assert (database_key("check_module", a, arrays((2, 3)))
            != database_key("check_module", a, arrays((3, 3))))
    assert (database_key("check_module", a, VECTORS)
            != database_key("check_against_torch", a, VECTORS))
