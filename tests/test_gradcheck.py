"""minires.gradcheck: passes correct layers, and rejects planted backward bugs."""
import re

import numpy as np
import pytest

import minires
from minires import nn
from minires.gradcheck import gradcheck
from minires.nn.module import Module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def away_from_zero(rng, shape, margin=0.1):
    """Values with |v| >= margin: central differences never straddle ReLU's kink."""
    v = rng.standard_normal(shape)
    return (np.sign(v) * (np.abs(v) + margin)).astype(np.float32)


# ------------------------------------------------------------------ planted bugs
class TransposedWeightGradLinear(nn.Linear):
    """Returns dW transposed: the shape fits only because the layer is square."""

    def backward(self, dy):
        before = None if self.weight.grad is None else self.weight.grad.copy()
        dx = super().backward(dy)
        dw = self.weight.grad if before is None else self.weight.grad - before
        self.weight.grad = (0 if before is None else before) + dw.T
        return dx


class ScaledInputGradLinear(nn.Linear):
    """dx off by 1%."""

    def backward(self, dy):
        return super().backward(dy) * 1.01


class ScaledWeightGradLinear(nn.Linear):
    """dW off by 1% (for the random-direction check on a large weight)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad *= 1.01
        return dx


class ReluResidual(Module):
    """y = relu(lin(x)) + x; with drop_skip, backward forgets the shortcut's dy."""

    def __init__(self, n, drop_skip=False):
        super().__init__()
        self.lin, self.relu, self.drop_skip = nn.Linear(n, n), nn.ReLU(), drop_skip

    def forward(self, x):
        y = self.relu(self.lin(x)) + x
        self._save(y, None)
        return y

    def backward(self, dy):
        self._restore(dy)
        d_residual = self.lin.backward(self.relu.backward(dy))
        return d_residual if self.drop_skip else d_residual + dy


def batchnorm_pair(omit_mean_term=False, eps=1e-5):
    """Training-mode batch norm over axis 0 as a (forward, backward) pair."""
    cache = {}

    def forward(x, gamma, beta):
        mu, var = x.mean(axis=0), x.var(axis=0)
        std = np.sqrt(var + eps)
        xhat = (x - mu) / std
        cache.update(xhat=xhat, std=std, gamma=gamma)
        return gamma * xhat + beta

    def backward(dy):
        xhat, std, gamma = cache["xhat"], cache["std"], cache["gamma"]
        dxhat = dy * gamma
        mean_term = 0.0 if omit_mean_term else dxhat.mean(axis=0)
        dx = (dxhat - mean_term - xhat * (dxhat * xhat).mean(axis=0)) / std
        return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)

    return forward, backward


# ------------------------------------------------------------------ correct layers pass
def test_linear_passes_and_names_every_tensor(rng):
    result = gradcheck(nn.Linear(4, 3), rng.standard_normal((5, 4)).astype(np.float32))
    assert set(result) == {"input0", "weight", "bias"}
    assert all(err < 1e-6 for err in result.values())


def test_relu_passes_away_from_zero(rng):
    result = gradcheck(nn.ReLU(), away_from_zero(rng, (4, 6)))
    assert set(result) == {"input0"}


def test_sequential_passes_with_dotted_parameter_names(rng):
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Identity(), nn.Linear(5, 3))
    result = gradcheck(m, rng.standard_normal((4, 3, 2, 2)))
    assert set(result) == {"input0", "1.weight", "1.bias", "4.weight", "4.bias"}


