"""The trainer and the train/eval/plot commands, end to end on a tiny CIFAR look-alike."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minires.checkpoint import load_checkpoint, save_checkpoint
from minires.cli import main
from minires.train import TrainConfig, Trainer, NonFiniteLoss
from tests.data import python_batches, python_members, write_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_cifar(tmp_path):
    """A python-format CIFAR-10 folder: 5 x 24 training images, 40 test images."""
    rng = np.random.default_rng(0)
    batches = python_batches(rng, per_batch=(24,) * 5, test_size=40)
    write_folder(str(tmp_path / "data"), python_members(batches))
    return str(tmp_path / "data")


def _train_args(data, out, *extra):
    return ["train", "--model", "resnet20", "--data", data, "--epochs", "3", "--batch-size", "32",
            "--lr", "0.05", "--out", out, "--no-progress", "--seed", "3", *extra]


def _read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_writes_run_folder_and_eval_agrees(tiny_cifar, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(_train_args(tiny_cifar, out)) == 0
    rows = _read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["step"] == 3 * 4  # 120 images / 32 per batch = 4 steps per epoch
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["fitted"]["total_steps"] == 12 and cfg["model"] == "resnet20"
    state = load_checkpoint(os.path.join(out, "last.ckpt"))
    assert state["epoch"] == 3 and state["step"] == 12
    best = load_checkpoint(os.path.join(out, "best.ckpt"))
    assert best["best_acc"] == max(r["test_acc"] for r in rows)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", os.path.join(out, "last.ckpt"), "--data", tiny_cifar,
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 40
    # evaluating the saved weights reproduces the trainer's own end-of-run numbers
    assert res["accuracy"] == rows[-1]["test_acc"]
    assert res["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)


def test_checkpoint_checksum_detects_corruption(tmp_path):
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, {"w": np.arange(10.0)})
    assert np.array_equal(load_checkpoint(path)["w"], np.arange(10.0))
    blob = bytearray(open(path, "rb").read())
    blob[-3] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(path)
    open(path, "wb").write(bytes(blob[:40]))
    with pytest.raises(ValueError, match="corrupt or truncated|bad header"):
        load_checkpoint(path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_resume_after_sigkill_is_bit_identical(tiny_cifar, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "minires"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(cmd + _train_args(tiny_cifar, full), check=True, env=env,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(cmd + _train_args(tiny_cifar, killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(killed, "last.ckpt")
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run, right after the first epoch's checkpoint
    proc.wait()
    assert load_checkpoint(ckpt)["epoch"] < 3, "the run finished before it could be killed"
    subprocess.run(cmd + _train_args(tiny_cifar, killed, "--resume"), check=True, env=env,
                   stdout=subprocess.DEVNULL)
    a, b = load_checkpoint(os.path.join(full, "last.ckpt")), load_checkpoint(ckpt)
    assert list(a["model"]) == list(b["model"])
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    for i, st in a["optimizer"]["state"].items():
        np.testing.assert_array_equal(st["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    keep = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [{k: r[k] for k in keep} for r in _read_metrics(full)] == \
           [{k: r[k] for k in keep} for r in _read_metrics(killed)]


def _tiny_arrays(n=64, n_test=32):
    rng = np.random.default_rng(1)
    return ((rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)),
            (rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test)))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import minires.train as tr
    train, test = _tiny_arrays()
    cfg = TrainConfig(model="resnet20", epochs=3, batch_size=32, lr=0.05, out=str(tmp_path / "r"),
                      progress=False)
    real_step, calls = tr.train_step, []

    def poisoned(*a):
        loss, logits = real_step(*a)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 2 else loss), logits

    monkeypatch.setattr(tr, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match="non-finite.*epoch 2.*last good checkpoint"):
        Trainer(cfg, train, test, log=lambda *_: None).run()
    state = load_checkpoint(str(tmp_path / "r" / "last.ckpt"))
    assert state["epoch"] == 1
    assert all(np.isfinite(v).all() for v in state["model"].values())


def test_time_budget_run_is_fitted_once_and_not_refitted_on_resume(tmp_path):
    train, test = _tiny_arrays()
    out = str(tmp_path / "r")
    cfg = TrainConfig(model="resnet20", epochs=3, batch_size=32, lr=0.05, out=out,
                      progress=False, time_budget=0.2, schedule="onecycle")
    hist = Trainer(cfg, train, test, log=lambda *_: None).run()
    fitted = json.load(open(os.path.join(out, "config.json")))["fitted"]
    assert fitted["step_time_s"] > 0 and fitted["eval_s_per_image"] > 0
    assert 1 <= fitted["total_steps"] <= 3 * 2 and len(hist) == fitted["epochs"]
    cfg2 = TrainConfig(model="resnet20", epochs=3, batch_size=32, lr=0.05, out=out,
                       progress=False, time_budget=100.0)
    Trainer(cfg2, train, test, log=lambda *_: None).run(resume=True)
    assert json.load(open(os.path.join(out, "config.json")))["fitted"] == fitted


def test_plot_writes_png(tiny_cifar, tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    args = _train_args(tiny_cifar, out)
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 0
    assert main(["plot", out]) == 0
    png = os.path.join(out, "curves.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minires train: error: CIFAR-10 (train) not found under")


# ---------------------------------------------------------------- run folders (hardening)

def test_best_is_written_before_last_so_a_kill_between_them_cannot_leave_it_stale(tmp_path,
                                                                                   monkeypatch):
    """Epoch 2 is the best.  The process dies right after the first checkpoint
    write of epoch 2: with best written first, the resumed run redoes epoch 2
    and best.ckpt ends up holding it (written last-first, best.ckpt would keep
    epoch 1 for ever: the resumed run already counts 0.5 as its best)."""
    import minires.train as tr
    train, test = _tiny_arrays()
    accuracies = [0.1, 0.5, 0.3]

    def scripted_evaluate(self, final=False):
        return 1.0, accuracies[self.epoch]

    monkeypatch.setattr(tr.Trainer, "_evaluate", scripted_evaluate)

    class Killed(BaseException):
        pass

    real_save, writes = tr.save_checkpoint, []

    def dying_save(path, state):
        real_save(path, state)
        writes.append(os.path.basename(path))
        if state["epoch"] == 2:
            raise Killed  # as if SIGKILLed right after this write

    def cfg():
        return TrainConfig(model="resnet20", epochs=3, batch_size=32, lr=0.05,
                           out=str(tmp_path / "r"), progress=False)
    monkeypatch.setattr(tr, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        Trainer(cfg(), train, test, log=lambda *a: None).run()
    assert writes[-1] == "best.ckpt"  # epoch 2's first write was best.ckpt
    assert load_checkpoint(str(tmp_path / "r" / "last.ckpt"))["epoch"] == 1
    monkeypatch.setattr(tr, "save_checkpoint", real_save)
    Trainer(cfg(), train, test, log=lambda *a: None).run(resume=True)
    best = load_checkpoint(str(tmp_path / "r" / "best.ckpt"))
    assert best["epoch"] == 2 and best["best_acc"] == 0.5
    assert load_checkpoint(str(tmp_path / "r" / "last.ckpt"))["epoch"] == 3


def test_resume_refuses_changed_settings_unless_overridden(tiny_cifar, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(_train_args(tiny_cifar, out)) == 0
    config_before = open(os.path.join(out, "config.json")).read()
    capsys.readouterr()
    # the same flags again, or none at all: the run continues as it was
    assert main(_train_args(tiny_cifar, out, "--resume")) == 0
    assert main(["train", "--resume", "--out", out, "--no-progress"]) == 0
    assert json.loads(open(os.path.join(out, "config.json")).read())["lr"] == 0.05
    capsys.readouterr()
    # a changed learning rate and batch size: refused, naming both, config.json untouched
    assert main(["train", "--resume", "--out", out, "--lr", "0.1", "--batch-size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minires train: error: --resume:") and len(err.splitlines()) == 1
    assert "--lr 0.1 (the run has 0.05)" in err and "--batch-size 16 (the run has 32)" in err
    assert json.loads(open(os.path.join(out, "config.json")).read()) == json.loads(config_before)
    # with --resume-override the change goes through and is recorded
    assert main(["train", "--resume", "--resume-override", "--out", out, "--lr", "0.1",
                 "--no-progress"]) == 0
    record = [json.loads(line) for line in open(os.path.join(out, "resume_overrides.jsonl"))]
    assert record[-1]["changed"] == {"lr": {"was": 0.05, "now": 0.1}}
    assert json.loads(open(os.path.join(out, "config.json")).read())["lr"] == 0.1


def test_a_full_disk_stops_the_run_with_one_line(tiny_cifar, tmp_path):
    import resource
    limit = 1 << 20  # the data and config.json fit; a 2 MB ResNet-20 checkpoint does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = str(tmp_path / "full")
    proc = subprocess.run([sys.executable, "-m", "minires", *_train_args(tiny_cifar, out)],
                          capture_output=True, text=True, preexec_fn=small_files, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT,
                                   MINIRES_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("minires train: error: could not write") and ".ckpt" in lines[0]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


