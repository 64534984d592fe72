"""Each schedule against torch.optim.lr_scheduler, step by step."""
import numpy as np
import pytest
import torch

from minires.nn import Parameter
from minires.optim import (SGD, MultiStepLR, CosineAnnealingLR, LinearLR, SequentialLR,
                           OneCycleLR)


def _pair(momentum=0.9, lr=0.1):
    mo = SGD([Parameter(np.zeros(2))], lr=lr, momentum=momentum)
    to = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr, momentum=momentum)
    return mo, to


def _compare(ms, ts, mo, to, steps, momentum=False):
    for t in range(steps):
        assert mo.param_groups[0]["lr"] == pytest.approx(to.param_groups[0]["lr"], rel=1e-12, abs=1e-15), t
        if momentum:
            assert mo.param_groups[0]["momentum"] == pytest.approx(
                to.param_groups[0]["momentum"], rel=1e-12), t
        to.step()
        ms.step()
        ts.step()


def test_multistep_he2015():
    mo, to = _pair()
    _compare(MultiStepLR(mo, [50, 75], 0.1), torch.optim.lr_scheduler.MultiStepLR(to, [50, 75], 0.1),
             mo, to, 100)


def test_cosine():
    mo, to = _pair()
    _compare(CosineAnnealingLR(mo, 40, eta_min=1e-4),
             torch.optim.lr_scheduler.CosineAnnealingLR(to, 40, eta_min=1e-4), mo, to, 41)


def test_linear_warmup():
    mo, to = _pair()
    _compare(LinearLR(mo, 0.1, 1.0, 7), torch.optim.lr_scheduler.LinearLR(to, 0.1, 1.0, 7),
             mo, to, 15)


def test_warmup_then_cosine():
    mo, to = _pair()
    ms = SequentialLR(mo, [LinearLR(mo, 0.1, 1.0, 5), CosineAnnealingLR(mo, 20)], [5])
    tsch = torch.optim.lr_scheduler
    ts = tsch.SequentialLR(to, [tsch.LinearLR(to, 0.1, 1.0, 5), tsch.CosineAnnealingLR(to, 20)], [5])
    _compare(ms, ts, mo, to, 25)


@pytest.mark.parametrize("pct,strategy", [(0.3, "cos"), (0.25, "linear"), (0.15, "cos")])
def test_one_cycle_cycles_lr_and_momentum_like_torch(pct, strategy):
    mo, to = _pair()
    kw = dict(max_lr=0.2, total_steps=50, pct_start=pct, anneal_strategy=strategy)
    _compare(OneCycleLR(mo, **kw), torch.optim.lr_scheduler.OneCycleLR(to, **kw), mo, to, 50,
             momentum=True)


def test_one_cycle_refuses_stepping_past_the_end():
    mo, _ = _pair()
    s = OneCycleLR(mo, max_lr=0.1, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="total_steps"):
        s.step()


def test_state_dict_resume_is_exact():
    mo, _ = _pair()
    s = OneCycleLR(mo, max_lr=0.2, total_steps=30)
    for _ in range(11):
        s.step()
    sd = s.state_dict()
    mo2, _ = _pair()
    s2 = OneCycleLR(mo2, max_lr=0.2, total_steps=30)
    s2.load_state_dict(sd)
    for _ in range(10):
        s.step()
        s2.step()
        assert mo.param_groups[0]["lr"] == mo2.param_groups[0]["lr"]


@pytest.mark.parametrize("total", range(1, 11))
@pytest.mark.parametrize("pct", [0.1, 0.25, 0.3, 0.5, 1.0])
def test_one_cycle_short_runs_match_torch_or_fail_clearly(total, pct):
    """Very short runs: where torch divides by zero (a phase of zero length),
    minires refuses at construction with a clear message; elsewhere they agree."""
    mo, to = _pair()
    kw = dict(max_lr=0.2, total_steps=total, pct_start=pct)
    try:
        ts = torch.optim.lr_scheduler.OneCycleLR(to, **kw)
        lrs = []
        for _ in range(total):
            lrs.append(to.param_groups[0]["lr"])
            to.step()
            ts.step()
    except ZeroDivisionError:
        with pytest.raises(ValueError, match=rf"OneCycleLR: total_steps={total} .*zero length"):
            OneCycleLR(mo, **kw)
        return
    ms = OneCycleLR(mo, **kw)
    for t in range(total):
        assert mo.param_groups[0]["lr"] == pytest.approx(lrs[t], rel=1e-12), t
        ms.step()


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_lr_at_is_the_lr_torch_steps_through(strategy):
    """lr_at(t, initial lr) in closed form, for every t, against torch's
    stepped OneCycleLR (not against minires's own step())."""
    _, to = _pair()
    kw = dict(max_lr=0.2, total_steps=40, pct_start=0.3, anneal_strategy=strategy)
    ts = torch.optim.lr_scheduler.OneCycleLR(to, **kw)
    mo, _ = _pair()
    s = OneCycleLR(mo, **kw)
    initial = 0.2 / 25.0
    for t in range(41):
        assert s.lr_at(t, initial) == pytest.approx(to.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        if t < 40:
            ts.step()


@pytest.mark.parametrize("pct", [0.1, 0.25, 0.3, 0.5, 0.2, 1 / 3])
def test_schedule_steps_gives_a_count_torch_can_run(pct):
    """A time budget may fit any step count: ``engine.schedule_steps`` keeps it,
    or takes one step fewer exactly where torch's OneCycleLR would divide by
    zero (checked by running torch's schedule over every count up to 200)."""
    from minires.config import TrainConfig
    from minires.engine import schedule_steps
    cfg = TrainConfig(schedule="onecycle", pct_start=pct)
    for total in range(1, 201):
        fitted = schedule_steps(cfg, total)
        _, to = _pair()
        try:
            torch.optim.lr_scheduler.OneCycleLR(to, max_lr=0.2, total_steps=total, pct_start=pct)
            torch_runs = True
        except ZeroDivisionError:
            torch_runs = False
        assert fitted == (total if torch_runs else total - 1), (total, fitted)
        _, to = _pair()
        torch.optim.lr_scheduler.OneCycleLR(to, max_lr=0.2, total_steps=fitted, pct_start=pct)
    assert schedule_steps(TrainConfig(schedule="cosine"), 4) == 4  # only one-cycle has the gap
