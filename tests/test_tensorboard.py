"""`minires train --tensorboard`: the event file read back with TensorBoard's
own reader holds exactly the run's metrics.jsonl numbers, the schedule's
learning rates and a gradient histogram per layer per epoch; logging does not
change the run; a crashed and resumed run shows each step once; and without
tensorboardX the flag is a one-line error before anything runs."""
import json
import math
import os
import sys

import numpy as np
import pytest

from minires import nn, optim
from minires.cli import main
from minires.engine import build_schedule
from minires.train import OneProcess, TrainConfig, Trainer
from tests.data import python_batches, python_members, write_folder

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

STEPS_PER_EPOCH = 15  # 120 training images, batch 8
LOGGED = [10, 15, 25, 30]  # the trainer reads its counters every 10 steps and at each epoch's end


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """A python-format CIFAR-10 folder: 5 x 24 training images, 40 test images."""
    root = tmp_path_factory.mktemp("tb") / "data"
    rng = np.random.default_rng(0)
    write_folder(str(root), python_members(python_batches(rng, per_batch=(24,) * 5, test_size=40)))
    return str(root)


def _train(data, out, *extra):
    return main(["train", "--model", "resnet20", "--data", data, "--epochs", "2",
                 "--batch-size", "8", "--lr", "0.1", "--schedule", "onecycle", "--out", out,
                 "--no-progress", "--seed", "1", *extra])


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _events(logdir):
    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def f32(v):  # event files store scalars as float32
    return float(np.float32(v))


@pytest.fixture(scope="module")
def logged_run(tiny_cifar, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tb") / "run")
    assert _train(tiny_cifar, out, "--tensorboard") == 0
    return out, _metrics(out), _events(out)


def test_epoch_scalars_are_the_metrics_jsonl_rows(logged_run):
    out, rows, acc = logged_run
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert _scalars(acc, f"epoch/{key}") == [(r["step"], f32(r[key])) for r in rows], key


def test_step_scalars_follow_the_schedule_and_the_loss_curve(logged_run):
    out, rows, acc = logged_run
    # the training loss of each logged window is metrics.jsonl's loss_curve
    curve = [v for r in rows for v in r["loss_curve"]]
    assert _scalars(acc, "step/train_loss") == [(s, f32(v)) for s, v in zip(LOGGED, curve)]
    # the lr at each logged step: the one that step used, the schedule itself
    # stepped one time fewer
    cfg = TrainConfig(**{k: v for k, v in json.load(open(os.path.join(out, "config.json"))).items()
                         if k != "fitted"})
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=cfg.lr)
    sched = build_schedule(opt, cfg, 2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    expected = {}
    for step in range(1, 2 * STEPS_PER_EPOCH + 1):
        expected[step] = opt.param_groups[0]["lr"]
        sched.step()
    lrs = _scalars(acc, "step/lr")
    assert lrs == [(s, f32(expected[s])) for s in LOGGED]
    assert len({v for _, v in lrs}) == len(LOGGED)  # one-cycle: it does move
    assert lrs[-1][1] == f32(rows[-1]["lr"])  # and metrics.jsonl logs the same lr
    # images/s over each window: together the windows take the epoch's time
    ips = dict(_scalars(acc, "step/images_per_s"))
    assert sorted(ips) == LOGGED and min(ips.values()) > 0
    for row, windows in zip(rows, ((10, 15), (25, 30))):
        images = {10: 80, 15: 40, 25: 80, 30: 40}
        seconds = sum(images[s] / ips[s] for s in windows)
        assert seconds == pytest.approx(120 / row["images_per_s"], rel=0.05)


def test_gradient_histograms_per_layer_per_epoch(logged_run):
    from minires.models import get
    out, rows, acc = logged_run
    model = get("resnet20")
    layers = {name: m.weight.data.size for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))}
    hist_tags = acc.Tags()["histograms"]
    by_layer = {t.split("_", 1)[1]: t for t in (t.split("/", 1)[1] for t in hist_tags)}
    assert set(by_layer) == set(layers)
    depth = {name: int(tag.split("_", 1)[0]) for name, tag in by_layer.items()}
    assert depth["conv1"] == 1 and depth["linear"] == max(depth.values()) == 20  # 20 layers
    epoch_steps = [r["step"] for r in rows]
    for name, tag in by_layer.items():
        hists = acc.Histograms(f"grad_hist/{tag}")
        norms = _scalars(acc, f"grad_norm/{tag}")
        assert [h.step for h in hists] == [s for s, _ in norms] == epoch_steps, name
        for h, (_, norm) in zip(hists, norms):
            assert h.histogram_value.num == layers[name]  # every entry of dL/dW
            # the histogram's entries and the norm scalar are the same gradient
            assert math.sqrt(h.histogram_value.sum_squares) == pytest.approx(norm, rel=1e-4)
            assert norm > 0


def test_logging_does_not_change_the_run(logged_run, tiny_cifar, tmp_path):
    out, rows, _ = logged_run
    plain = str(tmp_path / "plain")
    assert _train(tiny_cifar, plain) == 0
    timing = ("images_per_s", "elapsed_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(_metrics(plain)) == strip(rows)
    assert not [f for f in os.listdir(plain) if f.startswith("events.out")]


class _Crash(Exception):
    pass


class _CrashAt:
    """Kills the run (after the TensorBoard logger has logged it) at one step."""
    def __init__(self, step):
        self.step = step

    def on_log_step(self, trainer, record):
        if record["step"] == self.step:
            raise _Crash


def test_a_resumed_run_shows_each_step_once(tiny_cifar, tmp_path):
    from minires.tensorboard import TensorBoardLogger
    out, logdir = str(tmp_path / "run"), str(tmp_path / "tb")
    cfg = dict(model="resnet20", data=tiny_cifar, epochs=2, batch_size=8, lr=0.1, out=out,
               progress=False, seed=1)
    with pytest.raises(_Crash):  # dies at step 25, after the epoch-1 checkpoint (step 15)
        Trainer(TrainConfig(**cfg), log=lambda *a: None,
                callbacks=[TensorBoardLogger(logdir), _CrashAt(25)]).run()
    Trainer(TrainConfig(**cfg), log=lambda *a: None,
            callbacks=[TensorBoardLogger(logdir)]).run(resume=True)
    rows = _metrics(out)
    acc = _events(logdir)
    # step 25 of the dead session is dropped: each step once, the resumed run's values
    curve = [v for r in rows for v in r["loss_curve"]]
    assert _scalars(acc, "step/train_loss") == [(s, f32(v)) for s, v in zip(LOGGED, curve)]
    assert [s for s, _ in _scalars(acc, "epoch/test_acc")] == [15, 30]


class _Follower(OneProcess):
    is_main = False  # as MPI rank 1


def test_only_the_main_worker_writes(tiny_cifar, tmp_path):
    from minires.tensorboard import TensorBoardLogger
    logdir = tmp_path / "tb"
    cfg = TrainConfig(model="resnet20", data=tiny_cifar, epochs=1, batch_size=8, max_steps=10,
                      out=str(tmp_path / "run"), progress=False)
    logger = TensorBoardLogger(str(logdir), probe_size=16)
    Trainer(cfg, workers=_Follower(), callbacks=[logger]).run()
    assert not logdir.exists() and logger.writer is None


def test_without_tensorboardx_the_flag_is_a_one_line_error(tiny_cifar, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` fails
    out = str(tmp_path / "run")
    assert _train(tiny_cifar, out, "--tensorboard") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("minires train: error: --tensorboard needs tensorboardX")
    assert "pip install -e '.[tensorboard]'" in err
    assert not os.path.exists(out)  # nothing ran
