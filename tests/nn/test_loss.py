"""CrossEntropyLoss: torch parity (loss and dlogits), finite differences,
stability at +-1e4, hypothesis properties, 0-d output, bad inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import minires
from minires import nn
from tests.helpers import assert_close, numerical_grad, rtol_for, torch_tensor


def torch_loss_and_grad(logits, target, dloss=1.0, **kwargs):
    """torch's loss and d(dloss * loss)/dlogits."""
    t = torch_tensor(logits, requires_grad=True)
    loss = torch.nn.CrossEntropyLoss(**kwargs)(t, torch.from_numpy(np.asarray(target)))
    (loss * dloss).backward()
    return loss, t.grad


def random_batch(rng, n, c, dtype, scale=3.0):
    return (rng.standard_normal((n, c)) * scale).astype(dtype), rng.integers(0, c, n)


# ---------------------------------------------------------------- torch parity
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_parity(dtype, label_smoothing, reduction):
    rng = np.random.default_rng(0)
    logits, target = random_batch(rng, 16, 10, dtype)
    dloss = float(rng.uniform(0.5, 2.0))  # a random upstream scalar
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)
    loss = crit(logits, target)
    dlogits = crit.backward(dloss)
    tloss, tgrad = torch_loss_and_grad(logits, target, dloss, label_smoothing=label_smoothing,
                                       reduction=reduction)
    rtol = rtol_for(dtype)
    assert_close(loss, tloss, rtol, "loss")
    assert_close(dlogits, tgrad, rtol, "dlogits")
    assert loss.dtype == dtype and dlogits.dtype == dtype


def test_default_upstream_and_array_upstream():
    rng = np.random.default_rng(1)
    logits, target = random_batch(rng, 5, 4, np.float64)
    crit = nn.CrossEntropyLoss()
    crit(logits, target)
    g_default = crit.backward()
    crit(logits, target)
    g_array = crit.backward(np.array(0.25))
    _, tgrad = torch_loss_and_grad(logits, target)
    assert_close(g_default, tgrad, 1e-10, "dlogits, dloss=1")
    assert_close(g_array, tgrad * 0.25, 1e-10, "dlogits, dloss=0.25 (0-d array)")


def test_called_twice_then_backward_twice():
    rng = np.random.default_rng(2)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    (x1, y1), (x2, y2) = random_batch(rng, 4, 3, np.float64), random_batch(rng, 6, 3, np.float64)
    crit(x1, y1)
    crit(x2, y2)
    g2 = crit.backward()  # newest first
    g1 = crit.backward()
    for g, x, y, what in ((g1, x1, y1, "first call"), (g2, x2, y2, "second call")):
        _, tgrad = torch_loss_and_grad(x, y, label_smoothing=0.1)
        assert_close(g, tgrad, 1e-10, what)
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward: no cache"):
        crit.backward()


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_finite_differences_float64(label_smoothing):
    rng = np.random.default_rng(3)
    logits, target = random_batch(rng, 5, 4, np.float64, scale=2.0)
    dloss = float(rng.uniform(0.5, 2.0))
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    crit(logits, target)
    dlogits = crit.backward(dloss)

    def objective():
        with minires.no_grad():
            return dloss * float(crit(logits, target))

    assert_close(dlogits, numerical_grad(objective, logits), 1e-7, "dlogits")


# ---------------------------------------------------------------- stability
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_with_huge_logits(dtype, label_smoothing):
    rng = np.random.default_rng(4)
    n, c = 8, 5
    logits = (rng.choice([-1e4, 1e4], size=(n, c)) + rng.standard_normal((n, c))).astype(dtype)
    target = rng.integers(0, c, n)
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss = crit(logits, target)
    dlogits = crit.backward()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dlogits))
    tloss, tgrad = torch_loss_and_grad(logits, target, label_smoothing=label_smoothing)
    rtol = rtol_for(dtype)
    assert_close(loss, tloss, rtol, "loss")
    assert_close(dlogits, tgrad, rtol, "dlogits")