def test_function_pair_passes(rng):
    x = rng.standard_normal((6, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    result = gradcheck(batchnorm_pair(), x, gamma, beta)
    assert set(result) == {"input0", "input1", "input2"}


def test_cross_entropy_loss_passes_with_integer_targets(rng):
    loss = nn.CrossEntropyLoss()
    logits = rng.standard_normal((5, 4)).astype(np.float32)
    target = rng.integers(0, 4, size=5)
    result = gradcheck(loss, logits, target)
    assert set(result) == {"input0"}  # the integer target is passed through, not differentiated


def test_zero_dim_output_with_argument_free_backward_is_scaled(rng):
    """A loss whose backward() takes no dy: gradcheck scales by its scalar g."""
    class SumOfSquares(Module):
        def forward(self, x):
            self._save(x.sum(), x)  # a 0-d output
            return (x * x).sum()

        def backward(self, dy=None):
            x = self._restore(np.asarray(0.0))
            return 2 * x if dy is None else 2 * x * dy

    assert set(gradcheck(SumOfSquares(), rng.standard_normal((3, 2)))) == {"input0"}


def test_integer_inputs_pass_through_untouched(rng):
    index = np.array([2, 0, 1])
    seen = {}

    def forward(x, idx):
        seen["dtype"] = idx.dtype
        return x[np.arange(3), idx] * 2.0

    def backward(dy):
        dx = np.zeros((3, 4))
        dx[np.arange(3), index] = 2.0 * dy
        return dx

    assert set(gradcheck((forward, backward), rng.standard_normal((3, 4)), index)) == {"input0"}
    assert seen["dtype"] == index.dtype


def test_checked_module_and_inputs_are_left_untouched(rng):
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x_before, w_before = x.copy(), m[0].weight.data.copy()
    state = minires.get_rng_state()
    gradcheck(m, x)
    assert x.dtype == np.float32 and np.array_equal(x, x_before)
    assert m[0].weight.dtype == np.float32 and np.array_equal(m[0].weight.data, w_before)
    assert m[0].weight.grad is None and not m[0]._caches and m.training
    assert minires.get_rng_state() == state  # the user's streams did not advance


# ------------------------------------------------------------------ planted bugs are rejected
def test_rejects_transposed_weight_gradient(rng):
    with pytest.raises(AssertionError, match=r"weight \[16 element\(s\)\]: FAIL"):
        gradcheck(TransposedWeightGradLinear(4, 4), rng.standard_normal((5, 4)))


def test_rejects_batchnorm_missing_mean_term(rng):
    x = rng.standard_normal((6, 3)) + 2.0
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    with pytest.raises(AssertionError, match=r"input0 .*FAIL") as info:
        gradcheck(batchnorm_pair(omit_mean_term=True), x, gamma, beta)
    report = str(info.value)
    assert "input1 [3 element(s)]: ok" in report and "input2 [3 element(s)]: ok" in report


def test_rejects_residual_block_dropping_the_skip_gradient(rng):
    x = away_from_zero(rng, (4, 3))
    assert gradcheck(ReluResidual(3), x)  # the correct block passes
    with pytest.raises(AssertionError, match=r"input0 .*FAIL") as info:
        gradcheck(ReluResidual(3, drop_skip=True), x)
    assert "lin.weight [9 element(s)]: ok" in str(info.value)


def test_rejects_input_gradient_off_by_one_percent(rng):
    with pytest.raises(AssertionError) as info:
        gradcheck(ScaledInputGradLinear(4, 3), rng.standard_normal((5, 4)))
    report = str(info.value)
    assert "gradcheck failed for ScaledInputGradLinear" in report
    assert "input0 [20 element(s)]: FAIL on 20/20" in report
    assert "analytic" in report and "numeric" in report and "at index (" in report
    assert "weight [12 element(s)]: ok" in report


def test_raise_exception_false_returns_false(rng):
    assert gradcheck(ScaledInputGradLinear(4, 3), rng.standard_normal((5, 4)),
                     raise_exception=False) is False


def test_rejects_wrong_gradient_shape(rng):
    class WrongShape(nn.Linear):
        def backward(self, dy):
            return super().backward(dy)[:, :-1]

    with pytest.raises(AssertionError, match=r"input0 .*analytic gradient has shape \(5, 3\), "
                                             r"expected \(5, 4\)"):
        gradcheck(WrongShape(4, 2), rng.standard_normal((5, 4)))


def test_rejects_a_missing_parameter_gradient(rng):
    class ForgetsBias(nn.Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.bias.grad = None
            return dx

    with pytest.raises(AssertionError,
                       match=r"bias \[3 element\(s\), no gradient \(taken as 0\)\]"):
        gradcheck(ForgetsBias(4, 3), rng.standard_normal((5, 4)))


def test_rejects_a_float32_buffer_in_a_float64_check(rng):
    class Float32Output(Module):
        def forward(self, x):
            self._save(x, None)
            return x.astype(np.float32)

        def backward(self, dy):
            self._restore(dy)
            return dy

    with pytest.raises(AssertionError, match="output is float32, not float64"):
        gradcheck(Float32Output(), rng.standard_normal((2, 3)))


def test_rejects_an_unseeded_forward(rng):
    noise = np.random.default_rng()  # not a minires stream: gradcheck cannot freeze it

    def forward(x):
        return x * noise.uniform(1, 2)

    with pytest.raises(AssertionError, match="forward is not reproducible"):
        gradcheck((forward, lambda dy: dy), rng.standard_normal(3))


def test_rejects_non_finite_outputs(rng):
    with pytest.raises(AssertionError, match="non-finite values"):
        gradcheck((lambda x: x * np.inf, lambda dy: dy), np.ones(3))


def test_tuple_gradients_map_to_float_inputs_around_an_integer_one(rng):
    cache = {}

    def forward(a, k, b):
        cache.update(a=a, b=b, k=k)
        return a * b * k

    def backward(dy):
        return dy * cache["b"] * cache["k"], dy * cache["a"] * cache["k"]

    result = gradcheck((forward, backward), rng.standard_normal(4), 3, rng.standard_normal(4))
    assert set(result) == {"input0", "input2"}


def test_large_outputs_with_a_large_offset_pass(rng):
    """sum(f*g) is ~1e6 here; the numeric slopes must still be accurate to ~1e-6."""
    m = nn.Linear(3, 1000)
    m.bias.data[...] = 1e4
    result = gradcheck(m, rng.standard_normal((20, 3)), max_elements=100, n_directions=4)
    assert set(result) == {"input0", "weight", "bias"}


def test_rejects_things_that_are_not_modules_or_pairs():
    with pytest.raises(TypeError, match=r"Module or a \(forward, backward\) pair"):
        gradcheck(lambda x: x, np.ones(3))


# ------------------------------------------------------------------ large tensors
class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_large_tensors_use_random_directions(rng):
    CountingLinear.calls = 0
    m = CountingLinear(40, 30)  # weight 1200 values > max_elements
    result = gradcheck(m, rng.standard_normal((2, 40)), max_elements=100, n_directions=8)
    assert set(result) == {"input0", "weight", "bias"}
    # input (80) and bias (30) element by element, weight along 8 directions,
    # plus the analytic call and the reproducibility check.
    assert CountingLinear.calls == 2 * (80 + 30 + 8) + 2


def test_random_directions_catch_a_one_percent_weight_bug(rng):
    with pytest.raises(AssertionError) as info:
        gradcheck(ScaledWeightGradLinear(40, 30), rng.standard_normal((2, 40)), max_elements=100)
    report = str(info.value)
    assert "weight [16 random direction(s)]: FAIL on" in report and "at direction " in report
    assert "input0 [80 element(s)]: ok" in report


# ------------------------------------------------------------------ frozen buffers and RNG
def test_dropout_in_train_mode_passes_because_masks_are_frozen(rng):
    m = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 2))
    assert m.training
    assert set(gradcheck(m, rng.standard_normal((4, 5)))) == {
        "input0", "0.weight", "0.bias", "2.weight", "2.bias"}


class CountingScale(Module):
    """y = x * (1 + calls), with ``calls`` a buffer bumped by every forward: only
    restoring buffers before each call makes this a fixed function of x."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", np.zeros((), dtype=np.int64))
        self.register_buffer("running", np.zeros(3, dtype=np.float32))

    def forward(self, x):
        self.calls += 1  # in place, like BatchNorm's num_batches_tracked
        self.running = self.running * 0.9 + x.mean(axis=0)  # replaced, like running_mean
        y = x * (1.0 + self.calls)
        self._save(y, 1.0 + self.calls)
        return y

    def backward(self, dy):
        return dy * self._restore(dy)


def test_buffers_are_restored_before_every_call(rng):
    m = CountingScale()
    assert set(gradcheck(m, rng.standard_normal((2, 3)))) == {"input0"}
    assert int(m.calls) == 0 and not m.running.any()  # the original module is untouched


def test_buffers_restored_in_batchnorm(rng):
    bn = nn.BatchNorm1d(3)
    gradcheck(bn, rng.standard_normal((6, 3)))
    gradcheck(bn.eval(), rng.standard_normal((6, 3)))


# ------------------------------------------------------------------ kinks within eps
def relu_pair(x_side_slope_of_kink=None):
    """(forward, backward) of relu; backward returns ``x_side_slope_of_kink``
    everywhere when given (a planted wrong gradient)."""
    def forward(x):
        return np.maximum(x, 0.0)

    def backward(dy):
        if x_side_slope_of_kink is not None:
            return np.full_like(dy, x_side_slope_of_kink)
        return dy * (forward.x > 0)

    def remembering_forward(x):
        forward.x = x
        return forward(x)
    return remembering_forward, backward


def test_a_kink_within_eps_passes_on_the_one_sided_difference_of_its_side():
    # 3e-7 is within eps=1e-6 of relu's kink: the central difference there is
    # (1.3e-6 - 0) / 2e-6 = 0.65, no derivative at all; the slope on x's side is 1.
    x = np.array([3e-7, 0.5, -0.4])
    fwd, bwd = relu_pair()
    with pytest.raises(AssertionError, match=r"FAIL on 1/3.* at index \(0,\)") as failed:
        gradcheck((fwd, bwd), x, kinks="fail")
    analytic, numeric = map(float, re.search(r"analytic (\S+), numeric (\S+)",
                                             str(failed.value)).groups())
    assert numeric / analytic == pytest.approx(0.65)  # both carry the random upstream g
    assert gradcheck((fwd, bwd), x)["input0"] < 1e-9  # the worst error among real comparisons


def test_a_wrong_gradient_at_a_kink_still_fails():
    x = np.array([3e-7])
    for wrong in (0.0, 0.5, 0.9):  # the other side's slope, a guess, near the straddling side
        fwd, _ = relu_pair()
        _, bwd = relu_pair(x_side_slope_of_kink=wrong)
        with pytest.raises(AssertionError, match="FAIL on 1/1"):
            gradcheck((fwd, lambda dy, bwd=bwd: bwd(dy) * dy), x)


def test_a_kink_inside_a_module_is_reported_when_a_gradient_fails(rng):
    # Linear -> ReLU with one pre-activation put 2e-7 from the kink through the
    # bias: every weight of that row straddles it.  A planted 1% error in dx
    # fails, and the report also counts the values excused at the kink.
    x = rng.standard_normal((2, 3))
    for bug, expect in ((nn.Linear, None), (ScaledInputGradLinear, "input0")):
        lin = bug(3, 3).to(dtype=np.float64)
        pre = x @ lin.weight.data.T + lin.bias.data
        lin.bias.data[1] -= pre[0, 1] - 2e-7
        model = nn.Sequential(lin, nn.ReLU())
        if expect is None:
            gradcheck(model, x)
            with pytest.raises(AssertionError, match=r"0\.bias .*FAIL on 1/3"):
                gradcheck(model, x, kinks="fail")
        else:
            with pytest.raises(AssertionError, match=r"(?s)input0 .*FAIL.*0\.bias .*ok \(1 "
                                                     r"straddled a kink"):
                gradcheck(model, x)


def test_kinks_must_be_a_known_mode():
    with pytest.raises(ValueError, match="kinks must be 'one-sided' or 'fail'"):
        gradcheck(relu_pair(), np.array([1.0]), kinks="ignore")
