"""The Module/Parameter/Sequential contract, checked against torch's behaviour."""
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import minires
from minires import nn
from minires.nn.module import Module, Parameter
from tests.helpers import (assert_close, copy_params_to_torch, random_upstream, rtol_for,
                           torch_tensor)

RTOL64 = rtol_for(np.float64)


@pytest.fixture
def rng():
    return np.random.default_rng(99)


class WithBuffers(Module):
    """A parameter, two buffers (float and integer) and a child."""

    def __init__(self):
        super().__init__()
        self.child = nn.Linear(2, 2)
        self.scale = Parameter(np.ones(2, np.float32))
        self.register_buffer("count", np.zeros((), np.int64))
        self.register_buffer("avg", np.zeros(2, np.float32))


class TorchWithBuffers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.child = torch.nn.Linear(2, 2)
        self.scale = torch.nn.Parameter(torch.ones(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("avg", torch.zeros(2))


def mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def torch_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def twin(m, t, dtype=np.float64):
    """m and t with the same parameters, both in ``dtype``."""
    m.to(dtype=dtype)
    t.to({np.float32: torch.float32, np.float64: torch.float64}[dtype])
    copy_params_to_torch(m, t)
    return m, t


def step(m, t, x, dy):
    """One forward and backward through both; returns (dx, torch's dx)."""
    y = m(x)
    xt = torch_tensor(x, requires_grad=True)
    yt = t(xt)
    assert_close(y, yt, RTOL64, "forward")
    yt.backward(torch_tensor(dy))
    return m.backward(dy), xt.grad


def assert_grads_match(m, t):
    tgrads = dict(t.named_parameters())
    for name, p in m.named_parameters():
        assert_close(p.grad, tgrads[name].grad, RTOL64, f"grad of {name}")


# ------------------------------------------------------------------ names and traversal
def test_parameter_and_buffer_names_match_torch():
    m, t = nn.Sequential(WithBuffers(), nn.Linear(2, 3)), torch.nn.Sequential(
        TorchWithBuffers(), torch.nn.Linear(2, 3))
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [n for n, _ in m.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert m.parameters() == [p for _, p in m.named_parameters()]
    assert all(isinstance(p, Parameter) for p in m.parameters())
    assert [b.dtype for b in m.buffers()] == [np.int64, np.float32]


def test_shared_module_parameters_are_listed_once_like_torch():
    lin, tlin = nn.Linear(3, 3), torch.nn.Linear(3, 3)
    m, t = nn.Sequential(lin, nn.ReLU(), lin), torch.nn.Sequential(tlin, torch.nn.ReLU(), tlin)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert len(m.parameters()) == 2


def test_module_without_super_init_is_a_clear_error():
    class Forgot(Module):
        def __init__(self):
            self.lin = nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"Forgot: call super\(\).__init__\(\) first"):
        Forgot()


def test_assigning_an_array_to_a_parameter_is_rejected():
    with pytest.raises(TypeError, match=r"Linear: cannot assign ndarray to parameter 'weight'"):
        nn.Linear(2, 2).weight = np.zeros((2, 2), np.float32)


# ------------------------------------------------------------------ modes and gradients
def test_zero_grad_sets_to_none_or_zeroes(rng):
    m = mlp()
    x = rng.standard_normal((2, 4)).astype(np.float32)
    m.backward(random_upstream(rng, m(x).shape, np.float32))
    assert all(p.grad is not None and p.grad.any() for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_train_and_eval_propagate_to_every_submodule():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.ReLU()))
    assert m.eval() is m
    assert not any(sub.training for sub in m.modules())
    assert m.train() is m
    assert all(sub.training for sub in m.modules())
    m[1].eval()
    assert m.training and not m[1].training and not m[1][0].training


def test_gradients_accumulate_across_two_backward_calls_like_torch(rng):
    m, t = twin(mlp(), torch_mlp())
    for _ in range(2):
        x = rng.standard_normal((3, 4))
        dy = random_upstream(rng, (3, 3), np.float64)
        dx, dxt = step(m, t, x, dy)
        assert_close(dx, dxt, RTOL64, "dx")
    assert_grads_match(m, t)


def test_shared_relu_called_twice_consumes_caches_in_reverse_order(rng):
    relu, trelu = nn.ReLU(), torch.nn.ReLU()
    m = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 3), relu)
    t = torch.nn.Sequential(torch.nn.Linear(4, 4), trelu, torch.nn.Linear(4, 3), trelu)
    m, t = twin(m, t)
    x = rng.standard_normal((6, 4))
    dx, dxt = step(m, t, x, random_upstream(rng, (6, 3), np.float64))
    assert_close(dx, dxt, RTOL64, "dx")
    assert_grads_match(m, t)
    assert not relu._caches


