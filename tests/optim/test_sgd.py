"""SGD against torch.optim.SGD: same weights after several steps."""
import numpy as np
import pytest
import torch

from minires.nn import Parameter
from minires.optim import SGD
from tests.helpers import assert_close

CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4),
]


def _run_both(config, steps=6, dtype=np.float64, groups=None):
    rng = np.random.default_rng(1)
    shapes = [(4, 3), (3,), (2, 2, 3, 3)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    mp = [Parameter(a.copy()) for a in init]
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    if groups:
        mopt = SGD([{"params": [mp[i] for i in g], **o} for g, o in groups], **config)
        topt = torch.optim.SGD([{"params": [tp[i] for i in g], **o} for g, o in groups], **config)
    else:
        mopt, topt = SGD(mp, **config), torch.optim.SGD(tp, **config)
    for k in range(steps):
        for p, t, g in zip(mp, tp, grads[k]):
            p.grad = g.copy()
            t.grad = torch.tensor(g.copy())
        mopt.step()
        topt.step()
    return mp, tp, mopt


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_torch(config, dtype):
    mp, tp, _ = _run_both(config, dtype=dtype)
    for p, t in zip(mp, tp):
        assert p.data.dtype == dtype
        assert_close(p.data, t, 1e-6 if dtype == np.float32 else 1e-12, "SGD weights")


def test_param_groups_no_decay_on_bias():
    groups = [([0, 2], {"weight_decay": 1e-2}), ([1], {"weight_decay": 0.0, "lr": 0.01})]
    mp, tp, _ = _run_both(dict(lr=0.1, momentum=0.9), groups=groups)
    for p, t in zip(mp, tp):
        assert_close(p.data, t, 1e-12, "grouped SGD")


def test_state_dict_round_trip_continues_identically():
    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    rng = np.random.default_rng(0)
    a = [Parameter(rng.standard_normal((3, 3))) for _ in range(2)]
    b = [Parameter(p.data.copy()) for p in a]
    oa, ob = SGD(a, **cfg), SGD(b, **cfg)
    gs = [[rng.standard_normal((3, 3)) for _ in range(2)] for _ in range(4)]
    for k in range(2):
        for p, q, g in zip(a, b, gs[k]):
            p.grad, q.grad = g.copy(), g.copy()
        oa.step()
        ob.step()
    ob2 = SGD(b, lr=999.0, momentum=0.5, nesterov=True)
    ob2.load_state_dict(ob.state_dict())
    for k in range(2, 4):
        for p, q, g in zip(a, b, gs[k]):
            p.grad, q.grad = g.copy(), g.copy()
        oa.step()
        ob2.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


def test_bad_arguments():
    p = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        SGD(p, lr=-1)
    with pytest.raises(ValueError, match="more than one"):
        SGD([{"params": p}, {"params": p}], lr=0.1)


def test_zero_grad_and_skip_none():
    p = Parameter(np.ones(2))
    opt = SGD([p], lr=0.1)
    opt.step()  # no grad: untouched
    np.testing.assert_array_equal(p.data, np.ones(2))
    p.grad = np.ones(2)
    opt.zero_grad()
    assert p.grad is None
