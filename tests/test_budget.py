"""--time-budget: the plan counts steps and evaluations, and the run keeps to
the budget while the machine speeds up or slows down.

The runs here go by a fake clock: each step, evaluation and the probe move it
by a set amount, so what the trainer decides is exact and repeatable (no
wall-clock assertion on a shared machine).  The real-time check of whole
runs (3, 15 and 60 minutes) is benchmarks/bench_budget.py."""
import json
import os

import numpy as np
import pytest

import minires.train as tr
from minires import budget
from minires.errors import ConfigError
from minires.checkpoint import load_checkpoint
from minires.train import TrainConfig, Trainer, fit_schedule
from tests.trained_model_helpers import run_cli


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _arrays(n=64, n_test=32):
    rng = np.random.default_rng(1)
    return ((rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)),
            (rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             rng.integers(0, 10, n_test)))


def _fake_run(tmp_path, monkeypatch, budget_min, step_s, probe_step_s, eval_img=0.01,
              spent=3.0, clock=None, resume=False, stop_at=None, probe_fn=None, **cfg_kw):
    """A budgeted run (64 images, batch 32: 2 steps an epoch) on a fake clock:
    loading and the probe take ``spent`` s, step k of batch x takes
    ``step_s(k, x)`` s (``probe_fn(images)``: what the probe says), an
    evaluation ``eval_img`` s per image and view, the EMA recalibration a
    quarter step per batch.  The steps only step the schedule (no compute)."""
    clock = clock or Clock()
    train, test = _arrays()
    logs = []
    cfg = TrainConfig(model="resnet20", epochs=10_000, batch_size=32, lr=0.1,
                      out=str(tmp_path / "run"), progress=False, time_budget=budget_min,
                      **cfg_kw)
    trainer = Trainer(cfg, train, test, log=logs.append, clock=clock)

    def probe(self, trainer, images, labels):
        clock.t += spent
        return (probe_fn(images) if probe_fn else probe_step_s), eval_img

    def step(model, crit, opt, sched, x, y):
        if stop_at is not None and trainer.step == stop_at:
            raise KeyboardInterrupt
        clock.t += step_s(trainer.step, x)
        sched.step()
        return np.float32(2.0), np.zeros((len(y), 10), np.float32)

    def evaluate(model, images, labels, *a, tta="none", **k):
        clock.t += len(labels) * eval_img * (2 if tta == "flip" else 1)
        return 2.0, 0.1

    def recalibrate(ema, train_data, cfg, batches):
        clock.t += batches * probe_step_s / 4

    monkeypatch.setattr(tr.OneProcess, "probe", probe)
    monkeypatch.setattr(tr, "train_step", step)
    monkeypatch.setattr(tr, "evaluate", evaluate)
    monkeypatch.setattr(tr, "recalibrate_ema", recalibrate)
    trainer.run(resume=resume)
    return trainer, clock, logs


def _evaluations(eval_every, steps_per_epoch, total):
    """Counted here the slow way: epoch ends --eval-every names, plus the end."""
    ends = {e * steps_per_epoch for e in range(1, total // steps_per_epoch + 1)
            if eval_every and e % eval_every == 0}
    return len(ends | {total})


@pytest.mark.parametrize("eval_every,tta,ema,spent", [
    (1, "none", 0.0, 0.0), (1, "none", 0.0, 5.0), (0, "flip", 0.0, 0.0), (3, "flip", 0.9, 2.0)])
def test_the_plan_fills_the_budget_with_steps_and_evaluations(eval_every, tta, ema, spent):
    cfg = TrainConfig(epochs=100, time_budget=1.0, eval_every=eval_every, tta=tta, ema=ema)
    # 10 steps of 1 s an epoch, 100 test images at 10 ms (the probe's, times its factor)
    f = fit_schedule(cfg, steps_per_epoch=10, n_test=100, step_time=1.0, eval_per_image=0.01,
                     spent_s=spent)
    per_eval = 100 * 0.01 * budget.PROBE_EVAL_FACTOR * (2 if tta == "flip" else 1)
    recal = budget.RECALIBRATION_BATCHES * 1.0 / 4 if ema else 0.0
    left = 60 - spent - budget.end_reserve(60)

    def cost(n):
        return n * 1.0 + _evaluations(eval_every, 10, n) * per_eval + recal
    n = f["total_steps"]
    assert cost(n) <= left < cost(n + 1)  # it fits, and one more step would not
    assert f["epochs"] == -(-n // 10)


def test_the_plan_honours_epochs_and_max_steps_too():
    f = fit_schedule(TrainConfig(epochs=10, max_steps=23), steps_per_epoch=10, n_test=100)
    assert (f["epochs"], f["total_steps"]) == (3, 23)
    f = fit_schedule(TrainConfig(epochs=2, time_budget=60.0), 10, 100, 1.0, 0.01)
    assert (f["epochs"], f["total_steps"]) == (2, 20)


def _ends_in_budget(trainer, clock, budget_min):
    budget_s = budget_min * 60
    assert 0.95 * budget_s <= clock.t <= budget_s, f"ended at {clock.t:.1f} s of {budget_s}"
    # the schedule ran to its end: the last step used the annealed lr
    assert trainer.step == trainer.cfg.fitted["total_steps"] == trainer.sched.total_steps
    assert trainer.sched.lr_at(trainer.step - 1, trainer.cfg.lr / 25) < 1e-3 * trainer.cfg.lr


def test_a_run_at_the_probes_pace_uses_the_budget(tmp_path, monkeypatch):
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 2.0, lambda k, x: 0.5, 0.5)
    _ends_in_budget(trainer, clock, 2.0)
    assert logs[0].startswith("plan: ") and "--time-budget 2 min" in logs[0]
    assert logs[-1].startswith("time budget: used") and "of 120 s" in logs[-1]
    saved = json.load(open(os.path.join(trainer.cfg.out, "config.json")))["fitted"]
    assert saved["used_s"] == pytest.approx(clock.t, abs=0.01)


def test_a_machine_that_slows_down_is_refitted_and_the_run_still_ends_in_time(tmp_path,
                                                                                monkeypatch):
    slow_from = 60
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 2.0,
                                     lambda k, x: 0.5 if k < slow_from else 0.8, 0.5)
    _ends_in_budget(trainer, clock, 2.0)
    f = trainer.cfg.fitted
    assert f["refits"] >= 1 and f["total_steps"] < f["planned_steps"]
    assert any(line.startswith("time budget: 800 ms per step") for line in logs), logs