def test_shared_linear_called_twice_accumulates_both_calls(rng):
    lin, tlin = nn.Linear(3, 3), torch.nn.Linear(3, 3)
    m, t = twin(nn.Sequential(lin, nn.ReLU(), lin),
                torch.nn.Sequential(tlin, torch.nn.ReLU(), tlin))
    dx, dxt = step(m, t, rng.standard_normal((5, 3)), random_upstream(rng, (5, 3), np.float64))
    assert_close(dx, dxt, RTOL64, "dx")
    assert_grads_match(m, t)


def test_backward_without_forward_raises():
    with pytest.raises(RuntimeError, match=r"Linear.backward: no cache from a matching forward"):
        nn.Linear(2, 3).backward(np.zeros((1, 3), np.float32))


def test_backward_twice_after_one_forward_raises(rng):
    m = nn.ReLU()
    x = rng.standard_normal((2, 2))
    m(x)
    m.backward(x)
    with pytest.raises(RuntimeError, match=r"ReLU.backward: no cache"):
        m.backward(x)


def test_dy_of_the_wrong_shape_names_both_shapes(rng):
    m = nn.Linear(4, 2)
    m(rng.standard_normal((3, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"Linear.backward: expected dy of shape \(3, 2\).*"
                                         r"got \(3, 5\)"):
        m.backward(np.zeros((3, 5), np.float32))


def test_no_grad_keeps_no_caches_and_backward_raises(rng):
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Identity())
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with minires.no_grad():
        assert not minires.is_grad_enabled()
        y = m(x)
    assert minires.is_grad_enabled()
    assert all(not sub._caches for sub in m.modules())
    with pytest.raises(RuntimeError, match="no cache"):
        m.backward(np.ones_like(y))


def test_no_grad_works_as_a_decorator(rng):
    m = nn.Linear(2, 2)

    @minires.no_grad()
    def infer(x):
        return m(x)

    infer(np.ones((1, 2), np.float32))
    assert not m._caches and minires.is_grad_enabled()


def test_eval_mode_still_allows_gradients_like_torch(rng):
    m = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.ReLU(), nn.Linear(5, 3))
    t = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Dropout(0.5), torch.nn.ReLU(),
                            torch.nn.Linear(5, 3))
    m, t = twin(m.eval(), t.eval())
    dx, dxt = step(m, t, rng.standard_normal((3, 4)), random_upstream(rng, (3, 3), np.float64))
    assert_close(dx, dxt, RTOL64, "dx")
    assert_grads_match(m, t)


# ------------------------------------------------------------------ state
def test_state_dict_keys_and_order_match_torch():
    assert list(mlp().state_dict()) == list(torch_mlp().state_dict())
    m = nn.Sequential(WithBuffers(), nn.Linear(2, 3))
    t = torch.nn.Sequential(TorchWithBuffers(), torch.nn.Linear(2, 3))
    assert list(m.state_dict()) == list(t.state_dict())


def test_load_state_dict_from_torch_reproduces_its_output(rng):
    t = torch_mlp().double()
    m = mlp().to(dtype=np.float64)
    m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x = rng.standard_normal((2, 4))
    assert_close(m(x), t(torch_tensor(x)), RTOL64, "output after load_state_dict")


def test_load_state_dict_copies_numpy_in_the_modules_dtype():
    m = mlp().to(dtype=np.float64)
    src = OrderedDict((k, np.full(v.shape, 0.25, np.float32)) for k, v in m.state_dict().items())
    m.load_state_dict(src)
    for k, v in m.state_dict().items():
        assert v.dtype == np.float64 and np.all(v == 0.25), k
    src["0.weight"][...] = 7.0  # a copy was taken, not a view of the caller's array
    assert np.all(m[0].weight.data == 0.25)


def test_load_state_dict_converts_buffers_and_keeps_integer_buffers_integer():
    m = WithBuffers().to(dtype=np.float64)
    sd = {k: np.array(v, copy=True) for k, v in m.state_dict().items()}
    sd["count"] = np.array(5, np.int32)
    sd["avg"] = np.array([1.5, 2.5], np.float32)
    m.load_state_dict(sd)
    assert m.count.dtype == np.int64 and int(m.count) == 5
    assert m.avg.dtype == np.float64 and np.array_equal(m.avg, [1.5, 2.5])
    assert m.state_dict()["avg"] is m.avg  # the attribute and the registry agree


