"""ModelEMA against a running average computed here, and the batch-norm
recalibration against torch's cumulative running statistics."""
import numpy as np
import pytest
import torch

from minires import nn
from minires.optim import ModelEMA, recalibrate_batchnorm


def _net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def test_ema_is_the_running_average_of_the_weights_with_the_warm_up_ramp():
    rng = np.random.default_rng(0)
    model = _net().to(dtype=np.float64)
    decay = 0.9
    ema = ModelEMA(model, decay)
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.data.copy() for n, p in model.named_parameters()}
    expected = {n: v.copy() for n, v in start.items()}
    for t in range(40):
        for n, p in model.named_parameters():  # an "optimiser step": new weights
            p.data = p.data + rng.normal(size=p.data.shape)
        # the average as the docs define it: d_t = min(decay, (1 + t) / (10 + t))
        d = min(decay, (1 + t) / (10 + t))
        for n, p in model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.data
        ema.update(model)
    got = dict(ema.module.named_parameters())
    for n in names:
        np.testing.assert_allclose(got[n].data, expected[n], rtol=1e-12, atol=1e-12)
        assert not np.allclose(got[n].data, dict(model.named_parameters())[n].data)
    assert ema.updates == 40


def test_ema_averages_batch_norm_statistics_and_copies_the_counter():
    model = _net().to(dtype=np.float64)
    ema = ModelEMA(model, 0.5)
    bn, ebn = model[1], ema.module[1]
    rm0 = ebn.running_mean.copy()
    model.train()
    model(np.random.default_rng(1).normal(size=(8, 4)))  # moves the live statistics
    d = ema.rate()  # the first update: min(0.5, 1/10)
    ema.update(model)
    np.testing.assert_allclose(ebn.running_mean, d * rm0 + (1 - d) * bn.running_mean, rtol=1e-12)
    assert int(ebn.num_batches_tracked) == int(bn.num_batches_tracked) == 1


def test_ema_module_is_a_separate_copy_in_eval_mode_and_round_trips():
    model = _net()
    ema = ModelEMA(model, 0.99)
    assert ema.module is not model and not ema.module.training
    model[0].weight.data += 1.0
    assert not np.allclose(ema.module[0].weight.data, model[0].weight.data)
    ema.update(model)
    other = ModelEMA(_net(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.99
    for (_, a), (_, b) in zip(other.module.state_dict().items(), ema.module.state_dict().items()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_ema_decay_out_of_range_is_refused(decay):
    with pytest.raises(ValueError, match="ModelEMA: decay must be a number in \\(0, 1\\)"):
        ModelEMA(_net(), decay)


def test_recalibrated_statistics_equal_torchs_cumulative_average():
    """momentum=None in torch: running stats are the plain mean of the batches'
    mean and unbiased variance; recalibrate_batchnorm must give exactly that,
    and leave the momentum and the eval mode as they were."""
    rng = np.random.default_rng(2)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                          nn.Conv2d(5, 4, 3), nn.BatchNorm2d(4)).to(dtype=np.float64)
    model[1].running_mean[...] = 7.0  # stale statistics that must not survive
    batches = [rng.normal(size=(6, 3, 8, 8)) for _ in range(4)]
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5, momentum=None),
                              torch.nn.ReLU(), torch.nn.Conv2d(5, 4, 3),
                              torch.nn.BatchNorm2d(4, momentum=None)).double()
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(torch.from_numpy(model[i].weight.data))
            ref[i].bias.copy_(torch.from_numpy(model[i].bias.data))
        ref.train()
        for x in batches:
            ref(torch.from_numpy(x))
    assert recalibrate_batchnorm(model, iter(batches)) == 4
    for i in (1, 4):
        np.testing.assert_allclose(model[i].running_mean, ref[i].running_mean.numpy(), rtol=1e-10)
        np.testing.assert_allclose(model[i].running_var, ref[i].running_var.numpy(), rtol=1e-10)
        assert model[i].momentum == 0.1
    assert not model.training