# ---------------------------------------------------------------- hypothesis
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(1, 7), label_smoothing=st.floats(0.0, 0.5),
       seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_property_matches_torch_and_rows_sum_to_zero(n, c, label_smoothing, seed, dtype):
    rng = np.random.default_rng(seed)
    logits, target = random_batch(rng, n, c, dtype)
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss = crit(logits, target)
    dlogits = crit.backward()
    tloss, tgrad = torch_loss_and_grad(logits, target, label_smoothing=label_smoothing)
    rtol = rtol_for(dtype)
    assert_close(loss, tloss, rtol, "loss")
    assert_close(dlogits, tgrad, rtol, "dlogits")
    # softmax and the target distribution both sum to 1 per row
    np.testing.assert_allclose(dlogits.astype(np.float64).sum(axis=1), 0.0,
                               atol=10 * np.finfo(dtype).eps)


# ---------------------------------------------------------------- output type, repr
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_returns_0d_array(dtype):
    rng = np.random.default_rng(5)
    logits, target = random_batch(rng, 3, 4, dtype)
    loss = nn.CrossEntropyLoss()(logits, target)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert isinstance(float(loss), float)


def test_repr_and_no_grad():
    assert repr(nn.CrossEntropyLoss()) == repr(torch.nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(nn.CrossEntropyLoss(label_smoothing=0.1)) == \
        repr(torch.nn.CrossEntropyLoss(label_smoothing=0.1))
    crit = nn.CrossEntropyLoss()
    logits, target = random_batch(np.random.default_rng(6), 3, 4, np.float32)
    with minires.no_grad():
        crit(logits, target)
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward: no cache"):
        crit.backward()


# ---------------------------------------------------------------- bad inputs
@pytest.fixture
def batch():
    return random_batch(np.random.default_rng(7), 4, 5, np.float32)


@pytest.mark.parametrize("bad", [5, 7, -1])
def test_target_out_of_range(batch, bad):
    logits, target = batch
    target = target.copy()
    target[2] = bad
    with pytest.raises(IndexError, match=rf"CrossEntropyLoss: target {bad} is out of range.*"
                                         r"\[0, 5\)"):
        nn.CrossEntropyLoss()(logits, target)


def test_float_targets(batch):
    logits, target = batch
    with pytest.raises(TypeError, match="CrossEntropyLoss: expected integer class-index targets"
                                        ".*got dtype float32"):
        nn.CrossEntropyLoss()(logits, target.astype(np.float32))


def test_wrong_rank(batch):
    logits, target = batch
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected logits of shape \(N, C\)"
                                         r".*got shape \(4, 5, 1\)"):
        nn.CrossEntropyLoss()(logits[:, :, None], target)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected logits of shape \(N, C\)"
                                         r".*got shape \(5,\)"):
        nn.CrossEntropyLoss()(logits[0], target[:1])
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected targets of shape \(4,\)"
                                         r".*got shape \(4, 1\)"):
        nn.CrossEntropyLoss()(logits, target[:, None])


def test_batch_size_mismatch(batch):
    logits, target = batch
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected targets of shape \(4,\)"
                                         r".*got shape \(3,\)"):
        nn.CrossEntropyLoss()(logits, target[:3])


def test_other_bad_inputs(batch):
    logits, target = batch
    with pytest.raises(TypeError, match="CrossEntropyLoss: expected floating-point logits"):
        nn.CrossEntropyLoss()(logits.astype(np.int64), target)
    with pytest.raises(TypeError, match="CrossEntropyLoss: expected an array"):
        nn.CrossEntropyLoss()(logits, list(target))
    crit = nn.CrossEntropyLoss()
    crit(logits, target)
    with pytest.raises(ValueError, match="CrossEntropyLoss.backward: dloss must be a scalar"):
        crit.backward(np.ones(3))
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction must be one of"):
        nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(NotImplementedError, match="CrossEntropyLoss: per-class weight"):
        nn.CrossEntropyLoss(weight=np.ones(5))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ignore_index_matches_torch(smoothing, reduction, ignore_index):
    import torch
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((7, 5))
    target = rng.integers(0, 5, 7)
    target[[1, 4]] = ignore_index
    crit = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=smoothing)
    loss = crit(logits, target)
    g = crit.backward(0.7)
    tl = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target), ignore_index=ignore_index,
                                            reduction=reduction, label_smoothing=smoothing)
    (ref * 0.7).backward()
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-12)
    np.testing.assert_allclose(g, tl.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert not g[[1, 4]].any()  # ignored rows get no gradient


def test_all_rows_ignored_gives_nan_for_the_mean_as_torch():
    import torch
    logits = np.zeros((3, 4))
    target = np.full(3, -100)
    loss = nn.CrossEntropyLoss()(logits, target)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target))
    assert np.isnan(float(loss)) and np.isnan(float(ref))