def test_load_state_dict_names_every_problem_in_one_error():
    m = mlp()
    sd = OrderedDict((k, np.array(v)) for k, v in m.state_dict().items())
    del sd["0.bias"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["2.weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises(KeyError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    for needle in ["Sequential.load_state_dict", "missing keys: 0.bias",
                   "unexpected keys: extra.weight",
                   "2.weight: expected shape (3, 5), got (5, 3)"]:
        assert needle in msg, msg


def test_load_state_dict_non_strict_reports_but_still_rejects_shapes():
    m = mlp()
    sd = {k: np.array(v) for k, v in m.state_dict().items() if k != "0.bias"}
    sd["extra"] = np.zeros(1)
    result = m.load_state_dict(sd, strict=False)
    assert result == {"missing_keys": ["0.bias"], "unexpected_keys": ["extra"]}
    sd["0.weight"] = np.zeros((1, 1))
    with pytest.raises(KeyError, match=r"0.weight: expected shape \(5, 4\), got \(1, 1\)"):
        m.load_state_dict(sd, strict=False)


def test_to_dtype_and_back_converts_parameters_grads_and_float_buffers(rng):
    m = nn.Sequential(WithBuffers(), nn.Linear(2, 2))
    m[1](np.ones((1, 2), np.float32))
    m[1].backward(np.ones((1, 2), np.float32))  # so there are grads to convert too
    weights = {k: np.array(v) for k, v in m.state_dict().items()}
    assert m.to(dtype=np.float64) is m
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m[1].weight.grad.dtype == np.float64
    assert m[0].avg.dtype == np.float64 and m[0].count.dtype == np.int64
    m.to(np.float32)  # torch's positional form
    assert all(p.dtype == np.float32 for p in m.parameters())
    assert m[0].avg.dtype == np.float32 and m[0].count.dtype == np.int64
    for k, v in m.state_dict().items():
        assert np.array_equal(v, weights[k]), k
    assert m.double()[1].weight.dtype == np.float64 and m.float()[1].weight.dtype == np.float32


# ------------------------------------------------------------------ printing and Sequential
def test_nested_sequential_repr_matches_torch_print():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
                      nn.Sequential(nn.Linear(4, 2, bias=False), nn.Dropout(0.1)),
                      nn.Flatten(), nn.Identity())
    t = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                            torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False),
                                                torch.nn.Dropout(0.1)),
                            torch.nn.Flatten(), torch.nn.Identity())
    assert repr(m) == str(t)


def test_sequential_indexing_len_and_iteration():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    m = nn.Sequential(*layers)
    assert len(m) == 3 and m[0] is layers[0] and m[-1] is layers[2]
    assert list(m) == layers
    assert len(m[1:]) == 2 and m[1:][0] is layers[1]
    m.append(nn.Identity())
    assert len(m) == 4 and list(m.state_dict())[-2:] == ["2.weight", "2.bias"]
    assert [n for n, _ in m.named_children()] == ["0", "1", "2", "3"]


def test_sequential_slice_keeps_torchs_names():
    m, t = mlp(), torch_mlp()
    assert repr(m[1:]) == str(t[1:])
    assert list(m[1:].state_dict()) == list(t[1:].state_dict())


def test_sequential_from_an_ordered_dict_uses_its_names():
    m = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    t = torch.nn.Sequential(OrderedDict([("fc", torch.nn.Linear(2, 3)), ("act", torch.nn.ReLU())]))
    assert list(m.state_dict()) == list(t.state_dict()) and repr(m) == str(t)


# ------------------------------------------------------------------ layering rule
LAYER_DIRS = ["minires/nn", "minires/models"]
DIRECT_IMPORT = re.compile(r"^\s*(import|from)\s+(numpy|cupy)\b", re.MULTILINE)


def test_layer_code_never_imports_numpy_or_cupy():
    root = Path(__file__).resolve().parents[2]
    files = [f for d in LAYER_DIRS if (root / d).is_dir() for f in (root / d).rglob("*.py")]
    assert files, "no layer sources found"
    offenders = [f"{f.relative_to(root)}:{text[:m.start()].count(chr(10)) + 1}: "
                 f"{m.group(0).strip()}"
                 for f in files for text in [f.read_text()]
                 for m in DIRECT_IMPORT.finditer(text)]
    assert not offenders, ("layer code must take xp = get_array_module(x), not import "
                           "numpy/cupy:\n" + "\n".join(offenders))
