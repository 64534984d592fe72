"""Batch norm folded into the convolution before it: the same logits as the
unfolded eval model (to float32 rounding), for every model minires ships."""
import numpy as np
import pytest

import minires
from minires import nn
from minires.fold import fold_batchnorm
from minires.models import CIFAR_MODEL_NAMES, MODEL_NAMES, get
from minires.nn.norm import _BatchNorm


def trained_like(model, seed=1):
    """Running statistics and affine parameters as after training (not 0/1)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            c = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, c)
            m.running_mean[...] = rng.normal(0, 0.3, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
    return model.eval()


def logits(model, x):
    with minires.no_grad():
        return model(x)


# the CIFAR nets at 32x32; the ImageNet ones at 64x64 (enough for every stride)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folded_model_gives_the_same_logits(name):
    minires.manual_seed(0)
    if name == "resnet1202":
        pytest.skip("19M parameters in 1,200 layers: resnet110 covers the same blocks")
    model = trained_like(get(name))
    size = 32 if name in CIFAR_MODEL_NAMES else 64
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model)
    n_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    assert n == n_bn  # every batch norm of these models follows a convolution
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    want, got = logits(model, x), logits(folded, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    after = model.state_dict()  # the model itself is untouched
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_folding_is_the_affine_map_of_batch_norm():
    """One conv + bn pair in float64, against the formula computed here."""
    minires.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).to(dtype=np.float64)
    bn = trained_like(nn.BatchNorm2d(4).to(dtype=np.float64))
    model = nn.Sequential(conv, bn, nn.ReLU())
    folded, n = fold_batchnorm(model)
    assert n == 1 and isinstance(folded[1], nn.Identity)
    s = bn.weight.data / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(folded[0].weight.data, conv.weight.data * s[:, None, None, None])
    np.testing.assert_allclose(folded[0].bias.data,
                               (conv.bias.data - bn.running_mean) * s + bn.bias.data)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    np.testing.assert_allclose(logits(folded, x), logits(model.eval(), x), rtol=1e-12, atol=1e-12)


def test_only_a_batch_norm_right_after_a_convolution_is_folded():
    minires.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4),  # relu between
                          nn.Flatten(1), nn.Linear(4 * 9, 5), nn.BatchNorm1d(5))
    folded, n = fold_batchnorm(trained_like(model))
    assert n == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(logits(folded, x), logits(model, x))
