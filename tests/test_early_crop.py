"""--early-crop (progressive resizing): smaller random windows in the first
epochs.  The windows against a slow reference cut here, the network's
gradients at the smaller size by gradcheck, the trainer's switch and the
budget's two paces."""
import numpy as np
import pytest

import minires.train as tr
from minires import budget, models
from minires.data import BatchLoader, crop_at
from minires.gradcheck import gradcheck
from minires.train import TrainConfig, Trainer
from tests.test_budget import _ends_in_budget, _fake_run


def test_windows_are_the_slices_a_plain_loop_cuts():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    for padding, size in ((0, 24), (4, 24), (2, 32), (0, 8)):
        offsets = rng.integers(0, 2 * padding + 32 - size + 1, (7, 2))
        got = crop_at(batch, offsets, padding, size)
        padded = np.pad(batch, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        want = np.stack([padded[i, t:t + size, l:l + size] for i, (t, l) in enumerate(offsets)])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="crop_at: a crop of 41 does not fit 32x32 images padded by 4"):
        crop_at(batch, offsets, 4, 41)


def test_loader_draws_windows_inside_the_image_and_stays_seeded():
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 40)

    def batches():
        loader = BatchLoader(images, labels, 16, augment=True, padding=0, crop_size=24,
                             rng=np.random.default_rng(3), augment_rng=np.random.default_rng(4))
        return [x for x, _ in loader]
    first, again = batches(), batches()
    assert [x.shape for x in first] == [(16, 3, 24, 24), (16, 3, 24, 24), (8, 3, 24, 24)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="crop_size needs augment=True"):
        BatchLoader(images, labels, 16, crop_size=24)


def test_resnet20_gradients_on_16_pixel_windows():
    from minires.testing import randomize_batchnorm
    # random batch-norm weights and biases, as after training: at init every
    # BN->ReLU puts the kink at the batch mean, where differences straddle it
    model = randomize_batchnorm(models.resnet20(num_classes=3).to(dtype=np.float64))
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16))
    errors = gradcheck(model, x, max_elements=64, n_directions=4)
    assert "input0" in errors and "linear.weight" in errors and "conv1.weight" in errors


def test_the_first_epochs_train_on_windows_then_the_rest_at_full_size(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64))
    test = (rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 16))
    shapes, real_step = [], tr.train_step

    def step(model, crit, opt, sched, x, y):
        shapes.append(x.shape[2:])
        return real_step(model, crit, opt, sched, x, y)
    monkeypatch.setattr(tr, "train_step", step)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, out=str(tmp_path / "r"), progress=False,
                      early_crop=16, early_fraction=0.5)
    Trainer(cfg, train, test, log=lambda *_: None).run()
    assert cfg.fitted["early_epochs"] == 2
    assert shapes == [(16, 16)] * 4 + [(32, 32)] * 4


def test_a_budget_with_cheaper_early_steps_still_ends_in_time(tmp_path, monkeypatch):
    """Steps on 24-pixel windows take 0.3 s, full-size ones 0.5 s (and the
    probe says so for each size): the plan counts both, and after the
    switch the run still ends between 95% and 100% of the budget."""
    def cost(k, x):
        return 0.3 if x.shape[2] < 32 else 0.5
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 2.0, cost, 0.5, eval_every=0,
                                     probe_fn=lambda images: 0.3 if images.shape[1] < 32 else 0.5,
                                     early_crop=24, early_fraction=0.5)
    f = trainer.cfg.fitted
    assert f["early_step_time_s"] == 0.3 and f["step_time_s"] == 0.5
    assert 0.45 <= f["early_epochs"] / f["epochs"] <= 0.55
    assert f"the first {f['early_epochs']} on 24x24 crops" in logs[0]
    _ends_in_budget(trainer, clock, 2.0)
    # no refit took the windows' pace for the full-size steps (at the last
    # window step, all the steps left are full-size: the plan must not jump)
    import re
    planned = [int(n) for line in logs for n in re.findall(r"ends after (\d+) steps", line)]
    assert all(abs(n - f["total_steps"]) <= 0.05 * f["total_steps"] for n in planned), planned


def test_early_crop_values_out_of_range_are_refused():
    for crop in (4, 32, True):
        with pytest.raises(ValueError, match="--early-crop must be 0 \\(off\\) or a window size"):
            TrainConfig(early_crop=crop).validate()
    with pytest.raises(ValueError, match="--early-fraction must be in \\(0, 1\\)"):
        TrainConfig(early_crop=24, early_fraction=1.0).validate()
