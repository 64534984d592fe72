"""gradcheck(..., method="complex"): complex-step derivatives, exact to
rounding.  Checked against derivatives written out in the tests, on
minires's own functional ops (which accept complex input), and on bugs too
small for central differences to see."""
import warnings

import numpy as np
import pytest

import minires
from minires import gradcheck, nn
from minires.nn.functional import conv, linear, norm
from minires.testing import arrays, check_module

TIGHT = dict(rtol=1e-11, atol=1e-12)  # far below what central differences reach


def sin_square(bug=0.0):
    """f(x) = sin(x) * x^2 with its derivative written out here (not by
    minires), optionally wrong by a relative ``bug``."""
    saved = {}

    def forward(x):
        saved["x"] = x
        return np.sin(x) * x * x

    def backward(dy):
        x = saved["x"]
        return dy * (np.cos(x) * x * x + 2 * x * np.sin(x)) * (1 + bug)
    return forward, backward


def test_exact_to_rounding_where_central_differences_are_not():
    x = np.random.default_rng(0).uniform(-3, 3, (4, 5))
    errors = gradcheck(sin_square(), x, method="complex", **TIGHT)
    assert errors["input0"] < 1e-13
    # the same tolerance defeats central differences (their error is ~1e-9)
    assert gradcheck(sin_square(), x, raise_exception=False, **TIGHT) is False


def test_catches_a_derivative_wrong_in_the_eighth_digit():
    x = np.random.default_rng(1).uniform(-3, 3, (3, 3))
    with pytest.raises(AssertionError, match="complex step h=1e-20"):
        gradcheck(sin_square(bug=1e-8), x, method="complex", **TIGHT)
    # central differences with their usual tolerance let it through
    assert gradcheck(sin_square(bug=1e-8), x)


def test_directional_path_for_large_tensors():
    x = np.random.default_rng(2).uniform(-3, 3, (40, 30))
    errors = gradcheck(sin_square(), x, method="complex", max_elements=100, **TIGHT)
    assert errors["input0"] < 1e-12
    with pytest.raises(AssertionError, match="random direction"):
        gradcheck(sin_square(bug=1e-7), x, method="complex", max_elements=100, **TIGHT)


def _pair(fwd, bwd):
    cache = {}

    def forward(*args):
        y, cache["c"] = fwd(*args)
        return y

    return forward, lambda dy: bwd(dy, cache["c"])


@pytest.mark.parametrize("op", ["linear", "conv", "batch_norm"])
def test_minires_functional_ops_pass_the_complex_step(op):
    rng = np.random.default_rng(3)
    if op == "linear":
        pair = _pair(linear.linear_forward, linear.linear_backward)
        args = (rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5))
    elif op == "conv":
        pair = _pair(lambda x, w: conv.conv2d_forward(x, w, None, 2, 1, 1, 1),
                     lambda dy, c: conv.conv2d_backward(dy, c)[:2])
        args = (rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)))
    else:
        pair = _pair(lambda x, g, b: norm.batch_norm_forward(x, g, b)[:2],
                     norm.batch_norm_backward)
        args = (rng.standard_normal((4, 3, 5)), rng.standard_normal(3), rng.standard_normal(3))
    errors = gradcheck(pair, *args, method="complex", **TIGHT)
    assert max(errors.values()) < 1e-12


class ComplexAffine(nn.Module):
    """A user module whose forward accepts complex numbers (no dtype check)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.array([0.5, -1.5, 2.0]))

    def forward(self, x):
        y = np.tanh(x * self.weight.data)
        self._save(y, (x, y))
        return y

    def backward(self, dy):
        x, y = self._restore(dy)
        dz = dy * (1 - y * y)
        self.weight.accumulate((dz * x).sum(axis=0))
        return dz * self.weight.data


def test_a_module_and_its_parameters_through_the_complex_step():
    x = np.random.default_rng(4).standard_normal((4, 3))
    errors = gradcheck(ComplexAffine(), x, method="complex", **TIGHT)
    assert set(errors) == {"input0", "weight"} and max(errors.values()) < 1e-12


def test_check_module_takes_the_complex_method():
    check_module(ComplexAffine, arrays((3, 3)), max_examples=3,
                 gradcheck_kwargs=dict(method="complex", **TIGHT))


def test_a_layer_that_refuses_complex_input_is_told_to_use_central():
    with pytest.raises(AssertionError, match="does not accept complex input.*method='central'"):
        gradcheck(nn.Linear(3, 2), np.ones((2, 3)), method="complex")


def test_a_forward_that_drops_the_imaginary_part_is_named():
    def forward(x):
        out = np.zeros(x.shape)  # a fixed real buffer: the imaginary part is lost
        with warnings.catch_warnings():  # numpy's ComplexWarning, on the complex calls
            warnings.simplefilter("ignore")
            out[...] = x * 2
        return out
    with pytest.raises(AssertionError, match="turned complex input into float64"):
        gradcheck((forward, lambda dy: dy * 2), np.ones(3), method="complex")


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be 'central' or 'complex'"):
        gradcheck(nn.ReLU(), np.ones(3), method="forward")


def test_the_users_random_state_and_module_are_untouched():
    m = ComplexAffine()
    w = m.weight.data.copy()
    minires.manual_seed(5)
    state = minires.get_rng_state()
    gradcheck(m, np.ones((2, 3)), method="complex")
    assert minires.get_rng_state() == state
    assert m.weight.data.dtype == np.float64 and np.array_equal(m.weight.data, w)