def test_a_machine_faster_than_the_probe_gets_more_steps(tmp_path, monkeypatch):
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 2.0, lambda k, x: 0.4, 0.6)
    _ends_in_budget(trainer, clock, 2.0)
    f = trainer.cfg.fitted
    assert f["total_steps"] > f["planned_steps"]


def test_every_evaluation_with_tta_and_the_ema_recalibration_are_counted(tmp_path, monkeypatch):
    trainer, clock, _ = _fake_run(tmp_path, monkeypatch, 1.0, lambda k, x: 0.3, 0.3, eval_img=0.05,
                                  eval_every=1, tta="flip", ema=0.9)
    _ends_in_budget(trainer, clock, 1.0)
    rows = trainer.history
    assert all(r["test_acc"] is not None for r in rows)  # every epoch evaluated


def test_only_the_last_epoch_is_evaluated_with_eval_every_0(tmp_path, monkeypatch):
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 1.0, lambda k, x: 0.3, 0.3, eval_every=0)
    rows = trainer.history
    assert [r["test_acc"] is None for r in rows] == [True] * (len(rows) - 1) + [False]
    assert any("(not evaluated)" in line for line in logs)


def test_a_resumed_run_counts_the_time_of_its_earlier_sessions(tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        _fake_run(tmp_path, monkeypatch, 2.0, lambda k, x: 0.5, 0.5, stop_at=101)
    state = load_checkpoint(str(tmp_path / "run" / "last.ckpt"))
    used = state["budget_used_s"]
    # loading and the probe, 100 steps, and 50 evaluations of 32 images (one per epoch)
    assert state["step"] == 100 and used == pytest.approx(3.0 + 100 * 0.5 + 50 * 0.32, abs=1e-6)
    clock = Clock()
    trainer, clock, logs = _fake_run(tmp_path, monkeypatch, 2.0, lambda k, x: 0.5, 0.5,
                                     clock=clock, resume=True)
    assert clock.t + used <= 120 and clock.t + used >= 0.95 * 120
    assert trainer.step == trainer.cfg.fitted["total_steps"]


def test_a_budget_too_small_for_one_step_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--time-budget 0.05 min is too short for one step: "
                                          r"loading the data and the probe took 3.0 s.*"
                                          r"give at least --time-budget 0.1"):
        _fake_run(tmp_path, monkeypatch, 0.05, lambda k, x: 0.5, 0.5)


def test_the_command_says_a_budget_is_too_small_in_one_line(tmp_path):
    from tests.data import python_batches, python_members, write_folder
    data = str(tmp_path / "data")
    write_folder(data, python_members(python_batches(np.random.default_rng(0), (16,) * 5, 10)))
    code, out, err = run_cli(["train", "--data", data, "--out", tmp_path / "o", "--no-progress",
                              "--time-budget", "0.01"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("minires train: error: --time-budget 0.01 min is too short for one step")


@pytest.mark.parametrize("flag,value,message", [
    ("--ema", "1.5", "--ema must be 0 (off) or a decay in (0, 1)"),
    ("--ema", "-0.1", "--ema must be 0 (off) or a decay in (0, 1)"),
    ("--eval-every", "-1", "--eval-every must be a whole number >= 0"),
])
def test_out_of_range_values_are_one_line_errors(tmp_path, flag, value, message):
    code, out, err = run_cli(["train", "--data", tmp_path, "--out", tmp_path / "o", flag, value])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"minires train: error: {message}")


def test_time_budget_defaults_to_the_budget_recipe_and_flags_override_it(tmp_path, monkeypatch):
    import minires.cli_train as ct
    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(cfg, **kw):
        seen["cfg"] = cfg
        raise Stop
    monkeypatch.setattr(tr, "Trainer", fake_trainer)
    for argv in (["--time-budget", "15"], ["--time-budget", "15", "--tta", "none"], []):
        with pytest.raises(Stop):
            ct.run_train(ct_args(argv, tmp_path))
        cfg = seen["cfg"]
        if argv == ["--time-budget", "15"]:
            assert (cfg.batch_size, cfg.ema, cfg.tta, cfg.eval_every) == (256, 0.0, "flip", 0)
            assert cfg.no_decay_bn_bias and cfg.anneal == "linear" and cfg.early_crop == 24
        elif argv:
            assert (cfg.ema, cfg.tta, cfg.batch_size) == (0.0, "none", 256)
        else:  # no budget: the fast recipe, as before
            assert (cfg.batch_size, cfg.ema, cfg.tta, cfg.eval_every) == (128, 0.0, "none", 1)


def ct_args(argv, tmp_path):
    from minires.cli import build_parser
    return build_parser().parse_args(["train", "--data", str(tmp_path), "--out",
                                      str(tmp_path / "o"), *argv])
