"""The fault matrix: Ctrl-C, SIGTERM and kill -9 lose nothing beyond what the
docs say, end with one line on stderr and a shell's exit status, and a resumed
run ends bit-identical to an uninterrupted one.

Child processes are never waited on for a fixed time: each test waits on the
child's own state (its first checkpoint, its exit) with a deadline, then
signals it after a short random delay, so the signal lands at a random step.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minires.train as tr
from minires.checkpoint import load_checkpoint
from minires.cli import main
from tests.data import tiny_cifar_folder
from tests.helpers import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "minires"]
ENV = dict(os.environ, PYTHONPATH=ROOT)
STEPS_PER_EPOCH = 60  # 240 images in batches of 4: slow enough steps to land in
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """240 training images, 40 test images."""
    return tiny_cifar_folder(tmp_path_factory.mktemp("interrupts") / "data")


def train_args(data, out, *extra):
    return ["train", "--model", "resnet20", "--data", data, "--epochs", str(EPOCHS),
            "--batch-size", "4", "--lr", "0.05", "--out", out, "--no-progress", "--seed", "3",
            *extra]


@pytest.fixture(scope="module")
def reference(tiny_cifar, tmp_path_factory):
    """The uninterrupted run's last.ckpt and metrics."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    subprocess.run(CMD + train_args(tiny_cifar, out, "--threads", "2"), check=True, env=ENV,
                   stdout=subprocess.DEVNULL)
    return load_checkpoint(os.path.join(out, "last.ckpt")), read_metrics(out)


def read_metrics(out):
    keep = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
            "loss_curve")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: json.loads(line)[k] for k in keep} for line in f]


def assert_same_run(reference, out):
    """Every array of the finished runs' checkpoints, bit for bit, and the metrics."""
    ref_state, ref_metrics = reference
    state = load_checkpoint(os.path.join(out, "last.ckpt"))
    assert state["step"] == ref_state["step"] == EPOCHS * STEPS_PER_EPOCH
    assert list(state["model"]) == list(ref_state["model"])
    for k in ref_state["model"]:
        np.testing.assert_array_equal(state["model"][k], ref_state["model"][k], err_msg=k)
    ref_opt = ref_state["optimizer"]["state"]
    assert len(ref_opt) == len(state["optimizer"]["state"]) > 0
    for i, st in ref_opt.items():
        np.testing.assert_array_equal(state["optimizer"]["state"][i]["momentum_buffer"],
                                      st["momentum_buffer"])
    assert state["schedule"] == ref_state["schedule"]
    assert read_metrics(out) == ref_metrics


