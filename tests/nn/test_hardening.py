"""The module contract's edges: dy checked for dtype, infinities as torch
treats them, whole-number arguments, forward calls that never see a backward."""
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minires
from minires import nn
from minires.nn import module as module_mod


def test_backward_refuses_a_dy_of_another_dtype_and_keeps_the_cache():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = conv(x)
    with pytest.raises(TypeError, match=r"Conv2d.backward: expected dy of dtype float32.*float64"):
        conv.backward(np.ones(y.shape, np.float64))
    dx = conv.backward(np.ones(y.shape, np.float32))  # the cache survived the bad call
    assert dx.dtype == np.float32 and conv.weight.grad.dtype == np.float32


@pytest.mark.parametrize("layer, ref", [
    (lambda: nn.ReLU(), TF.relu),
    (lambda: nn.MaxPool2d(2), lambda t: TF.max_pool2d(t, 2)),
    (lambda: nn.MaxPool2d(3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1)),
    (lambda: nn.AvgPool2d(2), lambda t: TF.avg_pool2d(t, 2)),
    (lambda: nn.AdaptiveAvgPool2d(1), lambda t: TF.adaptive_avg_pool2d(t, 1)),
], ids=["relu", "maxpool", "maxpool-padded", "avgpool", "adaptive-avgpool"])
def test_infinities_as_torch_treats_them(layer, ref):
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4))
    x[0, 0, 0, 0], x[0, 0, 1, 2], x[0, 1, 3, 3] = -np.inf, np.inf, -np.inf
    x[0, 1, :2, :2] = -np.inf  # a whole pooling window of -inf
    with minires.no_grad():
        y = layer()(x)
    expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite_or_inf = ~np.isnan(expected)
    np.testing.assert_array_equal(y[finite_or_inf], expected[finite_or_inf])


def test_relu_of_minus_infinity_is_zero_with_zero_gradient():
    relu = nn.ReLU()
    y = relu(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf]))
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 2.0, np.inf])
    np.testing.assert_array_equal(relu.backward(np.full(5, 3.0)), [0.0, 0.0, 0.0, 3.0, 3.0])


@pytest.mark.parametrize("build", [
    lambda: nn.Conv2d(3, 4, 2.7), lambda: nn.Conv2d(3, 4, 3, stride=1.5),
    lambda: nn.Conv2d(3.5, 4, 3), lambda: nn.Conv2d(3, 4, (3, 2.2)),
    lambda: nn.MaxPool2d(2.7), lambda: nn.AvgPool2d(2, stride=0.5),
    lambda: nn.Linear(2.5, 3), lambda: nn.BatchNorm2d(4.5), lambda: nn.Conv2d(3, 4, "3"),
], ids=["kernel", "stride", "in-channels", "kernel-pair", "maxpool", "avgpool-stride",
        "linear", "batchnorm", "string"])
def test_arguments_that_must_be_whole_numbers(build):
    with pytest.raises(TypeError, match="must be a whole number"):
        build()


def test_integral_floats_and_numpy_integers_are_accepted():
    conv = nn.Conv2d(np.int64(3), 4, 3.0, stride=np.int32(1))
    assert conv.kernel_size == (3, 3) and conv.in_channels == 3 and conv.stride == (1, 1)


def test_forward_calls_without_backward_do_not_grow_memory():
    """Evaluation written without no_grad(): 50 forward calls in train mode,
    never a backward.  Each module keeps at most MAX_CACHES calls (oldest
    dropped, one warning per module), so memory stops growing."""
    model = minires.models.resnet20()
    x = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(50):
                model(x)
                if i == 2 * module_mod.MAX_CACHES:
                    grown_at_limit = tracemalloc.get_traced_memory()[0]
                    warned_at_limit = len(caught)
            at_end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert all(len(m._caches) <= module_mod.MAX_CACHES for m in model.modules())
    assert max(len(m._caches) for m in model.modules()) == module_mod.MAX_CACHES
    assert at_end - grown_at_limit < 1 << 20, "memory still grows after the cache limit"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages and all("no_grad" in m for m in messages)
    assert len(caught) == warned_at_limit  # once per module: nothing new after the first overflow
    # the newest calls still backpropagate: the newest call's backward is the
    # one a single fresh forward of the same input gives (train mode: batch
    # statistics, the same every call)
    dy = np.random.default_rng(3).standard_normal((4, 10)).astype(np.float32)
    model.zero_grad()
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    for m in model.modules():
        m.clear_caches()
    model.zero_grad()
    model(x)
    np.testing.assert_array_equal(model.backward(dy), dx)
    for p, g in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)
    assert np.abs(dx).max() > 0
