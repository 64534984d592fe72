"""Training on the GPU: no host-device transfer inside a step, and the trainer
and CLI end to end with --device cuda."""
import json
import os

import numpy as np
import pytest

import minires
from minires import backend, nn, optim
from minires.cli import main
from minires.models import resnet20
from minires.train import train_step
from tests.test_train import tiny_cifar  # noqa: F401  (a fixture)

pytestmark = pytest.mark.gpu


def _step_parts(batch=32):
    model = resnet20().to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = optim.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1, check_targets=False)
    rng = np.random.default_rng(0)
    x = minires.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), "cuda")
    y = minires.to_device(rng.integers(0, 10, batch), "cuda")
    return model, crit, opt, sched, x, y


def test_training_step_makes_no_host_device_transfer(monkeypatch):
    """cupyx.allow_synchronize(False) raises on any device synchronisation, which
    every device-to-host copy (float(), .get(), bool(), a range check) implies;
    minires's own host<->device helper is counted as well."""
    import cupyx
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize (removed after its deprecation)")
    parts = _step_parts()
    train_step(*parts)  # warm-up outside the guard: kernel compilation, pool growth
    calls = []
    real = backend.to_device
    monkeypatch.setattr(backend, "to_device", lambda *a, **k: calls.append(a) or real(*a, **k))
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            loss, _ = train_step(*parts)
    assert calls == [], f"host<->device copies inside the step: {len(calls)}"
    # ...and the guard can fail: reading the loss is a sync
    with pytest.raises(cupyx.DeviceSynchronized):
        with cupyx.allow_synchronize(False):
            float(loss)
    assert np.isfinite(float(loss))


def test_memory_pool_is_reused_across_steps():
    """The second and later steps take their buffers from CuPy's pool (and the
    im2col workspace) instead of growing it."""
    import cupy
    parts = _step_parts()
    pool = cupy.get_default_memory_pool()
    for _ in range(2):
        train_step(*parts)
    cupy.cuda.Device().synchronize()
    held = pool.total_bytes()
    for _ in range(3):
        train_step(*parts)
    cupy.cuda.Device().synchronize()
    assert pool.total_bytes() <= held * 1.05, (held, pool.total_bytes())


def test_train_cli_on_the_gpu_and_eval_on_the_cpu(tiny_cifar, tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--model", "resnet20", "--data", tiny_cifar, "--epochs", "2",
               "--batch-size", "32", "--lr", "0.05", "--out", out, "--no-progress",
               "--device", "cuda", "--seed", "1"])
    assert rc == 0
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert len(metrics) == 2 and all(np.isfinite(m["train_loss"]) for m in metrics)
    capsys.readouterr()
    # a checkpoint written from the GPU loads and evaluates on a CPU-only machine
    assert main(["eval", "--checkpoint", os.path.join(out, "last.ckpt"), "--data", tiny_cifar,
                 "--device", "cpu", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert abs(res["accuracy"] - metrics[-1]["test_acc"]) <= 1 / 40  # float32 near-ties
    assert abs(res["loss"] - metrics[-1]["test_loss"]) < 1e-4