def start(data, out, *extra):
    return subprocess.Popen(CMD + train_args(data, out, *extra), env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def first_checkpoint(out):
    return lambda: os.path.exists(os.path.join(out, "last.ckpt"))


STOPPED = re.compile(r"minires train: (interrupted|terminated \(SIGTERM\)) "
                     r"(at epoch (\d+) step (\d+)|at the end of epoch (\d+) \(step (\d+)\)); "
                     r"saved (\S+); continue with: minires train --resume --out (\S+)")


@pytest.mark.parametrize("sig,seed,resume_threads", [(signal.SIGINT, 0, "2"),
                                                     (signal.SIGTERM, 1, "2"),
                                                     (signal.SIGINT, 2, "1")])
def test_a_signal_at_a_random_step_saves_and_the_resumed_run_is_bit_identical(
        tiny_cifar, reference, tmp_path, sig, seed, resume_threads):
    out = str(tmp_path / "run")
    proc = start(tiny_cifar, out, "--threads", "2")
    wait_for(first_checkpoint(out), proc, "the first epoch's checkpoint")
    time.sleep(np.random.default_rng(seed).uniform(0.0, 1.5))  # a random step of epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    m = STOPPED.fullmatch(lines[0])
    assert m, lines[0]
    assert m.group(1) == ("interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)")
    assert m.group(7) == os.path.join(out, "last.ckpt") and m.group(8) == out
    # nothing lost: the checkpoint holds every step the message names
    state = load_checkpoint(os.path.join(out, "last.ckpt"))
    step = int(m.group(4) or m.group(6))
    assert state["step"] == step < EPOCHS * STEPS_PER_EPOCH
    if m.group(3):  # in the middle of an epoch: the position inside it is saved
        assert state["position"]["batch"] == step - state["epoch"] * STEPS_PER_EPOCH > 0
    resumed = subprocess.run(CMD + ["train", "--resume", "--out", out, "--no-progress",
                                    "--threads", resume_threads],
                             env=ENV, text=True, capture_output=True, check=True)
    if resume_threads == "1":
        assert "resumed on 1 thread (the run had 2)" in resumed.stdout
    assert_same_run(reference, out)


def test_kill_9_loses_at_most_the_periodic_checkpoint_interval(tiny_cifar, reference, tmp_path):
    out = str(tmp_path / "run")
    proc = start(tiny_cifar, out, "--checkpoint-every", "0.005")  # every 0.3 s

    def mid_epoch_checkpoint():
        try:
            return load_checkpoint(os.path.join(out, "last.ckpt")).get("position") is not None
        except Exception:  # not there yet
            return False
    wait_for(mid_epoch_checkpoint, proc, "a mid-epoch checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    state = load_checkpoint(os.path.join(out, "last.ckpt"))
    assert state["position"] is not None and state["step"] % STEPS_PER_EPOCH
    subprocess.run(CMD + ["train", "--resume", "--out", out, "--no-progress"], env=ENV,
                   check=True, capture_output=True)
    assert_same_run(reference, out)


# ---------------------------------------------------------------- in one process
def signal_at(monkeypatch, sig, at_step):
    """Send ``sig`` to this process from inside the training step ``at_step``."""
    real = tr.OneProcess.train_step

    def step(self, trainer, x, y, i):
        if trainer.step + 1 == at_step:
            os.kill(os.getpid(), sig)
        return real(self, trainer, x, y, i)
    monkeypatch.setattr(tr.OneProcess, "train_step", step)


def test_a_second_ctrl_c_while_saving_keeps_the_previous_checkpoint_whole(
        tiny_cifar, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    signal_at(monkeypatch, signal.SIGINT, STEPS_PER_EPOCH + 7)  # step 7 of epoch 2
    real_save, saves = tr.save_checkpoint, []

    def save_interrupted_again(path, state):
        saves.append(state["step"])
        if state["position"] is None:  # the first epoch's end: a normal save
            return real_save(path, state)
        from minires.fileio import atomic_write
        with atomic_write(path) as f:
            f.write(b"MINIRES-CKPT-2\n half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again
            f.write(b" the rest")
    monkeypatch.setattr(tr, "save_checkpoint", save_interrupted_again)
    assert main(train_args(tiny_cifar, out)) == 130
    assert saves == [STEPS_PER_EPOCH] * 2 + [STEPS_PER_EPOCH + 7]  # best, last; then the stop
    err = capsys.readouterr().err.strip()
    assert err == (f"minires train: interrupted (SIGINT) again: stopped without saving; "
                   f"{os.path.join(out, 'last.ckpt')} holds the run as last saved")
    state = load_checkpoint(os.path.join(out, "last.ckpt"))  # whole, and the epoch's end
    assert state["step"] == STEPS_PER_EPOCH and state["position"] is None
    assert sorted(os.listdir(out)) == ["best.ckpt", "config.json", "last.ckpt", "metrics.jsonl"]


def test_ctrl_c_before_training_starts_saves_nothing(tiny_cifar, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")

    def interrupted_read(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt
        raise AssertionError("the signal should have stopped the read")
    monkeypatch.setattr(tr, "read_data", interrupted_read)
    assert main(train_args(tiny_cifar, out)) == 130
    assert capsys.readouterr().err.strip() == \
        "minires train: interrupted (SIGINT); nothing was saved"
    assert not os.path.exists(os.path.join(out, "last.ckpt"))


@pytest.fixture(scope="module")
def trained(tiny_cifar, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trained") / "run")
    subprocess.run(CMD + ["train", "--model", "resnet20", "--data", tiny_cifar, "--epochs", "1",
                          "--batch-size", "32", "--out", out, "--no-progress"],
                   check=True, env=ENV, stdout=subprocess.DEVNULL)
    return os.path.join(out, "last.ckpt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "gradflow"])
def test_other_commands_end_with_one_line_and_the_signals_status(
        command, sig, tiny_cifar, trained, tmp_path, monkeypatch, capsys):
    import minires.checkpoint
    import minires.gradflow.command
    from PIL import Image

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have stopped the command")
    # each command is stopped inside its own work, not before it starts
    monkeypatch.setattr(minires.checkpoint, "load_checkpoint", signalled)
    monkeypatch.setattr(minires.gradflow.command, "gradflow_experiment", signalled)
    image = str(tmp_path / "cat.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = {"eval": ["eval", "--checkpoint", trained, "--data", tiny_cifar],
            "predict": ["predict", "--checkpoint", trained, image],
            "export": ["export", "--checkpoint", trained, "--out", str(tmp_path / "w.safetensors")],
            "gradflow": ["gradflow", "--models", "resnet20", "--random-data",
                         "--out", str(tmp_path / "g.png")]}[command]
    assert main(argv) == 128 + sig
    what = "interrupted (SIGINT)" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert capsys.readouterr().err.strip() == f"minires {command}: {what}"


def test_checkpoint_every_is_checked(tiny_cifar, tmp_path, capsys):
    assert main(train_args(tiny_cifar, str(tmp_path / "r"), "--checkpoint-every", "-1")) == 2
    assert "--checkpoint-every must be a number of minutes >= 0" in capsys.readouterr().err


def test_resume_override_of_the_lr_under_one_cycle_follows_the_new_peak(
        tiny_cifar, tmp_path, monkeypatch, capsys):
    import torch
    out = str(tmp_path / "run")
    signal_at(monkeypatch, signal.SIGINT, 100)  # step 40 of epoch 2
    assert main(train_args(tiny_cifar, out, "--schedule", "onecycle")) == 130
    monkeypatch.undo()
    assert main(["train", "--resume", "--resume-override", "--out", out, "--lr", "0.2",
                 "--no-progress"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))
    total = cfg["fitted"]["total_steps"]

    def torch_one_cycle(peak):
        """lr after each step of torch's OneCycleLR over the run's steps."""
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=peak, total_steps=total, pct_start=cfg["pct_start"],
            anneal_strategy=cfg["anneal"])
        lrs = [opt.param_groups[0]["lr"]]
        for _ in range(total):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs
    old, new = torch_one_cycle(0.05), torch_one_cycle(0.2)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [60, 120, 180]
    # each row logs the lr its last step used: after step s - 1 of the schedule
    assert rows[0]["lr"] == pytest.approx(old[59], rel=1e-12)  # before the override
    for r in rows[1:]:  # after it: the new peak's curve, from the step it resumed at
        assert r["lr"] == pytest.approx(new[r["step"] - 1], rel=1e-12)
        assert r["lr"] != pytest.approx(old[r["step"] - 1], rel=1e-3)
