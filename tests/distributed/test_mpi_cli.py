"""`mpiexec -n 2 python -m minires train --distributed ...` end to end, on a
tiny image-folder tar archive: the run trains, only rank 0 writes the run
folder, the checkpoint loads and evaluates, and --resume continues it."""
import json
import os
import sys

import numpy as np
import pytest

from minires.checkpoint import load_checkpoint, save_checkpoint
from minires.cli import main
from tests.data import image_members, write_tar
from tests.distributed import common

pytestmark = pytest.mark.mpi


@pytest.fixture
def tiny_archives(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    # 30 training images: global batch 16 -> 2 steps an epoch, shards 8/8 then 7/7
    write_tar(root / "train.tar.gz", image_members(rng, "train", per_class=3, fmt="PNG")[0])
    write_tar(root / "test.tar.gz", image_members(rng, "test", per_class=2, fmt="PNG")[0])
    return root


def _train(data, out, cache, *extra):
    return common.mpirun([sys.executable, "-m", "minires", "train", "--distributed", "--sync-bn",
                          "--model", "resnet20", "--data", str(data), "--batch-size", "16",
                          "--lr", "0.05", "--schedule", "constant", "--out", str(out), "--no-progress",
                          "--seed", "1",
                          "--dist-timeout", "60", *extra], timeout=120, MINIRES_CACHE=str(cache))


def test_mpiexec_train_distributed_end_to_end(tiny_archives, tmp_path, capsys):
    common.skip_without_mpi()
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = _train(tiny_archives, out, cache, "--epochs", "2")
    assert res.returncode == 0, res.stdout[-4000:]
    log = res.stdout
    # rank 0 alone logs: each line once
    assert log.count("distributed: 2 ranks over mpi, global batch 16 (per rank 8)") == 1, log
    assert log.count("epoch 1/2") == 1 and log.count("epoch 2/2") == 1, log
    assert log.count("done: resnet20, 2 epochs, 4 steps") == 1, log
    # rank 0 alone writes: one line per epoch (two writers would append two)
    assert sorted(os.listdir(out)) == ["best.ckpt", "config.json", "last.ckpt", "metrics.jsonl"]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (2, 4)]
    cfg = json.load(open(out / "config.json"))
    assert cfg["distributed"] and cfg["sync_bn"] and cfg["batch_size"] == 16
    state = load_checkpoint(str(out / "last.ckpt"))
    assert state["step"] == 4 and "bn1.running_mean" in state["model"]

    # the checkpoint loads in a single process; evaluating it agrees with the
    # run's own (sharded, summed) test metrics
    capsys.readouterr()
    os.environ["MINIRES_CACHE"] = str(cache)
    try:
        assert main(["eval", "--checkpoint", str(out / "last.ckpt"), "--data",
                     str(tiny_archives), "--json"]) == 0
    finally:
        del os.environ["MINIRES_CACHE"]
    res_eval = json.loads(capsys.readouterr().out)
    assert res_eval["n"] == 20
    assert res_eval["accuracy"] == rows[-1]["test_acc"]
    assert res_eval["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-5)

    # --resume: every rank continues from rank 0's checkpoint.  Stretch the saved
    # plan to 3 epochs (as if the run had been stopped after 2), resume, and
    # compare with a run that did 3 epochs in one go: the order and augmentation
    # come from (seed, epoch), so the two must agree exactly.
    full = tmp_path / "full"
    res = _train(tiny_archives, full, cache, "--epochs", "3")
    assert res.returncode == 0, res.stdout[-4000:]
    state["config"]["fitted"] = json.load(open(full / "config.json"))["fitted"]
    save_checkpoint(str(out / "last.ckpt"), state)
    # a changed --epochs is refused on resume unless overridden (and recorded)
    res = _train(tiny_archives, out, cache, "--epochs", "3", "--resume")
    assert res.returncode != 0 and "--epochs 3 (the run has 2)" in (res.stdout or "") + (res.stderr or "")
    res = _train(tiny_archives, out, cache, "--epochs", "3", "--resume", "--resume-override")
    assert res.returncode == 0, res.stdout[-4000:]
    assert res.stdout.count("resumed") == 1
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (2, 4), (3, 6)]
    resumed, uninterrupted = (load_checkpoint(str(d / "last.ckpt"))["model"] for d in (out, full))
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_mpiexec_init_from_and_tensorboard_on_rank_0(tiny_archives, tmp_path):
    """``--init-from`` and ``--tensorboard`` under mpiexec: the run starts from
    the file (read by rank 0, which says so once), and rank 0 alone writes an
    event file, holding the epoch's metrics.jsonl numbers."""
    common.skip_without_mpi()
    pytest.importorskip("safetensors")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    from minires.convert import save_safetensors
    from tests.trained_model_helpers import random_resnet20
    weights = str(tmp_path / "init.safetensors")
    save_safetensors(random_resnet20(seed=2), weights)
    out = tmp_path / "run"
    res = _train(tiny_archives, out, tmp_path / "cache", "--epochs", "1",
                 "--init-from", weights, "--tensorboard")
    assert res.returncode == 0, res.stdout[-4000:]
    assert res.stdout.count(f"initial weights from {weights}") == 1, res.stdout
    events = [f for f in os.listdir(out) if f.startswith("events.out.tfevents")]
    assert len(events) == 1, events  # one writer: rank 0
    row = json.loads(open(out / "metrics.jsonl").readline())
    acc = event_accumulator.EventAccumulator(str(out))
    acc.Reload()
    [test_acc] = acc.Scalars("epoch/test_acc")
    assert (test_acc.step, test_acc.value) == (row["step"], pytest.approx(row["test_acc"]))
    assert json.load(open(out / "config.json"))["init_from"] == weights
